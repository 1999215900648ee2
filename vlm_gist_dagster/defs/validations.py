"""Stage C asset: ``validations`` (optional VLM crop validation, off unless a model file enables it)."""

import dagster as dg
import pandas as pd

from ..model_registry import validation_settings_path
from ..orchestration.failures import api_errors
from ..orchestration.metadata import column_schema, preview
from ..orchestration.policies import API_RETRY, VLM_POOL, provider_pool
from ..protocol.settings import SettingsError, ValidationSettings, load_validation_settings
from ..stages.tables import VALIDATIONS
from ..stages.validation import run_validations
from .automation import STAGE_CONDITION
from .partitions import model_dataset_partitions, pair
from .resources import ModelsResource, ServicesResource, SettingsResource, resources_from_environment
from .settings_assets import validation_settings_file


def validation_pool(settings: SettingsResource) -> str:
    """The pool of ``validations``: ``vlm_api/<provider>`` of the project's validation VLM
    (orchestration/policies.py). A model file that names its own validation settings file still runs in
    this pool."""
    from ..protocol.endpoints import resolve_endpoint

    try:
        vlm = load_validation_settings(settings.validation_file()).vlm
        return provider_pool(resolve_endpoint(vlm.api_endpoint).name)  # type: ignore[arg-type]
    except Exception:  # the step reports a bad settings file when it runs
        return VLM_POOL


#: Read from the settings the resources are configured with, when the definitions load.
VALIDATION_POOL = validation_pool(resources_from_environment()["settings"])  # type: ignore[arg-type]


@dg.asset(
    partitions_def=model_dataset_partitions,
    group_name="benchmark",
    kinds={"parquet", "vlm"},
    pool=VALIDATION_POOL,  # vlm_api/<provider> of the validation VLM (validation_pool)
    retry_policy=API_RETRY,
    automation_condition=STAGE_CONDITION,
    code_version="1",
    deps=[validation_settings_file],
    description="Stage C (optional, off by default as in the paper): the validation VLM keeps, relabels or "
    "rejects each detection from its crop. When off, detections pass through unchanged.",
)
def validations(
    context: dg.AssetExecutionContext,
    dataset_images: pd.DataFrame,
    descriptions: pd.DataFrame,
    masks: pd.DataFrame,
    models: ModelsResource,
    services: ServicesResource,
    settings: SettingsResource,
) -> dg.Output[pd.DataFrame]:
    _, key = pair(context)
    found, model = models.load(key)
    validation: ValidationSettings | None = None
    settings_path = validation_settings_path(model.validation, found.path, settings.validation_file())
    if settings_path is not None and model.kind == "vlm":
        try:
            validation = load_validation_settings(settings_path)
        except SettingsError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        context.log.info(f"validation settings: {settings_path}")
    else:
        context.log.info("validation is off for this model: detections pass through unchanged")
    with api_errors():
        table = run_validations(
            dataset_images, descriptions, masks, validation, services.services(), log=context.log.info
        )
    counts = table["validation_outcome"].value_counts().to_dict()
    errors = table["validation_error"].dropna().astype(str)
    if len(errors):
        # The paper drops these silently ("Reject ... after completion error"); say why, once per reason.
        reasons = errors.value_counts()
        context.log.warning(
            f"validation: {len(errors)} of {len(table)} crops got no answer and were dropped: "
            + "; ".join(f"{n} x {reason}" for reason, n in reasons.head(5).items())
        )
    return dg.Output(
        table,
        metadata={
            "dagster/row_count": len(table),
            "dagster/column_schema": column_schema(table, VALIDATIONS.descriptions),
            "validation": "on" if validation is not None else "off (pass-through)",
            "kept": int(table["kept"].astype(bool).sum()),
            "dropped": int((~table["kept"].astype(bool)).sum()),
            "errors": len(errors),
            "actions": dg.MetadataValue.json({str(k): int(v) for k, v in counts.items()}),
            "preview": preview(table),
        },
    )
