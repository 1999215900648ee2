"""Typed settings for every stage, reading the paper's JSON settings files as they are.

The paper keeps its settings in flat JSON dicts (``settings/{description,detection,label_matching,
validation,baseline}/*.json``). Its request blocks (``vlm_structured_description``, ``llm``, ``vlm``, …) are
dicts of **string-valued** nimbro_api parameters (``"False"``, ``"1.0"``, ``"10000"``, ``"[]"``); these
models coerce those strings to typed values (and accept typed values too). Keys unknown to the paper are
rejected with a :class:`SettingsError` that names the file and the key path. A key the file leaves out
takes the paper's **module default** (spec/pipeline.md §1.1, §4.1, §5, §6; spec/evaluation.md §1.2),
exactly as the paper's ``complete_settings`` does; where a benchmark file differs from the module
default the file wins (e.g. ``dict_value_normalization``).

Entry points: :func:`load_settings` (kind detected from the keys present, not from the file name),
the typed helpers :func:`load_description_settings` & co., and :func:`load_model_settings` for a model
file of ``settings/models/`` (the paper's description or baseline format plus an optional ``"model"``
header).

>>> s = DescriptionSettings.model_validate({"vlm_structured_description": {"model_max_tokens": "10000"}})
>>> s.vlm_structured_description.model_max_tokens, s.vlm_structured_description.stream_completion
(10000, True)
>>> s.retry, s.png_max_pixels
(3, 2073600)
"""

from __future__ import annotations

import ast
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .endpoints import Endpoint, EndpointError, resolve_endpoint

__all__ = [
    "AUGMENTED_TARGETS",
    "BaselineSettings",
    "COCO_TARGETS",
    "CompletionParams",
    "DescriptionSettings",
    "DetectionSettings",
    "DictItem",
    "FlorencePrompt",
    "LabelMatchingSettings",
    "MAPPING_RULES",
    "ModelHeader",
    "ModelSettings",
    "SettingsError",
    "SettingsKind",
    "ValidationSettings",
    "ValueNormalization",
    "detect_kind",
    "load_baseline_settings",
    "load_description_settings",
    "load_detection_settings",
    "load_label_matching_settings",
    "load_model_settings",
    "load_settings",
    "load_validation_settings",
    "parse_settings",
]


# --------------------------------------------------------------------------------------------------
# Errors


class SettingsError(ValueError):
    """A settings file (or dict) that cannot be used.

    ``str(error)`` names the file and the key path, e.g.
    ``description_settings_x.json: unknown key 'vlm_structured_description.model_tempreature'``.
    """

    def __init__(self, file: str | Path | None, key: str | None, message: str):
        self.file = Path(file) if file is not None else None
        self.key = key
        self.message = message
        where = self.file.name if self.file is not None else "<settings>"
        super().__init__(f"{where}: {message}")


