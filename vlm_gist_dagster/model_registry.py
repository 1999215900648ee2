"""The benchmark's models: one settings file per model in ``settings/models/`` (``$VLM_GIST_MODELS_DIR``).

This module finds them; what a model file holds and how its name becomes a partition key are the rules
of ``protocol.settings.model_file`` (``model_key_for``: the lower-cased stem without the paper's
``description_settings_`` / ``baseline_settings_`` prefix, so the paper's 47 files can be dropped in as
they are). Two files mapping to one key is an error naming both.

>>> model_key_for(Path("description_settings_gpt_5_high.json"))
'gpt_5_high'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import paths
from .files import file_sha256
from .protocol.settings.model_file import InvalidModelKey, model_key_for

__all__ = ["ModelFile", "ModelRegistryError", "discover_models", "find_model", "model_key_for", "models_dir"]


class ModelRegistryError(ValueError):
    """A models directory cannot be used; the message names the file(s)."""


@dataclass(frozen=True)
class ModelFile:
    key: str
    path: Path
    sha256: str


def models_dir() -> Path:
    """The default models folder of the command line (``paths.models_dir``); Dagster code passes the
    ``models`` resource's folder instead."""
    return paths.models_dir()


def discover_models(directory: Path | None = None) -> tuple[list[ModelFile], list[str]]:
    """All model files of ``directory`` (sorted by key) and a list of problems with the others.

    A bad file never hides the good ones: it is reported in the second list (file name and reason).
    """
    directory = Path(directory) if directory else models_dir()
    found: dict[str, ModelFile] = {}
    problems: list[str] = []
    if not directory.is_dir():
        return [], [f"{directory}: models directory does not exist"]
    for path in sorted(directory.glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            key = model_key_for(path)
        except InvalidModelKey as exc:
            problems.append(str(exc))
            continue
        if key in found:
            problems.append(f"{path}: model key {key!r} is already used by {found[key].path.name}")
            continue
        found[key] = ModelFile(key=key, path=path, sha256=file_sha256(path))
    return sorted(found.values(), key=lambda m: m.key), problems


def find_model(key: str, directory: Path | None = None) -> ModelFile:
    models, problems = discover_models(directory)
    for model in models:
        if model.key == key:
            return model
    hint = f" (problems: {'; '.join(problems)})" if problems else ""
    raise ModelRegistryError(f"no settings file for model {key!r} in {directory or models_dir()}{hint}")


def validation_settings_path(
    validation: bool | str, model_file: Path, project_file: Path | None = None
) -> Path | None:
    """The validation settings a model's header selects: None (``false``), the project's
    ``settings/validation/validation.json`` (``true``; ``project_file`` when given), or the named file,
    relative to the model file's folder (``"validation/validation_settings_gpt_5_mini_none.json"`` in
    ``settings/paper/``)."""
    if validation is False or validation == "":
        return None
    if validation is True:
        return project_file or paths.settings_dir() / "validation" / "validation.json"
    path = Path(validation).expanduser()
    return path if path.is_absolute() else (Path(model_file).parent / path).resolve()
