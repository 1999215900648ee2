"""What a real run needs before it starts: the API keys of every service its models will call.

``vlm-gist run --no-simulator`` checks them first, so a missing key stops the run at once with the
variable's name and who needs it, before any dataset is loaded or any request is sent (otherwise each
pair would fail separately, minutes later, with the reason buried in its run's log).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .clients.endpoints import EndpointLike, as_endpoint
from .clients.vision import TOKEN_ENV
from .model_registry import find_model, validation_settings_path
from .protocol.settings import load_label_matching_settings, load_model_settings, load_validation_settings

__all__ = ["missing_keys"]


def missing_keys(
    model_keys: Sequence[str],
    datasets: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    models_directory: Path | None = None,
    settings_directory: Path | None = None,
) -> list[str]:
    """One line per unset key variable a real run of ``model_keys`` on ``datasets`` needs, naming who
    needs it, e.g. ``OPENAI_API_KEY (gpt_5_high descriptions, label matching on coco)``; empty when all
    are set. Settings files that cannot be read are left to the run, which reports them per pair."""
    from . import paths

    env = os.environ if env is None else env
    settings_directory = settings_directory or paths.settings_dir()
    needs: dict[str, list[str]] = {}

    def need(endpoint: EndpointLike, who: str) -> None:
        variable = as_endpoint(endpoint).key_env_var
        if variable:
            needs.setdefault(variable, []).append(who)

    for key in model_keys:
        found = find_model(key, models_directory)
        model = load_model_settings(found.path)
        needs.setdefault(TOKEN_ENV, []).append(f"{key} detections and masks")
        if model.kind != "vlm":
            continue
        need(model.description.vlm_structured_description.api_endpoint, f"{key} descriptions")
        validation = validation_settings_path(model.validation, found.path)
        if validation is not None:
            need(load_validation_settings(validation).vlm.api_endpoint, f"{key} validation")
    if model_keys:
        for dataset in datasets:
            path = settings_directory / "label_matching" / f"{dataset}.json"
            if path.is_file():
                need(load_label_matching_settings(path).llm.api_endpoint, f"label matching on {dataset}")
        if env.get("VLM_GIST_EMBEDDINGS", "endpoint") != "local":
            need("OpenAI", "label-matching embeddings")
    lines = []
    for variable, who in needs.items():
        if not (env.get(variable) or "").strip():
            names = list(dict.fromkeys(who))
            shown = names if len(names) <= 4 else [*names[:3], f"and {len(names) - 3} more"]
            lines.append(f"{variable} ({', '.join(shown)})")
    return lines
