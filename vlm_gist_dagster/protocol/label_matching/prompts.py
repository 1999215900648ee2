"""The definition prompts of label matching and the paper's swapped prompt selection (docs/protocol/evaluation.md
§1.5, gotcha §9.6, uncertainty §11).

The reference defines two user prompts: an "item category" prompt meant for JSON items
(``{"object_name": …, "description": …}``) and a "term" prompt meant for plain labels and targets. Its
code selects them the other way round: JSON items (``is_item=True``) go through the *term* prompt and
plain texts — labels without description and every target — through the *item category* prompt. We keep
that swap by default, because it is what the published code does, and record it in every
:class:`DefinitionPrompt`. ``fix_swap=True`` (the ``fix_definition_prompt_swap`` setting) selects the
intended prompt instead. Note that the published cache of target definitions reads like term-prompt
output, i.e. like the *fixed* selection; which one produced the (unpublished) label definitions is not
known.

>>> p = definition_prompt("sports ball", is_item=False)
>>> p.template, p.paper_swap
('definition_prompt_item', True)
>>> definition_prompt("sports ball", is_item=False, fix_swap=True).text
'Please define and describe the characteristic properties of the following term in 5 sentences: sports ball'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlm_gist_dagster.protocol.settings.label_matching import (
    DEFAULT_DEFINITION_PROMPT_ITEM,
    DEFAULT_DEFINITION_PROMPT_LABEL,
    DEFAULT_DEFINITION_PROMPT_SYSTEM,
)

#: The paper's three definition prompts (their defaults live with the settings): the system prompt sent
#: before every definition request (fresh context), the "item category" prompt (``{item}`` is replaced
#: by the text to define) and the "term" prompt (``{label}``).
DEFINITION_PROMPT_SYSTEM = DEFAULT_DEFINITION_PROMPT_SYSTEM
DEFINITION_PROMPT_ITEM = DEFAULT_DEFINITION_PROMPT_ITEM
DEFINITION_PROMPT_LABEL = DEFAULT_DEFINITION_PROMPT_LABEL

PromptTemplateName = Literal["definition_prompt_item", "definition_prompt_label"]


@dataclass(frozen=True, slots=True)
class DefinitionPrompt:
    """A filled-in definition prompt and which template produced it.

    ``template`` names the settings key of the template used. ``paper_swap`` is True when the selection
    followed the published (swapped) code, False when ``fix_swap`` chose the intended template.
    """

    text: str
    template: PromptTemplateName
    paper_swap: bool


def definition_prompt(
    text: str,
    is_item: bool,
    fix_swap: bool = False,
    *,
    prompt_item: str = DEFINITION_PROMPT_ITEM,
    prompt_label: str = DEFINITION_PROMPT_LABEL,
) -> DefinitionPrompt:
    """The user prompt that asks for the definition of ``text``.

    Paper (default): ``is_item`` → ``prompt_label.format(label=text)``, otherwise
    ``prompt_item.format(item=text)``. With ``fix_swap`` the other way round. Only the template's own
    braces are interpreted by ``str.format``, so the braces of a JSON item are safe.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    use_label_template = is_item != fix_swap
    if use_label_template:
        return DefinitionPrompt(prompt_label.format(label=text), "definition_prompt_label", not fix_swap)
    return DefinitionPrompt(prompt_item.format(item=text), "definition_prompt_item", not fix_swap)
