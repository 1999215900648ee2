"""Settings of stage A, the structured description: one model's ``description_settings_*.json``
(docs/protocol/pipeline.md §1.1), with the paper's StructuredDescription module defaults.

>>> s = DescriptionSettings.model_validate({"vlm_structured_description": {"model_max_tokens": "10000"}})
>>> s.vlm_structured_description.model_max_tokens, s.vlm_structured_description.stream_completion
(10000, True)
>>> s.retry, s.max_attempts, s.png_max_pixels
(3, 4, 2073600)
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, Strict, StrictBool, StrictInt, StrictStr, model_validator

from .coercion import NonNegNumber, SettingsModel
from .request import CompletionParams, fill_blocks, request_block

DEFAULT_SYSTEM_PROMPT = (
    "You are a robot's visual perception system that identifies and analyzes objects in an image. "
    "Be concise and factual."
)

#: The benchmark files' dict prompt (docs/protocol/pipeline.md §1.1; the wording matters).
BENCHMARK_DICT_PROMPT = (
    "Provide a list in JSON format that contains each object (including furniture, persons, and animals) "
    "visible in the image above. Explicitly include each object instance as an individual list element, and "
    "never group multiple instances that are clearly distinct from one another. Each list element must be a "
    "dictionary with the fields object_name and description. The object_name of all humans must be person. "
    "The description must be a single short sentence (max. 10 words, starting with 'a' or 'an'), that "
    "differs from the other descriptions and summarizes the most important information about the type, "
    "color, and appearance of the object, allowing for a visual identification of the object without "
    "knowing any of the descriptions generated for the other objects."
)
#: The module default differs from the benchmark files by one missing space after "person." (§1.1).
MODULE_DICT_PROMPT = BENCHMARK_DICT_PROMPT.replace("must be person. The", "must be person.The")

DEFAULT_DIRECT_TASK_RELEVANCY_PROMPT = (
    " In addition, examine for each object whether it is relevant for accomplishing the following task: "
    "'{task}'For each list element, add a boolean field task_relevant accordingly. Do not consider objects "
    "that are similar or loosely related to a task-relevant object to be task-relevant. If you are unsure, "
    "it is most helpful to consider it not task-relevant."
)
DEFAULT_DECOUPLED_TASK_RELEVANCY_PROMPT = (
    "Examine for each listed object whether it is relevant for accomplishing the following task: '{task}'"
    "Respond with a list encoded as JSON featuring the 'object_name' value of all task-relevant objects "
    "from the dictionary you provided above."
)

_DEFAULT_INVALID_VALUES = ("", "none", "not applicable", "n/a")


class DictItem(SettingsModel):
    """One expected key of the described objects (``dict_items``; docs/protocol/pipeline.md §1.5)."""

    key: StrictStr
    #: ``box_2d`` (ours, not the paper's): a box ``[y_min, x_min, y_max, x_max]`` normalised to 0–1000, as
    #: nimbro-api's ``box_yxyx[int1000]``; stored as four floats (``protocol.grounding.parse_box_2d``).
    type: Literal["str", "bool", "int", "float", "box_2d"]
    #: For ``str`` items these are Levenshtein-matched; for the others tested by equality.
    valid: tuple[Any, ...] | None = None
    invalid: tuple[Any, ...] | None = None
    #: Another item's key that must survive for this one to be kept.
    requires: StrictStr | None = None
    required: StrictBool = False

    @model_validator(mode="after")
    def _str_lists(self) -> DictItem:
        # str items compare values by Levenshtein matching, which needs strings (docs/protocol/pipeline.md §1.5).
        if self.type == "str":
            for name in ("valid", "invalid"):
                values = getattr(self, name)
                if values is not None and not all(isinstance(v, str) for v in values):
                    raise ValueError(f"'{name}' of a 'str' item must hold strings, got {list(values)}")
        return self


class ValueNormalization(SettingsModel):
    """``dict_value_normalization`` flags for ``normalize_string`` (``reduce_whitespaces`` is always on).

    Defaults are the **module** defaults; the benchmark files set punctuation removal and lowercasing.
    """

    remove_underscores: StrictBool = True
    remove_punctuation: StrictBool = False
    remove_common_specials: StrictBool = True
    remove_whitespaces: StrictBool = False
    lowercase: StrictBool = False


_DEFAULT_DESCRIPTION_BLOCK = request_block()

Role = Literal["system", "user"]
ImageDetail = Literal["high", "low", "auto"]


class DescriptionSettings(SettingsModel):
    """Settings of stage A, one model's ``description_settings_*.json`` (docs/protocol/pipeline.md §1.1).

    Defaults are the paper's StructuredDescription module defaults.
    """

    vlm_scene_description: CompletionParams = Field(default_factory=CompletionParams)
    vlm_structured_description: CompletionParams = Field(default_factory=CompletionParams)
    vlm_decoupled_attribution: CompletionParams = Field(default_factory=CompletionParams)
    system_prompt_scene_description: StrictStr = DEFAULT_SYSTEM_PROMPT
    system_prompt_scene_description_role: Role = "system"
    system_prompt_structured_description: StrictStr = DEFAULT_SYSTEM_PROMPT
    system_prompt_structured_description_role: Role = "system"
    system_prompt_decoupled_attribution: StrictStr = DEFAULT_SYSTEM_PROMPT
    system_prompt_decoupled_attribution_role: Role = "system"
    image_resolution_scene_description: ImageDetail = "high"
    image_resolution_structured_description: ImageDetail = "high"
    image_resolution_decoupled_attribution: ImageDetail = "high"
    scene_prompt: StrictStr | None = None
    task: StrictStr | None = None
    dict_prompt: StrictStr | None = MODULE_DICT_PROMPT
    direct_task_relevancy_prompt: StrictStr = DEFAULT_DIRECT_TASK_RELEVANCY_PROMPT
    decoupled_task_relevancy_prompt: StrictStr = DEFAULT_DECOUPLED_TASK_RELEVANCY_PROMPT
    decoupled_task_relevancy: StrictBool = True
    #: Exists in the paper but is never read there (docs/protocol/pipeline.md §1.7); kept for round-trips.
    decoupled_task_relevancy_remove_image: StrictBool = True
    #: An int is an edit distance; a float in (0, 1) a fraction of the word length (``int(len·t) + 1``).
    levenshtein_threshold: NonNegNumber = 0
    levenshtein_normalization: StrictBool = True
    dict_items: tuple[DictItem, ...] = (
        DictItem(key="object_name", type="str", invalid=_DEFAULT_INVALID_VALUES, required=True),
        DictItem(key="description", type="str", invalid=_DEFAULT_INVALID_VALUES, required=True),
    )
    dict_direct_task_relevancy_item: DictItem = DictItem(key="task_relevant", type="bool", required=True)
    dict_value_normalization: ValueNormalization = Field(default_factory=ValueNormalization)
    use_json_mode: StrictBool = True
    #: Retries after the first attempt: 3 → at most 4 attempts; -1 → unlimited (capped by
    #: ``unlimited_retry_cap``).
    retry: StrictInt = Field(default=3, ge=-1)
    #: Wall-clock limit of the paper's whole ``get()`` call (None: off, as the FiftyOne node sets it).
    timeout: Annotated[float, Strict()] | None = Field(default=None, gt=0)
    png_compression_level: StrictInt = Field(default=2, ge=0, le=9)
    #: Images with more pixels (strictly) are down-scaled; None disables down-scaling.
    png_max_pixels: StrictInt | None = Field(default=1920 * 1080, gt=0)
    #: Ours, not the paper's: the attempt cap used when ``retry`` is -1. The paper then loops forever,
    #: which a paid, scheduled pipeline must not do; rows that hit the cap count as failed.
    unlimited_retry_cap: StrictInt = Field(default=20, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _fill_blocks(cls, data: Any) -> Any:
        blocks = ("vlm_scene_description", "vlm_structured_description", "vlm_decoupled_attribution")
        return fill_blocks(data, dict.fromkeys(blocks, _DEFAULT_DESCRIPTION_BLOCK))

    @model_validator(mode="after")
    def _check(self) -> DescriptionSettings:
        if self.scene_prompt is None and self.dict_prompt is None:
            raise ValueError("'scene_prompt' and 'dict_prompt' cannot both be null")
        keys = [item.key for item in self.dict_items]
        if len(set(keys)) != len(keys):
            raise ValueError(f"dict_items has duplicate keys {keys}")
        # The paper's code names objects by dict_items[0] and requires the first two items (object name
        # and description) to exist; renaming duplicates needs the first one on every object.
        if len(self.dict_items) < 2 or not (self.dict_items[0].required and self.dict_items[1].required):
            raise ValueError("dict_items must start with two required items (object name, then description)")
        if self.dict_items[0].type != "str" or self.dict_items[1].type != "str":
            raise ValueError("the first two dict_items (object name, description) must have type 'str'")
        # 'requires' is checked against the *validated* items of an object, so naming anything else
        # would silently delete the item from every object.
        known = set(keys) | {self.dict_direct_task_relevancy_item.key}
        for item in (*self.dict_items, self.dict_direct_task_relevancy_item):
            if item.requires is not None and (item.requires not in known or item.requires == item.key):
                raise ValueError(
                    f"dict item '{item.key}' requires '{item.requires}', which is not another dict item"
                )
        return self

    # ---- derived, for the pipeline

    @property
    def max_attempts(self) -> int:
        """Attempts per image: ``1 + retry`` (docs/protocol/pipeline.md gotcha 2), or ``unlimited_retry_cap`` when retry is -1."""
        return self.unlimited_retry_cap if self.retry == -1 else 1 + self.retry

    @property
    def name_key(self) -> str:
        """The key that names objects (``object_name``): the first dict item (docs/protocol/pipeline.md §1.5 step 4)."""
        return self.dict_items[0].key

    @property
    def description_key(self) -> str:
        return self.dict_items[1].key

    @property
    def direct_task_relevancy(self) -> bool:
        """True when the task-relevancy field is asked for in the structured-description prompt (§1.7)."""
        return self.task is not None and not self.decoupled_task_relevancy

    @property
    def decoupled_task_relevancy_active(self) -> bool:
        return self.task is not None and self.decoupled_task_relevancy

    def active_dict_items(self) -> tuple[DictItem, ...]:
        """``dict_items`` plus the task-relevancy item when direct task relevancy is active (§1.5 step 2)."""
        if self.direct_task_relevancy:
            return (*self.dict_items, self.dict_direct_task_relevancy_item)
        return self.dict_items