def _loc_to_key(loc: tuple[Any, ...]) -> str:
    """``('dict_items', 0, 'key')`` → ``'dict_items[0].key'``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _settings_error(
    exc: ValidationError, file: str | Path | None, prefix: tuple[Any, ...] = ()
) -> SettingsError:
    messages: list[str] = []
    first_key: str | None = None
    for error in exc.errors():
        key = _loc_to_key(prefix + tuple(error["loc"]))
        first_key = first_key or key or None
        if error["type"] == "extra_forbidden":
            messages.append(f"unknown key '{key}'")
            continue
        msg = str(error["msg"])
        for noise in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(noise)
        value = error.get("input")
        if "got" not in msg and isinstance(value, (str, int, float, bool)) and error["type"] != "missing":
            # pydantic says what it wanted, not what it found: "key 'retry': … valid integer, got 'three'"
            shown = repr(value)
            msg += f", got {shown if len(shown) <= 60 else shown[:57] + '...'}"
        messages.append(f"key '{key}': {msg}" if key else msg)
    return SettingsError(file, first_key, "; ".join(messages))


# --------------------------------------------------------------------------------------------------
# Coercion of the paper's string-valued parameters


def _paper_none(value: Any) -> Any:
    if isinstance(value, str) and value.strip() in ("None", "none", "null"):
        return None
    return value


def _paper_bool(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "true":
            return True
        if text == "false":
            return False
        raise ValueError(f"expected a boolean ('True' or 'False'), got {value!r}")
    return value


def _paper_number(kind: type) -> Any:
    def coerce(value: Any) -> Any:
        value = _paper_none(value)
        if isinstance(value, str):
            try:
                return kind(value.strip())
            except ValueError:
                expected = "an integer" if kind is int else "a number"
                raise ValueError(f"expected {expected}, got {value!r}") from None
        return value

    return coerce


def _paper_str_list(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise ValueError(
                    f"expected a list such as '[]' or '[\"json_decoder.py\"]', got {value!r}"
                ) from None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list, got {value!r}")
    return tuple(value)


PaperBool = Annotated[StrictBool, BeforeValidator(_paper_bool)]
PaperFloat = Annotated[float, Strict(), BeforeValidator(_paper_number(float))]
PaperInt = Annotated[StrictInt, BeforeValidator(_paper_number(int))]
PaperOptFloat = Annotated[Annotated[float, Strict()] | None, BeforeValidator(_paper_number(float))]
PaperOptInt = Annotated[StrictInt | None, BeforeValidator(_paper_number(int))]
PaperStrTuple = Annotated[tuple[StrictStr, ...], BeforeValidator(_paper_str_list)]


def _non_negative_number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    if value < 0:
        raise ValueError(f"must be >= 0, got {value!r}")
    return value


#: An int stays an int (an edit distance), a float stays a float (a fraction when in (0, 1)).
NonNegNumber = Annotated[int | float, PlainValidator(_non_negative_number)]

#: Completion parsers the paper's nimbro_api ships and we implement (spec/pipeline.md §1.4, §2.2).
KNOWN_COMPLETION_PARSERS: tuple[str, ...] = ("json_decoder.py", "reasoning_extractor.py")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------------
# The nimbro_api request block


class CompletionParams(_Frozen):
    """One nimbro_api completion-parameter block (``vlm_structured_description``, ``llm``, ``vlm``, …).

    Defaults are the StructuredDescription module defaults (spec/pipeline.md §1.1). A block given in a
    file is merged over the default block of its context (see ``_merge_block``), so a partial block
    keeps the context's defaults for the keys it leaves out.
    """

    probe_api_connection: PaperBool = False
    #: An endpoint name of spec/pipeline.md §2.1 or the endpoint-dict form (see ``protocol.endpoints``).
    api_endpoint: str | dict[str, Any] = "OpenRouter"
    model_name: StrictStr = "google/gemini-2.5-flash"
    model_temperature: PaperFloat = 1.0
    model_top_p: PaperFloat = 1.0
    #: None: no token-limit field is sent (the provider default applies).
    model_max_tokens: PaperOptInt = Field(default=5000, gt=0)
    model_presence_penalty: PaperFloat = 0.0
    model_frequency_penalty: PaperFloat = 0.0
    #: ``"none"`` (or ``""``) sends **no** reasoning field: the provider default, not "reasoning off"
    #: (spec §1.3).
    model_reasoning_effort: StrictStr = "none"
    completion_parsers: PaperStrTuple = ()
    stream_completion: PaperBool = True
    normalize_text_completion: PaperBool = False
    correction_attempts: PaperInt = Field(default=0, ge=0)
    timeout_chunk_first: PaperOptFloat = Field(default=10.0, gt=0)
    timeout_chunk_next: PaperOptFloat = Field(default=5.0, gt=0)
    timeout_completion: PaperOptFloat = Field(default=30.0, gt=0)

    @field_validator("api_endpoint", mode="before")
    @classmethod
    def _check_endpoint(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().startswith("{"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"endpoint dict is not valid JSON: {exc}") from None
        if not isinstance(value, (str, dict)):
            raise ValueError(f"expected an endpoint name or an endpoint dict, got {type(value).__name__}")
        try:
            resolve_endpoint(value)
        except EndpointError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("completion_parsers")
    @classmethod
    def _check_parsers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [p for p in value if p not in KNOWN_COMPLETION_PARSERS]
        if unknown:
            known = list(KNOWN_COMPLETION_PARSERS)
            raise ValueError(f"unknown completion parser(s) {unknown}; known: {known}")
        return value

    @property
    def endpoint(self) -> Endpoint:
        """The resolved endpoint (URLs, flavour, key variable name)."""
        return resolve_endpoint(self.api_endpoint)

    @property
    def api_flavor(self) -> str:
        return self.endpoint.api_flavor

    @property
    def reasoning_requested(self) -> bool:
        """True when a reasoning field is sent: effort ∉ {"", "none"} (spec/pipeline.md §1.3)."""
        return self.model_reasoning_effort not in ("", "none")

    def to_paper_dict(self) -> dict[str, str]:
        """The block in the paper's string-valued form (``"True"``, ``"1.0"``, ``"[]"``)."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "completion_parsers":
                out[name] = json.dumps(list(value))
            elif name == "api_endpoint" and isinstance(value, dict):
                out[name] = json.dumps(value)
            else:
                out[name] = str(value)
        return out


