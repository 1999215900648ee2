"""A model file of ``settings/models/``: one benchmarked model, in one module with every rule about it.

A model file is the paper's description-settings (a VLM) or baseline-settings format, plus our optional
``"model"`` header (:class:`ModelHeader`: display name, simulated, validation on, simulator controls).
The paper's ``description_settings_*.json`` / ``baseline_settings_*.json`` files load as they are.

The file name gives the model's **partition key** (:func:`model_key_for`): the lower-cased stem without
the paper's prefix, so the paper's 47 files can be dropped in as they are. Keys become path segments and
partition keys, so only lower-case slugs are valid (:func:`validate_model_key`). The display name, when
the header gives none, is the stem without the prefix, case kept (:func:`display_name_from_stem`).

>>> model_key_for(Path("description_settings_qwen_3_vl_235b_A22b_none.json"))
'qwen_3_vl_235b_a22b_none'
>>> model_key_for(Path("sim_strong.json")), display_name_from_stem("description_settings_gpt_5_high")
('sim_strong', 'gpt_5_high')
>>> validate_model_key("gpt 5")
Traceback (most recent call last):
...
vlm_gist_dagster.protocol.settings.model_file.InvalidModelKey: invalid model key 'gpt 5': use lower-case letters, digits, '_', '.' and '-' only (not just dots)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import StrictBool, StrictStr

from .baseline import BaselineSettings
from .coercion import SettingsModel
from .description import DescriptionSettings
from .errors import SettingsError, read_settings_json, validate_settings
from .grounding import GroundingSettings, grounding_label
from .kinds import detect_kind

__all__ = [
    "MODEL_KEY_PATTERN",
    "PAPER_PREFIXES",
    "InvalidModelKey",
    "ModelHeader",
    "ModelSettings",
    "display_name_from_stem",
    "load_model_settings",
    "model_key_for",
    "parse_model_settings",
    "validate_model_key",
]

#: Prefixes of the paper's settings file names, dropped from model keys and display names.
PAPER_PREFIXES = ("description_settings_", "baseline_settings_")

#: Model keys become path segments and partition keys: lower-case slugs only ("|", "," and "/" break
#: Dagster's multi-partition keys, UI backfills and file paths).
MODEL_KEY_PATTERN = re.compile(r"^[a-z0-9_.-]+$")


class InvalidModelKey(ValueError):
    """A model key (or the file name it comes from) that cannot be a partition key."""


def validate_model_key(key: str) -> str:
    """Return ``key`` if it is a valid model partition key, else raise :class:`InvalidModelKey`."""
    if not isinstance(key, str) or not MODEL_KEY_PATTERN.fullmatch(key) or set(key) == {"."}:
        raise InvalidModelKey(
            f"invalid model key {key!r}: use lower-case letters, digits, '_', '.' and '-' only (not just dots)"
        )
    return key


def _strip_paper_prefix(stem: str) -> str:
    for prefix in PAPER_PREFIXES:
        if stem.startswith(prefix) and len(stem) > len(prefix):
            return stem[len(prefix) :]
    return stem


def display_name_from_stem(stem: str) -> str:
    """``description_settings_gpt_5_high`` → ``gpt_5_high`` (case kept)."""
    return _strip_paper_prefix(stem)


def model_key_for(path: Path) -> str:
    """The partition key of a model file: its stem lower-cased, without the paper's prefix.

    Raises :class:`InvalidModelKey` naming the file when the result is not a valid key."""
    try:
        return validate_model_key(_strip_paper_prefix(Path(path).stem.lower()))
    except InvalidModelKey as exc:
        raise InvalidModelKey(f"{path}: {exc}; rename the file") from None


class ModelHeader(SettingsModel):
    """Our optional ``"model"`` header of a model settings file."""

    #: ``vlm`` (a description-settings body) or ``baseline``; inferred from the body when omitted.
    kind: Literal["vlm", "baseline"] | None = None
    #: The name shown in tables; derived from the file stem when omitted.
    display_name: StrictStr | None = None
    #: True for models answered by the simulator (their rows are labelled as simulated).
    simulated: StrictBool = False
    #: Run the optional validation stage (docs/protocol/pipeline.md §5) for this model; off by default, as in the paper.
    #: ``true`` uses ``settings/validation/validation.json``; a string names another validation settings
    #: file, relative to the model file's folder (e.g. ``validation/validation_settings_gpt_5_mini_none.json``
    #: in ``settings/paper/``, the paper's second validation VLM).
    validation: StrictBool | StrictStr = False
    #: Quality and fault controls of a simulated model (``vlm_gist_dagster.sim.ModelControls`` fields);
    #: validated by the simulator, ignored otherwise.
    simulator: dict[str, Any] | None = None
    #: How stage B grounds the described objects (VLMs only; :mod:`.grounding`): ``"mmgd_sam2"`` (the
    #: paper's, the default), ``"sam3"``, ``"vlm_boxes"``, ``"vlm_boxes_sam2"``, or an object with
    #: ``mode`` and that mode's options.
    grounding: GroundingSettings | None = None


class ModelSettings(SettingsModel):
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
    #: Stage B's grounding mode (a baseline's is the default, unused: its model does stages A and B).
    grounding: GroundingSettings = GroundingSettings()

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


def parse_model_settings(
    data: Mapping[str, Any], name: str, *, file: str | Path | None = None
) -> ModelSettings:
    """A :class:`ModelSettings` from a parsed model-file dict; ``name`` is the model's key (file stem)."""
    if not isinstance(data, Mapping):
        raise SettingsError(file, None, f"expected a JSON object, got {type(data).__name__}")
    body = dict(data)
    header = validate_settings(ModelHeader, body.pop("model", None) or {}, file, prefix=("model",))
    found = detect_kind(body, file)
    kind = {"description": "vlm", "baseline": "baseline"}.get(found)
    if kind is None:
        message = f"a model file holds description or baseline settings, these are {found} settings"
        raise SettingsError(file, None, message)
    if header.kind is not None and header.kind != kind:
        message = f"key 'model.kind' says {header.kind!r} but the settings are those of a {kind}"
        raise SettingsError(file, "model.kind", message)
    settings = validate_settings(DescriptionSettings if kind == "vlm" else BaselineSettings, body, file)
    grounding = header.grounding or GroundingSettings()
    if header.grounding is not None and kind == "baseline":
        message = "a baseline grounds its own boxes; 'model.grounding' is for VLM model files"
        raise SettingsError(file, "model.grounding", message)
    if grounding.uses_vlm_boxes:
        _check_box_item(settings, grounding, file)  # type: ignore[arg-type]
    display_name = header.display_name or display_name_from_stem(name)
    if grounding.mode != "mmgd_sam2" and grounding_label(grounding.mode) not in display_name:
        # "Gemini + SAM 3" and "Gemini" (the paper's MM-GDINO + SAM2) are two rows of one leaderboard.
        display_name = f"{display_name} + {grounding_label(grounding.mode)}"
    return ModelSettings(
        name=name,
        kind=kind,
        display_name=display_name,
        simulated=header.simulated,
        validation=header.validation,
        settings=settings,
        grounding=grounding,
    )


def _check_box_item(
    settings: DescriptionSettings, grounding: GroundingSettings, file: str | Path | None
) -> None:
    """A VLM-boxes mode needs the VLM to return a box: a required ``box_2d`` item in ``dict_items``."""
    item = next((i for i in settings.dict_items if i.key == grounding.box_key), None)
    if item is None or item.type != "box_2d" or not item.required:
        message = (
            f"grounding mode {grounding.mode!r} reads each object's box from key {grounding.box_key!r}: add "
            f'{{"key": "{grounding.box_key}", "type": "box_2d", "required": true}} to dict_items and ask '
            "for it in dict_prompt"
        )
        raise SettingsError(file, "dict_items", message)


def load_model_settings(path: str | Path) -> ModelSettings:
    """A model file of ``settings/models/`` (or one of the paper's description/baseline files)."""
    path = Path(path)
    return parse_model_settings(read_settings_json(path), path.stem, file=path)
