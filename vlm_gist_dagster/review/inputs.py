"""The review's inputs read from the Parquet assets the pipeline writes (``defs/io_manager.py``):
``<assets>/dataset_images/<dataset>.parquet``, ``<assets>/ground_truth/<dataset>.parquet`` and
``<assets>/<asset>/<dataset>/<model>.parquet`` for every pair asset.

Fingerprints are the files' SHA-256 hashes, computed without parsing them, so an unchanged model costs
one read of its files and nothing else.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from upath import UPath

from .. import paths
from .builder import PAIR_ASSETS, DatasetInput, ModelInput, PairFrames, ReviewError, _digest

__all__ = ["dataset_input", "model_inputs", "stored_models"]


def _base(assets_dir: str | Path | UPath | None) -> UPath:
    return UPath(str(assets_dir) if assets_dir else paths.assets_dir())


def _file_hash(path: UPath) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read(path: UPath):
    from ..parquet import read_parquet

    try:
        return read_parquet(path)
    except Exception as exc:  # name the file, whatever pyarrow raises
        raise ReviewError(f"{path}: cannot read this Parquet file ({type(exc).__name__}: {exc})") from exc


def dataset_input(dataset: str, assets_dir: str | Path | UPath | None = None) -> DatasetInput:
    """The dataset's images and ground truth as the pipeline stored them (the tables ``metrics`` was
    computed against)."""
    base = _base(assets_dir)
    files = {asset: base / asset / f"{dataset}.parquet" for asset in ("dataset_images", "ground_truth")}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise ReviewError(
            f"dataset {dataset!r} has no stored tables ({', '.join(missing)} missing): "
            f"run `vlm-gist run --datasets {dataset}` first"
        )
    fingerprint = _digest(f"{asset}={_file_hash(path)}" for asset, path in files.items())
    return DatasetInput(fingerprint, lambda: (_read(files["dataset_images"]), _read(files["ground_truth"])))


def stored_models(dataset: str, assets_dir: str | Path | UPath | None = None) -> list[str]:
    """Keys of the models with at least one stored pair asset for ``dataset``, sorted."""
    base = _base(assets_dir)
    keys: set[str] = set()
    for asset in PAIR_ASSETS:
        directory = base / asset / dataset
        if directory.is_dir():
            keys.update(
                p.name[: -len(".parquet")] for p in directory.iterdir() if p.name.endswith(".parquet")
            )
    return sorted(k for k in keys if not k.startswith("."))


def model_inputs(
    dataset: str, models: list[str] | None = None, assets_dir: str | Path | UPath | None = None
) -> list[ModelInput]:
    """One :class:`ModelInput` per model with stored outputs for ``dataset`` (or the ``models`` named;
    a named model without outputs is an error listing the stored ones)."""
    base = _base(assets_dir)
    available = stored_models(dataset, base)
    unknown = sorted(set(models or ()) - set(available))
    if unknown:
        raise ReviewError(
            f"no stored outputs of model(s) {', '.join(unknown)} for dataset {dataset!r} under {base}"
            + (f" (stored: {', '.join(available)})" if available else " (none: run the benchmark first)")
        )
    inputs = []
    for key in models or available:
        files = {asset: base / asset / dataset / f"{key}.parquet" for asset in PAIR_ASSETS}
        files = {asset: path for asset, path in files.items() if path.exists()}
        fingerprint = _digest(f"{asset}={_file_hash(path)}" for asset, path in files.items())

        def load(files=files) -> PairFrames:
            return PairFrames(**{asset: _read(path) for asset, path in files.items()})

        inputs.append(ModelInput(key, fingerprint, load))
    return inputs