def _block(**overrides: Any) -> dict[str, Any]:
    return CompletionParams(**overrides).model_dump()


def _merge_block(data: Any, key: str, default: Mapping[str, Any]) -> None:
    """Fill a partial request block from ``default`` (ours: the paper would leave the missing
    parameters at whatever the nimbro_api node had; every shipped file gives complete blocks)."""
    if isinstance(data, dict) and isinstance(data.get(key), Mapping):
        data[key] = {**default, **data[key]}


#: Paper keys that only steer the paper's own file handling (paths, metadata files, usage polling).
#: The pipeline manages storage itself, so these are refused with a message instead of being ignored.
_IO_KEYS = frozenset(
    {
        "leave_images_in_place",
        "keep_image_name",
        "usage_skip",
        "usage_delay",
        "data_path",
        "image_folder",
        "crop_folder",
        "metadata_file",
        "metadata_write_relative_paths",
        "metadata_write_no_paths",
        "definitions_file",
    }
)


def _refuse_io_keys(data: Any) -> None:
    if isinstance(data, Mapping):
        found = sorted(set(data) & _IO_KEYS)
        if found:
            raise ValueError(
                f"key(s) {found} steer the paper's own file handling; the pipeline manages storage "
                "itself (data/ directory, Parquet assets, response cache): remove them"
            )


# --------------------------------------------------------------------------------------------------
# Stage A — structured description (spec/pipeline.md §1.1)

DEFAULT_SYSTEM_PROMPT = (
    "You are a robot's visual perception system that identifies and analyzes objects in an image. "
    "Be concise and factual."
)

#: The benchmark files' dict prompt (spec/pipeline.md §1.1; the wording matters).
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


class DictItem(_Frozen):
    """One expected key of the described objects (``dict_items``; spec/pipeline.md §1.5)."""

    key: StrictStr
    type: Literal["str", "bool", "int", "float"]
    #: For ``str`` items these are Levenshtein-matched; for the others tested by equality.
    valid: tuple[Any, ...] | None = None
    invalid: tuple[Any, ...] | None = None
    #: Another item's key that must survive for this one to be kept.
    requires: StrictStr | None = None
    required: StrictBool = False

    @model_validator(mode="after")
    def _str_lists(self) -> DictItem:
        # str items compare values by Levenshtein matching, which needs strings (spec §1.5).
        if self.type == "str":
            for name in ("valid", "invalid"):
                values = getattr(self, name)
                if values is not None and not all(isinstance(v, str) for v in values):
                    raise ValueError(f"'{name}' of a 'str' item must hold strings, got {list(values)}")
        return self


class ValueNormalization(_Frozen):
    """``dict_value_normalization`` flags for ``normalize_string`` (``reduce_whitespaces`` is always on).

    Defaults are the **module** defaults; the benchmark files set punctuation removal and lowercasing.
    """

    remove_underscores: StrictBool = True
    remove_punctuation: StrictBool = False
    remove_common_specials: StrictBool = True
    remove_whitespaces: StrictBool = False
    lowercase: StrictBool = False


_DEFAULT_DESCRIPTION_BLOCK = _block()

Role = Literal["system", "user"]
ImageDetail = Literal["high", "low", "auto"]


