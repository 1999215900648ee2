"""Review results in the FiftyOne App: one persistent FiftyOne dataset per benchmark dataset with the
ground truth and, per model, a field for each stage of the paper and FiftyOne's own evaluation.

* :mod:`.builder` builds or updates the FiftyOne dataset from DataFrames (what a Dagster asset would
  hand it) and skips models whose inputs did not change;
* :mod:`.inputs` reads those DataFrames from the Parquet assets the pipeline writes
  (``<assets>/<asset>/<dataset>[/<model>].parquet``), fingerprinted by the files' hashes;
* :mod:`.app` launches the FiftyOne App on 127.0.0.1 (``vlm-gist review``).
"""

from .builder import (
    EVAL_PARAMETERS,
    DatasetInput,
    ModelInput,
    ModelReview,
    PairFrames,
    ReviewError,
    ReviewSummary,
    build_review_dataset,
    default_dataset_name,
    field_prefix,
    frame_fingerprint,
    metrics_differences,
)
from .inputs import dataset_input, model_inputs, stored_models

__all__ = [
    "EVAL_PARAMETERS",
    "DatasetInput",
    "ModelInput",
    "ModelReview",
    "PairFrames",
    "ReviewError",
    "ReviewSummary",
    "build_review_dataset",
    "dataset_input",
    "default_dataset_name",
    "field_prefix",
    "frame_fingerprint",
    "metrics_differences",
    "model_inputs",
    "stored_models",
]
