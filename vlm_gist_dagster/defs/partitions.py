"""Partitions: datasets (static), models (dynamic, one key per model settings file) and their product.

Multi-partition dimensions are ordered by name, so a pair's string key is ``"<dataset>|<model>"``.
Build keys with :func:`pair_key`, never by string concatenation.
"""

from __future__ import annotations

import dagster as dg

from ..protocol.settings.model_file import MODEL_KEY_PATTERN, InvalidModelKey, validate_model_key

#: The benchmark's datasets, in the order the paper's tables list them.
DATASETS: tuple[str, ...] = ("vlm_gist", "coco")

dataset_partitions = dg.StaticPartitionsDefinition(list(DATASETS))
#: The name of the models' dynamic partitions (``DynamicPartitionsDefinition.name`` is typed optional).
MODEL_PARTITIONS_NAME = "models"
model_partitions = dg.DynamicPartitionsDefinition(name=MODEL_PARTITIONS_NAME)
model_dataset_partitions = dg.MultiPartitionsDefinition(
    {"dataset": dataset_partitions, "model": model_partitions}
)

__all__ = [
    "DATASETS",
    "MODEL_KEY_PATTERN",
    "MODEL_PARTITIONS_NAME",
    "InvalidModelKey",
    "dataset_partitions",
    "model_dataset_partitions",
    "model_partitions",
    "pair",
    "pair_key",
    "split_pair_key",
    "validate_model_key",
]


def pair_key(dataset: str, model: str) -> dg.MultiPartitionKey:
    """The partition key of one (dataset, model) pair."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {DATASETS}")
    return dg.MultiPartitionKey({"dataset": dataset, "model": validate_model_key(model)})


def split_pair_key(key: str | dg.MultiPartitionKey) -> tuple[str, str]:
    """``(dataset, model)`` of a pair key given as a ``MultiPartitionKey`` or its string form."""
    if not isinstance(key, dg.MultiPartitionKey):
        key = model_dataset_partitions.get_partition_key_from_str(key)
    dims = key.keys_by_dimension
    return dims["dataset"], dims["model"]


def pair(context: dg.AssetExecutionContext) -> tuple[str, str]:
    """``(dataset, model)`` of the pair that a per-pair asset's step computes."""
    return split_pair_key(context.partition_key)
