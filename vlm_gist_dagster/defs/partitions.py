"""Partitions: datasets (static), models (dynamic, one key per model settings file) and their product.

Multi-partition dimensions are ordered by name, so a pair's string key is ``"<dataset>|<model>"``.
Build keys with :func:`pair_key`, never by string concatenation.
"""

from __future__ import annotations

import re

import dagster as dg

#: The benchmark's datasets, in the order the paper's tables list them.
DATASETS: tuple[str, ...] = ("vlm_gist", "coco")

dataset_partitions = dg.StaticPartitionsDefinition(list(DATASETS))
model_partitions = dg.DynamicPartitionsDefinition(name="models")
model_dataset_partitions = dg.MultiPartitionsDefinition(
    {"dataset": dataset_partitions, "model": model_partitions}
)

#: Model keys become path segments and partition keys: lower-case slugs only ("|", "," and "/" break
#: Dagster's multi-partition keys, UI backfills and file paths).
MODEL_KEY_PATTERN = re.compile(r"^[a-z0-9_.-]+$")


class InvalidModelKey(ValueError):
    pass


def validate_model_key(key: str) -> str:
    """Return ``key`` if it is a valid model partition key, else raise :class:`InvalidModelKey`."""
    if not isinstance(key, str) or not MODEL_KEY_PATTERN.fullmatch(key) or set(key) == {"."}:
        raise InvalidModelKey(
            f"invalid model key {key!r}: use lower-case letters, digits, '_', '.' and '-' only (not just dots)"
        )
    return key


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