class DescriptionSettings(_Frozen):
    """Settings of stage A, one model's ``description_settings_*.json`` (spec/pipeline.md §1.1).

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
    #: Exists in the paper but is never read there (spec/pipeline.md §1.7); kept for round-trips.
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
        _refuse_io_keys(data)
        if isinstance(data, dict):
            data = dict(data)
            for key in ("vlm_scene_description", "vlm_structured_description", "vlm_decoupled_attribution"):
                _merge_block(data, key, _DEFAULT_DESCRIPTION_BLOCK)
        return data

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
        """Attempts per image: ``1 + retry`` (gotcha 2), or ``unlimited_retry_cap`` when retry is -1."""
        return self.unlimited_retry_cap if self.retry == -1 else 1 + self.retry

    @property
    def name_key(self) -> str:
        """The key that names objects (``object_name``): the first dict item (spec §1.5 step 4)."""
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


# --------------------------------------------------------------------------------------------------
# Stage B — detection (spec/pipeline.md §4.1)


class DetectionSettings(_Frozen):
    """Settings of stage B. Defaults are the paper's Detection **module** defaults; the benchmark file
    ``detection_settings_mmgd_large.json`` differs by ``over_detect = 1.0``, and the FiftyOne detect node
    forces a few values (see :meth:`as_run_by_fiftyone_node`)."""

    over_detect: Annotated[float, Strict()] | None = 0.0
    nms_iou_threshold: Annotated[float, Strict()] | None = Field(default=None, ge=0, le=1)
    conf_threshold: Annotated[float, Strict()] = 0.0
    detector_name: Literal["mmgroundingdino"] = "mmgroundingdino"
    detector_model_id: StrictInt = 0
    detector_flavor: StrictStr = "large"
    segmentation_name: Literal["sam2_realtime"] | None = "sam2_realtime"
    segmentation_model_id: StrictInt = 0
    segmentation_model_id_secondary: StrictInt | None = None
    segmentation_flavor: StrictStr = "large"
    segmentation_track: StrictBool = True
    segmentation_use_bbox: StrictBool = True
    crop_masks: StrictBool = True
    #: The paper retries vision calls forever; the pipeline bounds this itself.
    retry: StrictBool = True
    png_compression_level: StrictInt = Field(default=2, ge=0, le=9)
    png_max_pixels: StrictInt | None = Field(default=1920 * 1080, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _io(cls, data: Any) -> Any:
        _refuse_io_keys(data)
        return data

    def as_run_by_fiftyone_node(self) -> DetectionSettings:
        """The values ``fiftyone_detect`` forces over the file: no secondary SAM2, cropped masks, retry,
        and **no down-scaling** (``png_max_pixels = None``) — spec/pipeline.md §4.1."""
        return self.model_copy(
            update={
                "segmentation_model_id_secondary": None,
                "crop_masks": True,
                "retry": True,
                "png_max_pixels": None,
            }
        )


# --------------------------------------------------------------------------------------------------
# Stage D — label matching (spec/evaluation.md §1.2, §1.3)

# fmt: off
#: The 80 COCO class names (spec/evaluation.md §1.3), in the settings' order.
COCO_TARGETS: tuple[str, ...] = (
    "airplane", "apple", "backpack", "banana", "baseball bat", "baseball glove", "bear", "bed", "bench",
    "bicycle", "bird", "boat", "book", "bottle", "bowl", "broccoli", "bus", "cake", "car", "carrot",
    "cat", "cell phone", "chair", "clock", "couch", "cow", "cup", "dining table", "dog", "donut",
    "elephant", "fire hydrant", "fork", "frisbee", "giraffe", "hair drier", "handbag", "horse", "hot dog",
    "keyboard", "kite", "knife", "laptop", "microwave", "motorcycle", "mouse", "orange", "oven",
    "parking meter", "person", "pizza", "potted plant", "refrigerator", "remote", "sandwich", "scissors",
    "sheep", "sink", "skateboard", "skis", "snowboard", "spoon", "sports ball", "stop sign", "suitcase",
    "surfboard", "teddy bear", "tennis racket", "tie", "toaster", "toilet", "toothbrush", "traffic light",
    "train", "truck", "tv", "umbrella", "vase", "wine glass", "zebra",
)
#: The 277 "augmented" distractor targets (spec/evaluation.md §1.3), in the settings' order.
AUGMENTED_TARGETS: tuple[str, ...] = (
    "air conditioner", "ambulance", "american football", "artwork", "ashtray", "baby crib", "baby stroller",
    "backgammon set", "baking tray", "ball", "balloon", "barbecue grill", "barrel", "baseball", "basket",
    "basketball", "bathrobe", "bathtub", "bean bag", "blender", "blinds", "boot", "bracelet", "bread",
    "bridge", "broom", "bucket", "building", "bulletin board", "button", "cabinet", "cable", "camera",
    "can", "can opener", "candle", "candy", "cardboard box", "care product", "carpet", "chandelier",
    "chess board", "chicken", "chocolate", "chopping board", "clothes hanger", "clothes iron", "clothing",
    "cloud", "cocktail glass", "cocktail shaker", "coffee machine", "coffee table", "colander", "computer",
    "cooking pan", "cooking pot", "crane", "crosswalk", "curb", "curtains", "dartboard", "decanter",
    "decoration", "deer", "dirt", "dish rack", "dishwasher", "document", "door", "door mat", "doorbell",
    "drawer", "drone", "duck", "dustpan", "electronic device", "eye glasses", "fan", "faucet", "fence",
    "figurine", "fireplace", "fish", "fish tank", "flag", "flashlight", "floor", "food", "footstool",
    "fruit", "futon", "garage", "garlic press", "globe", "glove", "golf ball", "grass", "ground", "guitar",
    "hairbrush", "hamper", "handball", "handle", "hat", "hat stand", "headphones", "heater", "helmet",
    "hose", "ice cream", "ice cube tray", "incense holder", "insect", "iron", "ironing board", "jewelry",
    "kettle", "key", "kitchen scale", "knob", "ladder", "lake", "lamp", "lamp post", "lantern",
    "lawn mower", "lemon squeezer", "letter", "license plate", "light", "light bulb", "loudspeaker",
    "magazine", "magnifying glass", "mailbox", "meal", "mechanic tool", "medicine", "medicine cabinet",
    "microphone", "microscope", "mirror", "monitor", "mountain", "musical instrument", "napkin", "net",
    "nightstand", "notepad", "nut", "oar", "ocean", "office desk", "ottoman", "paintbrush", "painting",
    "pantry", "pencil holder", "pepper grinder", "photo", "photo album", "picture frame", "pig", "pillow",
    "placemat", "plastic wrap", "plate", "plunger", "pole", "police", "pond", "pool table", "poster",
    "power outlet", "price tag", "printer", "projector", "puzzle", "rabbit", "radiator", "rag", "rail",
    "rake", "ramp", "river", "road sign", "robot", "rolling pin", "ruler", "safe", "safety pin",
    "salt shaker", "sand", "scale", "scarf", "sewing machine", "shampoo", "shaving kit", "shelf", "shoe",
    "shoe rack", "shovel", "shower", "sidewalk", "sieve", "sign", "sky", "smoke detector", "soap",
    "soap dispenser", "socket", "spatula", "spice rack", "spider", "stapler", "stick", "sticker", "stone",
    "stool", "storage box", "strap", "street", "streetlight", "suit", "sun", "surface", "sweatband",
    "switch", "table tennis ball", "tape dispenser", "tarp", "taxi", "teapot", "teeth", "tennis ball",
    "tent", "thermometer", "thermos", "tissue box", "toilet brush", "toilet paper", "toolbox", "towel",
    "towel rack", "toy", "traffic cone", "trash bin", "tray", "tree", "tripod", "trophy", "tupperware",
    "turntable", "tv stand", "vacuum cleaner", "vegetable", "vent", "video game console", "volleyball",
    "wall", "wallet", "wardrobe", "washing machine", "water glass", "wave", "weapon", "wetsuit", "wheel",
    "whipped cream", "whisk", "whiteboard", "window", "wine rack", "workout machine", "writing", "yoga mat",
)
# fmt: on
#: The 11 mapping rules (augmented target → COCO target), in the settings' order.
MAPPING_RULES: dict[str, str] = {
    "monitor": "tv",
    "soap dispenser": "bottle",
    "ball": "sports ball",
    "handball": "sports ball",
    "basketball": "sports ball",
    "baseball": "sports ball",
    "volleyball": "sports ball",
    "tennis ball": "sports ball",
    "american football": "sports ball",
    "golf ball": "sports ball",
    "table tennis ball": "sports ball",
}

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

_DEFAULT_LLM_BLOCK = _block(
    api_endpoint="OpenAI",
    model_name="gpt-4o-2024-11-20",
    model_max_tokens=2000,
    timeout_chunk_first=10.0,
    timeout_chunk_next=5.0,
    timeout_completion=30.0,
)


class LabelMatchingSettings(_Frozen):
    """Settings of label matching (spec/evaluation.md §1.2). Defaults are the paper's module defaults
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
    #: targets) through the "item category" prompt (spec/evaluation.md §1.5). False keeps that swap
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
        _refuse_io_keys(data)
        if isinstance(data, dict):
            data = dict(data)
            _merge_block(data, "llm", _DEFAULT_LLM_BLOCK)
        return data

    @model_validator(mode="after")
    def _check_targets(self) -> LabelMatchingSettings:
        # spec/evaluation.md §1.3: these combinations are errors in the paper.
        if self.use_per_set_targets:
            if self.dataset_targets or self.augmented_targets:
                raise ValueError(
                    "use_per_set_targets is true, so dataset_targets and augmented_targets must be empty "
                    "(the targets come from each image's ground truth)"
                )
        elif not self.dataset_targets:
            raise ValueError("dataset_targets must not be empty unless use_per_set_targets is true")
        return self


