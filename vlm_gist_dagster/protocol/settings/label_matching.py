"""Settings of stage D, label matching (docs/protocol/evaluation.md §1.2, §1.3). The paper's target lists and
mapping rules are data: ``targets.json`` next to this module.

>>> len(COCO_TARGETS), len(AUGMENTED_TARGETS), MAPPING_RULES["monitor"]
(80, 277, 'tv')
>>> LabelMatchingSettings().llm.model_name
'gpt-4o-2024-11-20'
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Literal

from pydantic import Field, StrictBool, StrictInt, StrictStr, model_validator

from .coercion import NonNegNumber, SettingsModel
from .request import CompletionParams, fill_blocks, request_block

_TARGETS = json.loads(resources.files(__package__).joinpath("targets.json").read_text(encoding="utf-8"))
#: The 80 COCO class names (docs/protocol/evaluation.md §1.3), in the settings' order.
COCO_TARGETS: tuple[str, ...] = tuple(_TARGETS["coco_targets"])
#: The 277 "augmented" distractor targets (docs/protocol/evaluation.md §1.3), in the settings' order.
AUGMENTED_TARGETS: tuple[str, ...] = tuple(_TARGETS["augmented_targets"])
#: The 11 mapping rules (augmented target → COCO target), in the settings' order.
MAPPING_RULES: dict[str, str] = dict(_TARGETS["mapping_rules"])

DEFAULT_DEFINITION_PROMPT_SYSTEM = (
    "You are a helpful assistant. Follow all the instructions you are given as carefully as you can."
)
DEFAULT_DEFINITION_PROMPT_ITEM = (
    "Please define and describe the characteristic properties of the item category of the item described "
    "below in 5 sentences:\n{item}\n\nYour description must not refer to the given task or include the words "
    "'item', 'category' and 'context'."
)
DEFAULT_DEFINITION_PROMPT_LABEL = (
    "Please define and describe the characteristic properties of the following term in 5 sentences: {label}"
)

_DEFAULT_LLM_BLOCK = request_block(
    api_endpoint="OpenAI",
    model_name="gpt-4o-2024-11-20",
    model_max_tokens=2000,
    timeout_chunk_first=10.0,
    timeout_chunk_next=5.0,
    timeout_completion=30.0,
)


class LabelMatchingSettings(SettingsModel):
    """Settings of label matching (docs/protocol/evaluation.md §1.2). Defaults are the paper's module defaults
    (its target lists and mapping rules equal the COCO file's)."""

    definitions_write: StrictBool = True
    define_labels: StrictBool = True
    define_targets: StrictBool = True
    definition_item_indent: StrictInt | None = 4
    definition_item_key_name: StrictStr = "object_name"
    definition_item_key_description: StrictStr = "description"
    definition_prompt_system: StrictStr = DEFAULT_DEFINITION_PROMPT_SYSTEM
    definition_prompt_item: StrictStr = DEFAULT_DEFINITION_PROMPT_ITEM
    definition_prompt_label: StrictStr = DEFAULT_DEFINITION_PROMPT_LABEL
    llm: CompletionParams = Field(default_factory=lambda: CompletionParams(**_DEFAULT_LLM_BLOCK))
    levenshtein_threshold: NonNegNumber = 0
    allow_duplicate_labels: StrictBool = True
    use_per_set_targets: StrictBool = False
    dataset_targets: tuple[StrictStr, ...] = COCO_TARGETS
    augmented_targets: tuple[StrictStr, ...] = AUGMENTED_TARGETS
    mapping_rules: dict[StrictStr, StrictStr] = Field(default_factory=lambda: dict(MAPPING_RULES))
    #: Ours, opt-in. The paper's code sends JSON items through the "term" prompt and plain texts (all
    #: targets) through the "item category" prompt (docs/protocol/evaluation.md §1.5). False keeps that swap
    #: (paper behaviour); True uses the intended prompt for each.
    fix_definition_prompt_swap: StrictBool = False
    #: Ours. Where a service's definitions start. The paper's label matching starts from its published
    #: cache (``definitions_file``: 357 COCO target definitions written by gpt-4o-2024-11-20 via OpenAI).
    #: ``paper``: the service that wrote them (OpenAI's API) starts from them, any other (the simulator,
    #: a local server) from nothing; ``paper_any_service``: every service starts from them;
    #: ``none``: no service does, the LLM defines every text.
    initial_definitions: Literal["paper", "paper_any_service", "none"] = "paper"

    @model_validator(mode="before")
    @classmethod
    def _fill_llm(cls, data: Any) -> Any:
        return fill_blocks(data, {"llm": _DEFAULT_LLM_BLOCK})

    @model_validator(mode="after")
    def _check_targets(self) -> LabelMatchingSettings:
        # docs/protocol/evaluation.md §1.3: these combinations are errors in the paper ("Both settings lists
        # must be empty, otherwise it is an error"). The message starts with the field it is about.
        if self.use_per_set_targets:
            if self.dataset_targets or self.augmented_targets:
                raise ValueError(
                    "dataset_targets/augmented_targets: must be empty when use_per_set_targets is true (the "
                    "targets come from each image's ground truth; got "
                    f"{len(self.dataset_targets)} and {len(self.augmented_targets)} entries)"
                )
        elif not self.dataset_targets:
            raise ValueError(
                "dataset_targets: must not be empty when use_per_set_targets is false "
                "(docs/protocol/evaluation.md §1.3)"
            )
        return self