# --------------------------------------------------------------------------------------------------
# Stage C — validation (spec/pipeline.md §5)

DEFAULT_DESCRIPTION_PROMPT = "Provide a JSON description of all object instances in the image above."
DEFAULT_VALIDATION_PROMPT = (
    "Is this cropped image taken from the full image above a tight bounding box around any one of the "
    "objects mentioned in the description? If yes, your answer must only contain the one corresponding "
    "object_name. Otherwise, respond with '{invalid}'."
)

_DEFAULT_VLM_BLOCK = _block(
    model_max_tokens=50,
    normalize_text_completion=True,
    timeout_chunk_first=15.0,
    timeout_chunk_next=10.0,
    timeout_completion=30.0,
)


class ValidationSettings(_Frozen):
    """Settings of the optional validation stage (spec/pipeline.md §5). Defaults are the paper's
    Validation module defaults (the benchmark file differs only in its timeouts, 20/20/30 s)."""

    vlm: CompletionParams = Field(default_factory=lambda: CompletionParams(**_DEFAULT_VLM_BLOCK))
    image_resolution_full: ImageDetail = "high"
    image_resolution_crop: ImageDetail = "high"
    bbox_scale: Annotated[float, Strict()] = Field(default=1.0, gt=0)
    background_saturation: Annotated[float, Strict()] = Field(default=1.0, ge=0)
    background_brightness: Annotated[float, Strict()] = Field(default=1.0, ge=0)
    #: Exists in the paper but is unused (spec/pipeline.md §5.3).
    prepend_image: StrictBool = True
    system_prompt: StrictStr = DEFAULT_SYSTEM_PROMPT
    description_prompt: StrictStr = DEFAULT_DESCRIPTION_PROMPT
    validation_prompt: StrictStr = DEFAULT_VALIDATION_PROMPT
    #: Exists in the paper but is unused (spec/pipeline.md §5.3).
    image_res: ImageDetail = "high"
    invalid: StrictStr = "n/a"
    indent: StrictInt | None = 4
    levenshtein_threshold: NonNegNumber = 2
    #: The paper re-queues a failed validation completion without limit.
    retry: StrictBool = True
    timeout: Annotated[float, Strict()] | None = Field(default=None, gt=0)
    png_compression_level: StrictInt = Field(default=2, ge=0, le=9)
    png_max_pixels: StrictInt | None = Field(default=1920 * 1080, gt=0)
    crop_masks: StrictBool = True

    @model_validator(mode="before")
    @classmethod
    def _fill_vlm(cls, data: Any) -> Any:
        _refuse_io_keys(data)
        if isinstance(data, dict):
            data = dict(data)
            _merge_block(data, "vlm", _DEFAULT_VLM_BLOCK)
        return data


# --------------------------------------------------------------------------------------------------
# Baselines (spec/pipeline.md §6)


class FlorencePrompt(_Frozen):
    """Florence-2 prompt: a task token such as ``<OD>`` or ``<DENSE_REGION_CAPTION>``."""

    task_prompt: StrictStr
    prompt_args: Any = None


class BaselineSettings(_Frozen):
    """Settings of a baseline model that replaces stages A and B (spec/pipeline.md §6). Defaults are
    the paper's Baseline module defaults (Florence-2 large, dense region captions)."""

    model_name: Literal["florence2", "kosmos2"] = "florence2"
    model_id: StrictInt = 0
    model_flavor: StrictStr = "large"
    #: Florence-2: ``{"task_prompt": ..., "prompt_args": ...}``; Kosmos-2: a text prompt.
    model_prompt: FlorencePrompt | StrictStr = FlorencePrompt(task_prompt="<DENSE_REGION_CAPTION>")
    model_num_beams: StrictInt = Field(default=3, ge=1)
    model_max_new_tokens: StrictInt = Field(default=1024, ge=1)
    model_max_batch_size: StrictInt = Field(default=6, ge=1)
    segmentation_name: Literal["sam2_realtime"] | None = "sam2_realtime"
    segmentation_model_id: StrictInt = 0
    segmentation_model_id_secondary: StrictInt | None = None
    segmentation_flavor: StrictStr = "large"
    segmentation_track: StrictBool = True
    segmentation_use_bbox: StrictBool = True
    retry: StrictBool = True
    png_compression_level: StrictInt = Field(default=2, ge=0, le=9)
    png_max_pixels: StrictInt | None = Field(default=1920 * 1080, gt=0)
    crop_masks: StrictBool = True

    @field_validator("model_prompt", mode="before")
    @classmethod
    def _prompt_value(cls, value: Any) -> Any:
        # Validate the dict form here so errors name 'model_prompt.<key>' instead of union branches.
        if isinstance(value, Mapping):
            try:
                return FlorencePrompt.model_validate(dict(value))
            except ValidationError as exc:
                inner = _settings_error(exc, None)
                raise ValueError(inner.message) from None
        if not isinstance(value, (str, FlorencePrompt)):
            expected = "a text prompt or {'task_prompt': ..., 'prompt_args': ...}"
            raise ValueError(f"expected {expected}, got {value!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _prompt_shape(cls, data: Any) -> Any:
        _refuse_io_keys(data)
        if isinstance(data, dict):
            name = data.get("model_name", "florence2")
            prompt = data.get("model_prompt")
            if name == "florence2" and prompt is not None and not isinstance(prompt, Mapping):
                raise ValueError("florence2 takes model_prompt {'task_prompt': ..., 'prompt_args': ...}")
            if name == "kosmos2" and "model_prompt" not in data:
                raise ValueError(
                    "kosmos2 needs a text model_prompt (e.g. '<grounding> Describe this image in detail:')"
                )
            if name == "kosmos2" and not isinstance(prompt, str):
                raise ValueError("kosmos2 takes a text model_prompt")
        return data


# --------------------------------------------------------------------------------------------------
# Kind detection and loading

SettingsKind = Literal["description", "detection", "label_matching", "validation", "baseline"]

#: Keys that only one kind of settings file has; a file's kind is the one whose markers it holds.
_KIND_MARKERS: dict[str, frozenset[str]] = {
    "description": frozenset(
        {
            "vlm_structured_description", "vlm_scene_description", "vlm_decoupled_attribution", "dict_prompt",
            "dict_items", "scene_prompt", "dict_value_normalization", "use_json_mode",
            "system_prompt_structured_description", "dict_direct_task_relevancy_item",
        }
    ),
    "detection": frozenset({"over_detect", "nms_iou_threshold", "conf_threshold", "detector_name",
                            "detector_model_id", "detector_flavor"}),
    "label_matching": frozenset({"llm", "dataset_targets", "augmented_targets", "use_per_set_targets",
                                 "mapping_rules", "definition_prompt_item", "definition_prompt_label",
                                 "define_labels", "define_targets", "allow_duplicate_labels"}),
    "validation": frozenset({"vlm", "validation_prompt", "description_prompt", "bbox_scale",
                             "background_saturation", "background_brightness", "image_resolution_crop",
                             "image_resolution_full"}),
    "baseline": frozenset({"model_prompt", "model_num_beams", "model_max_new_tokens", "model_max_batch_size",
                           "model_flavor", "model_name", "model_id"}),
}
_KIND_MODELS: dict[str, type[BaseModel]] = {
    "description": DescriptionSettings,
    "detection": DetectionSettings,
    "label_matching": LabelMatchingSettings,
    "validation": ValidationSettings,
    "baseline": BaselineSettings,
}


def detect_kind(data: Mapping[str, Any], file: str | Path | None = None) -> SettingsKind:
    """The kind of a settings dict, from the keys it holds (not from the file name)."""
    scores = {kind: len(markers & set(data)) for kind, markers in _KIND_MARKERS.items()}
    best = max(scores.values())
    winners = [kind for kind, score in scores.items() if score == best]
    if best == 0:
        raise SettingsError(
            file,
            None,
            f"cannot tell the kind of settings: none of its keys {sorted(data)[:8]} identifies one of "
            f"{list(_KIND_MARKERS)}",
        )
    if len(winners) > 1:
        raise SettingsError(file, None, f"ambiguous settings: its keys fit {winners} equally well")
    return winners[0]  # type: ignore[return-value]


def _read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SettingsError(path, None, "file not found") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(path, None, f"not valid JSON: {exc}") from None


def _validate(
    model: type[BaseModel], data: Any, file: str | Path | None, prefix: tuple[Any, ...] = ()
) -> Any:
    if not isinstance(data, Mapping):
        raise SettingsError(file, None, f"expected a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise _settings_error(exc, file, prefix) from None


def parse_settings(
    data: Mapping[str, Any], kind: SettingsKind | None = None, *, file: str | Path | None = None
) -> BaseModel:
    """Typed settings from an already-parsed dict (``kind`` detected when None)."""
    if kind is None:
        kind = detect_kind(data, file)
    if kind not in _KIND_MODELS:
        raise SettingsError(file, None, f"unknown settings kind {kind!r}")
    return _validate(_KIND_MODELS[kind], data, file)


def load_settings(
    path: str | Path,
) -> (
    DescriptionSettings | DetectionSettings | LabelMatchingSettings | ValidationSettings | BaselineSettings
    | ModelSettings
):
    """The typed settings of any of the paper's settings files; the kind comes from the content. A file
    with our ``"model"`` header is returned as :class:`ModelSettings`."""
    data = _read_json(path)
    if isinstance(data, Mapping) and "model" in data:
        return load_model_settings(path)
    if not isinstance(data, Mapping):
        raise SettingsError(path, None, f"expected a JSON object, got {type(data).__name__}")
    return parse_settings(data, file=path)  # type: ignore[return-value]


def _load_kind(path: str | Path, kind: SettingsKind) -> Any:
    data = _read_json(path)
    if not isinstance(data, Mapping):
        raise SettingsError(path, None, f"expected a JSON object, got {type(data).__name__}")
    found = detect_kind(data, path)
    if found != kind:
        message = f"expected {kind} settings, but the keys are those of {found} settings"
        raise SettingsError(path, None, message)
    return parse_settings(data, kind, file=path)


def load_description_settings(path: str | Path) -> DescriptionSettings:
    return _load_kind(path, "description")


def load_detection_settings(path: str | Path) -> DetectionSettings:
    return _load_kind(path, "detection")


def load_label_matching_settings(path: str | Path) -> LabelMatchingSettings:
    return _load_kind(path, "label_matching")


def load_validation_settings(path: str | Path) -> ValidationSettings:
    return _load_kind(path, "validation")


def load_baseline_settings(path: str | Path) -> BaselineSettings:
    return _load_kind(path, "baseline")


# --------------------------------------------------------------------------------------------------
# Model files (settings/models/*.json): our optional header + the paper's description/baseline format

_STEM_PREFIXES = ("description_settings_", "baseline_settings_")


class ModelHeader(_Frozen):
    """Our optional ``"model"`` header of a model settings file."""

    #: ``vlm`` (a description-settings body) or ``baseline``; inferred from the body when omitted.
    kind: Literal["vlm", "baseline"] | None = None
    #: The name shown in tables; derived from the file stem when omitted.
    display_name: StrictStr | None = None
    #: True for models answered by the simulator (their rows are labelled as simulated).
    simulated: StrictBool = False
    #: Run the optional validation stage (spec §5) for this model; off by default, as in the paper.
    #: ``true`` uses ``settings/validation/validation.json``; a string names another validation settings
    #: file, relative to the model file's folder (e.g. ``validation/validation_settings_gpt_5_mini_none.json``
    #: in ``settings/paper/``, the paper's second validation VLM).
    validation: StrictBool | StrictStr = False
    #: Quality and fault controls of a simulated model (``vlm_gist_dagster.sim.ModelControls`` fields);
    #: validated by the simulator, ignored otherwise.
    simulator: dict[str, Any] | None = None


class ModelSettings(_Frozen):
    """One benchmarked model: its name (the file stem), header and stage settings.

    The paper's ``description_settings_*.json`` and ``baseline_settings_*.json`` files load as they
    are (no header): the kind comes from the keys, the display name from the stem without the
    ``description_settings_`` / ``baseline_settings_`` prefix.
    """

    name: StrictStr
    kind: Literal["vlm", "baseline"]
    display_name: StrictStr
    simulated: StrictBool = False
    validation: StrictBool | StrictStr = False
    settings: DescriptionSettings | BaselineSettings

    @property
    def description(self) -> DescriptionSettings:
        if not isinstance(self.settings, DescriptionSettings):
            raise TypeError(f"model {self.name!r} is a baseline, it has no description settings")
        return self.settings

    @property
    def baseline(self) -> BaselineSettings:
        if not isinstance(self.settings, BaselineSettings):
            raise TypeError(f"model {self.name!r} is a VLM, it has no baseline settings")
        return self.settings


def display_name_from_stem(stem: str) -> str:
    """``description_settings_gpt_5_high`` → ``gpt_5_high``."""
    for prefix in _STEM_PREFIXES:
        if stem.startswith(prefix) and len(stem) > len(prefix):
            return stem[len(prefix):]
    return stem


def parse_model_settings(
    data: Mapping[str, Any], name: str, *, file: str | Path | None = None
) -> ModelSettings:
    """A :class:`ModelSettings` from a parsed model-file dict; ``name`` is the model's key (file stem)."""
    if not isinstance(data, Mapping):
        raise SettingsError(file, None, f"expected a JSON object, got {type(data).__name__}")
    body = dict(data)
    header = _validate(ModelHeader, body.pop("model", None) or {}, file, prefix=("model",))
    found = detect_kind(body, file)
    kind = {"description": "vlm", "baseline": "baseline"}.get(found)
    if kind is None:
        message = f"a model file holds description or baseline settings, these are {found} settings"
        raise SettingsError(file, None, message)
    if header.kind is not None and header.kind != kind:
        message = f"key 'model.kind' says {header.kind!r} but the settings are those of a {kind}"
        raise SettingsError(file, "model.kind", message)
    settings = _validate(DescriptionSettings if kind == "vlm" else BaselineSettings, body, file)
    return ModelSettings(
        name=name,
        kind=kind,
        display_name=header.display_name or display_name_from_stem(name),
        simulated=header.simulated,
        validation=header.validation,
        settings=settings,
    )


def load_model_settings(path: str | Path) -> ModelSettings:
    """A model file of ``settings/models/`` (or one of the paper's description/baseline files)."""
    path = Path(path)
    return parse_model_settings(_read_json(path), path.stem, file=path)
