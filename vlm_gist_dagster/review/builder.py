"""Build or update the review dataset: a persistent FiftyOne dataset for one benchmark dataset with its
ground truth and, per model, one field per stage of the paper, evaluated by FiftyOne itself.

Per model with field prefix ``p`` (its key with every character outside ``[A-Za-z0-9_]`` as ``_``):

==========================  ==============================================================================
field                       what
==========================  ==============================================================================
``p_described``             stage A: the structured description, ``"object_name: description"`` per object
``p_description_error``     stage A: why the image has no description (None when it has one)
``p_detections``            stage B: the detector's boxes (MM-Grounding-DINO), labelled with the described
                            object name; ``description``, ``prompt``, ``confidence``, ``over_detection``
``p_masks``                 stage B/C: the SAM2 masks on the box that is evaluated (the mask's box), with
                            ``track_id``, the validation action and ``kept``
``p_label_matches``         stage D: every detection that entered label matching, labelled with its best
                            target; ``object_name``, ``description``, ``score``, ``status`` (matched /
                            dropped / skipped)
``p_predictions``           stage E: what is evaluated, the matched detections labelled with their dataset
                            class (unmatched ones are dropped, not counted as FP: docs/protocol/evaluation.md gotcha 1), with masks
``eval_p_tp/fp/fn``         FiftyOne's ``evaluate_detections`` with ``eval_key="eval_p"``; each prediction and
                            GT object carries ``eval_p`` = tp / fp / fn (filter them in the App)
==========================  ==============================================================================

The evaluation is the paper's call (docs/protocol/evaluation.md §2.3, :data:`EVAL_PARAMETERS`): box IoU 0.5,
class-wise, COCO-style greedy matching, mAP over 10 thresholds; when that raises (a baseline without
confidences) it is repeated without mAP, as the paper's node does. The numbers are stored on the
dataset's ``info`` next to the project's ``metrics`` row, so they can be compared.

Incremental: ``info["vlm_gist_review"]`` records a fingerprint of each model's inputs (file hashes or
Dagster data versions, chosen by the caller) and of the images and ground truth. A model whose
fingerprint is unchanged and whose fields are all there is left alone; a changed ground truth rebuilds
the dataset. A FiftyOne dataset of the same name that this module did not make is never touched.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from ..protocol.masks import decode_rle

__all__ = [
    "EVAL_PARAMETERS",
    "DatasetInput",
    "ModelInput",
    "ModelReview",
    "PairFrames",
    "ReviewError",
    "ReviewSummary",
    "build_review_dataset",
    "default_dataset_name",
    "field_prefix",
    "frame_fingerprint",
    "metrics_differences",
]

#: Bumped whenever the fields written here change, so that every stored model is rebuilt.
REVIEW_SCHEMA = 1
#: Where the builder keeps its bookkeeping on ``dataset.info``.
INFO_KEY = "vlm_gist_review"
GT_FIELD = "ground_truth"
#: The paper's ``evaluate_detections`` call (docs/protocol/evaluation.md §2.3); ``classes=None`` is the default.
EVAL_PARAMETERS: Mapping[str, Any] = {
    "gt_field": GT_FIELD,
    "method": "coco",
    "iou": 0.5,
    "classwise": True,
    "use_masks": False,
    "iscrowd": "iscrowd",
    "compute_mAP": True,
}
#: The per-model fields, in sidebar order (suffixes of the field prefix).
STAGE_FIELDS: tuple[str, ...] = (
    "predictions",
    "label_matches",
    "masks",
    "detections",
    "described",
    "description_error",
)
#: The pair assets a model's fields are made from.
PAIR_ASSETS: tuple[str, ...] = (
    "descriptions",
    "detections",
    "masks",
    "validations",
    "label_matches",
    "metrics",
)


class ReviewError(ValueError):
    """The review dataset cannot be built; the message says which input or dataset is at fault."""


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairFrames:
    """One (dataset, model) pair's stored stage outputs, as the pipeline's assets hold them. Any may be
    missing (a pair that failed half-way is still worth looking at); the evaluation needs
    ``label_matches``."""

    descriptions: pd.DataFrame | None = None
    detections: pd.DataFrame | None = None
    masks: pd.DataFrame | None = None
    validations: pd.DataFrame | None = None
    label_matches: pd.DataFrame | None = None
    metrics: pd.DataFrame | None = None

    def present(self) -> list[str]:
        return [name for name in PAIR_ASSETS if getattr(self, name) is not None]


@dataclass(frozen=True)
class ModelInput:
    """A model to put into the review dataset: its key, a fingerprint of its inputs (file hashes, data
    versions: anything that changes when they do) and how to load them, called only when the model has
    to be (re)built."""

    key: str
    fingerprint: str
    load: Callable[[], PairFrames]
    display_name: str | None = None

    @classmethod
    def from_frames(cls, key: str, frames: PairFrames, display_name: str | None = None) -> ModelInput:
        """For callers that hold the frames already: the fingerprint is the frames' content hash."""
        parts = [f"{n}={frame_fingerprint(getattr(frames, n))}" for n in frames.present()]
        return cls(key, _digest(parts), lambda: frames, display_name)


@dataclass(frozen=True)
class DatasetInput:
    """The benchmark dataset's ``dataset_images`` and ``ground_truth`` tables, fingerprinted like
    :class:`ModelInput`."""

    fingerprint: str
    load: Callable[[], tuple[pd.DataFrame, pd.DataFrame]]

    @classmethod
    def from_frames(cls, images: pd.DataFrame, ground_truth: pd.DataFrame) -> DatasetInput:
        fingerprint = _digest([frame_fingerprint(images), frame_fingerprint(ground_truth)])
        return cls(fingerprint, lambda: (images, ground_truth))


def frame_fingerprint(df: pd.DataFrame) -> str:
    """SHA-256 of the frame's Arrow IPC serialisation (the columns Parquet stores, without the index)."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def _digest(parts: Iterable[str]) -> str:
    return hashlib.sha256("\n".join([f"schema={REVIEW_SCHEMA}", *parts]).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelReview:
    """What the review dataset holds for one model. ``status``: ``built`` (now), ``unchanged`` (inputs
    as before, left alone) or ``removed`` (its outputs are gone). ``evaluation``: FiftyOne's numbers
    (``tp, fp, fn, precision, recall, fscore, mAP, mAR``, ``mAP_unavailable`` with the reason when the
    call had to be repeated without mAP); ``metrics``: the project's ``metrics`` row for the pair, when
    stored."""

    key: str
    prefix: str
    status: str
    fields: tuple[str, ...] = ()
    eval_key: str | None = None
    display_name: str | None = None
    evaluation: Mapping[str, Any] | None = None
    metrics: Mapping[str, Any] | None = None
    seconds: float = 0.0

    def differences(self) -> list[str]:
        """Where FiftyOne's evaluation disagrees with the project's ``metrics`` (empty when it agrees or
        either is missing)."""
        if not self.evaluation or not self.metrics:
            return []
        return metrics_differences(self.evaluation, self.metrics)


@dataclass(frozen=True)
class ReviewSummary:
    name: str
    dataset: str
    num_samples: int
    num_ground_truth: int
    models: tuple[ModelReview, ...]
    recreated: bool
    seconds: float

    def model(self, key: str) -> ModelReview:
        for m in self.models:
            if m.key == key:
                return m
        raise KeyError(key)

    def metadata(self) -> dict[str, Any]:
        """Plain values for a Dagster materialisation or a log line."""
        return {
            "fiftyone_dataset": self.name,
            "samples": self.num_samples,
            "ground_truth_objects": self.num_ground_truth,
            "models": len([m for m in self.models if m.status != "removed"]),
            "models_built": sorted(m.key for m in self.models if m.status == "built"),
            "models_unchanged": sorted(m.key for m in self.models if m.status == "unchanged"),
            "models_removed": sorted(m.key for m in self.models if m.status == "removed"),
            "disagreements": {m.key: m.differences() for m in self.models if m.differences()},
            "seconds": round(self.seconds, 2),
        }


#: (FiftyOne evaluation key, project metrics column, exact?)
_COMPARED: tuple[tuple[str, str, bool], ...] = (
    ("tp", "tp", True),
    ("fp", "fp", True),
    ("fn", "fn", True),
    ("precision", "prec", False),
    ("recall", "rec", False),
    ("fscore", "f1", False),
    ("mAP", "map", False),
)


def metrics_differences(
    evaluation: Mapping[str, Any], metrics: Mapping[str, Any], *, tolerance: float = 1e-9
) -> list[str]:
    """``["fp: FiftyOne 16, metrics 15", ...]`` for every compared number that differs (counts exactly,
    rates within ``tolerance``; a missing mAP on both sides agrees)."""
    out = []
    for ours, theirs, exact in _COMPARED:
        a, b = _num(evaluation.get(ours)), _num(metrics.get(theirs))
        if a is None and b is None:
            continue
        if a is None or b is None or (a != b if exact else abs(a - b) > tolerance):
            out.append(f"{ours}: FiftyOne {a}, metrics {b}")
    return out


# --------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------


def default_dataset_name(dataset: str) -> str:
    """The FiftyOne dataset a benchmark dataset is reviewed in: ``vlm-gist-<dataset>``."""
    return f"vlm-gist-{dataset}"


def field_prefix(model_key: str) -> str:
    """A FiftyOne field name prefix for a model key (``gpt-5.1`` → ``gpt_5_1``).

    >>> field_prefix("qwen3-vl-8b.fp8")
    'qwen3_vl_8b_fp8'
    >>> field_prefix("4o")
    'm_4o'
    """
    prefix = re.sub(r"[^A-Za-z0-9_]", "_", model_key)
    return prefix if re.match(r"[A-Za-z_]", prefix) else f"m_{prefix}"


def model_fields(prefix: str) -> tuple[str, ...]:
    return tuple(f"{prefix}_{suffix}" for suffix in STAGE_FIELDS)


def eval_key_for(prefix: str) -> str:
    return f"eval_{prefix}"


def _prefixes(keys: Iterable[str]) -> dict[str, str]:
    prefixes: dict[str, str] = {}
    for key in sorted(keys):
        prefix = field_prefix(key)
        clash = [k for k, p in prefixes.items() if p == prefix]
        if clash:
            raise ReviewError(
                f"models {clash[0]!r} and {key!r} map to the same FiftyOne field prefix {prefix!r}; rename one model file"
            )
        prefixes[key] = prefix
    return prefixes


# --------------------------------------------------------------------------------------------------
# Conversion helpers
# --------------------------------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    if value is None or value is pd.NA:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _value(value: Any) -> Any:
    """A plain Python value for FiftyOne (None for NaN / NA; numpy scalars unwrapped)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _text(value: Any) -> str | None:
    value = _value(value)
    return None if value is None else str(value)


def box_mask(rle: Mapping[str, Any] | None, box: Sequence[float]) -> np.ndarray | None:
    """The part of a full-image COCO RLE mask inside a relative ``[x, y, w, h]`` box, as FiftyOne
    stores instance masks (its COCO importer rounds the box to pixels the same way); None when there is
    no mask or the box covers no pixel."""
    if rle is None or not isinstance(rle, Mapping):
        return None
    full = decode_rle(rle)
    height, width = full.shape
    x, y, w, h = (float(v) for v in box)
    x0, y0 = max(0, round(x * width)), max(0, round(y * height))
    x1, y1 = min(width, round((x + w) * width)), min(height, round((y + h) * height))
    if x1 <= x0 or y1 <= y0:
        return None
    return np.ascontiguousarray(full[y0:y1, x0:x1])


def _group(df: pd.DataFrame | None, known: set[str], what: str) -> dict[str, list[dict]]:
    """Rows per image id, in stored order (the order of FiftyOne's Detections lists: it breaks ties)."""
    if df is None or len(df) == 0:
        return {}
    unknown = sorted(set(df["image_id"].astype(str)) - known)
    if unknown:
        raise ReviewError(
            f"{what}: image(s) {unknown[:5]} are not in the dataset's images (stale outputs of another dataset "
            "version?); re-run the pair"
        )
    out: dict[str, list[dict]] = {}
    for row in df.to_dict("records"):
        out.setdefault(str(row["image_id"]), []).append(row)
    return out


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


def build_review_dataset(
    dataset: str,
    base: DatasetInput,
    models: Sequence[ModelInput],
    *,
    selected: Collection[str] | None = None,
    name: str | None = None,
    log: Callable[[str], None] | None = print,
) -> ReviewSummary:
    """Build or update the persistent FiftyOne dataset ``name`` (default ``vlm-gist-<dataset>``).

    ``models`` are the models whose outputs exist; ``selected`` the keys to build or update (None: all
    of them, and models whose outputs are gone are removed from the dataset). Models already in the
    dataset with an unchanged fingerprint are not rebuilt. Returns what the dataset now holds, with
    FiftyOne's evaluation of every model next to the project's ``metrics``.

    This is all a Dagster asset needs: ``DatasetInput.from_frames(images, ground_truth)`` and
    ``ModelInput.from_frames(key, PairFrames(...))`` (or data versions as fingerprints).
    """
    import fiftyone as fo

    say = log or (lambda _msg: None)
    started = time.monotonic()
    name = name or default_dataset_name(dataset)
    by_key: dict[str, ModelInput] = {}
    for model in models:
        if model.key in by_key:
            raise ReviewError(f"model {model.key!r} given twice")
        by_key[model.key] = model
    unknown = sorted(set(selected or ()) - set(by_key))
    if unknown:
        raise ReviewError(
            f"no stored outputs of model(s) {', '.join(unknown)} for dataset {dataset!r}"
            + (
                f" (stored: {', '.join(sorted(by_key))})"
                if by_key
                else " (none stored: run the benchmark first)"
            )
        )

    ds = fo.load_dataset(name) if fo.dataset_exists(name) else None
    info = dict(ds.info.get(INFO_KEY) or {}) if ds is not None else {}
    if ds is not None and not info:
        raise ReviewError(
            f"a FiftyOne dataset named {name!r} exists and was not made by `vlm-gist review`; it is left as it "
            "is: choose another name (--name) or delete it yourself"
        )
    gt_fingerprint = _digest([f"dataset={dataset}", base.fingerprint])
    recreate = ds is None or info.get("schema") != REVIEW_SCHEMA or info.get("ground_truth") != gt_fingerprint
    previously = dict(info.get("models") or {})
    if recreate:
        if ds is not None:
            say(f"{name}: the images or ground truth changed; rebuilding the dataset")
            ds.delete()
        images, ground_truth = base.load()
        ds = _create_dataset(name, dataset, images, ground_truth, say)
        info = {"schema": REVIEW_SCHEMA, "dataset": dataset, "ground_truth": gt_fingerprint, "models": {}}
        _save_info(ds, info)
    assert ds is not None, "recreate is set whenever there was no dataset"
    stored: dict[str, dict] = dict(info.get("models") or {})

    prefixes = _prefixes(set(by_key) | set(stored))
    wanted = set(by_key) if selected is None else set(selected)
    if recreate:
        wanted |= set(previously) & set(by_key)  # keep what the dataset held
    removed = sorted(set(stored) - set(by_key)) if selected is None else []

    image_ids = [str(v) for v in ds.values("image_id")]
    sizes = dict(zip(image_ids, zip(ds.values("metadata.width"), ds.values("metadata.height"))))
    reviews: dict[str, ModelReview] = {}
    for key in removed:
        _drop_model(ds, prefixes[key])
        stored.pop(key)
        info["models"] = stored
        _save_info(ds, info)
        reviews[key] = ModelReview(key, prefixes[key], "removed")
        say(f"{key}: removed (its outputs are gone)")

    todo = sorted(wanted)
    for i, key in enumerate(todo, start=1):
        model, prefix = by_key[key], prefixes[key]
        entry = stored.get(key)
        if entry and entry.get("fingerprint") == model.fingerprint and _complete(ds, entry):
            reviews[key] = _review_from_entry(key, prefix, "unchanged", entry)
            say(f"[{i}/{len(todo)}] {key}: unchanged")
            continue
        t0 = time.monotonic()
        say(f"[{i}/{len(todo)}] {key}: building")
        _drop_model(ds, prefix)  # also what an interrupted build left behind
        stored.pop(key, None)
        frames = model.load()
        entry = _add_model(ds, key, prefix, frames, sizes, model.display_name, say)
        entry["fingerprint"] = model.fingerprint
        entry["seconds"] = round(time.monotonic() - t0, 3)
        stored[key] = entry
        info["models"] = stored
        _save_info(ds, info)  # only now is the model complete
        reviews[key] = _review_from_entry(key, prefix, "built", entry)
        evaluation = entry.get("evaluation") or {}
        say(
            f"[{i}/{len(todo)}] {key}: built in {entry['seconds']:.1f} s"
            + (
                f" (TP {evaluation['tp']}, FP {evaluation['fp']}, FN {evaluation['fn']})"
                if evaluation
                else " (no label matches: not evaluated)"
            )
        )
    for key, entry in stored.items():
        reviews.setdefault(key, _review_from_entry(key, prefixes[key], "unchanged", entry))

    _configure_app(ds, stored, prefixes)
    ordered = tuple(reviews[k] for k in sorted(reviews))
    return ReviewSummary(
        name=name,
        dataset=dataset,
        num_samples=len(ds),
        num_ground_truth=int(ds.count(f"{GT_FIELD}.detections")),
        models=ordered,
        recreated=recreate,
        seconds=time.monotonic() - started,
    )


def _save_info(ds, info: dict) -> None:
    ds.info[INFO_KEY] = info
    ds.save()


def _complete(ds, entry: Mapping[str, Any]) -> bool:
    schema = ds.get_field_schema()
    if any(f not in schema for f in entry.get("fields") or ()):
        return False
    eval_key = entry.get("eval_key")
    return eval_key is None or ds.has_evaluation(eval_key)


def _review_from_entry(key: str, prefix: str, status: str, entry: Mapping[str, Any]) -> ModelReview:
    return ModelReview(
        key=key,
        prefix=prefix,
        status=status,
        fields=tuple(entry.get("fields") or ()),
        eval_key=entry.get("eval_key"),
        display_name=entry.get("display_name"),
        evaluation=entry.get("evaluation"),
        metrics=entry.get("metrics"),
        seconds=float(entry.get("seconds") or 0.0),
    )


def _create_dataset(name: str, dataset: str, images: pd.DataFrame, ground_truth: pd.DataFrame, say):
    import fiftyone as fo

    missing = [c for c in ("image_id", "path", "width", "height") if c not in images.columns]
    if missing:
        raise ReviewError(f"dataset_images of {dataset!r}: missing column(s) {missing}")
    if images["image_id"].duplicated().any():
        dup = images.loc[images["image_id"].duplicated(), "image_id"].iloc[0]
        raise ReviewError(f"dataset_images of {dataset!r}: image id {dup!r} occurs twice")
    known = set(images["image_id"].astype(str))
    gt_rows = _group(ground_truth, known, f"ground_truth of {dataset!r}")
    absent = [p for p in images["path"] if not Path(str(p)).is_file()]
    if absent:
        say(
            f"warning: {len(absent)} image file(s) of {dataset!r} not found (e.g. {absent[0]}); the App shows them blank"
        )
    samples = []
    for image in images.to_dict("records"):
        image_id = str(image["image_id"])
        detections = [
            fo.Detection(
                label=str(r["label"]),
                bounding_box=_relative_box(r),
                mask=_row_mask(r),
                iscrowd=int(_value(r.get("iscrowd")) or 0),
                annotation_id=_text(r.get("instance_id")),
            )
            for r in gt_rows.get(image_id, [])
        ]
        samples.append(
            fo.Sample(
                filepath=str(image["path"]),
                image_id=image_id,
                metadata=fo.ImageMetadata(width=int(image["width"]), height=int(image["height"])),
                **{GT_FIELD: fo.Detections(detections=detections)},
            )
        )
    ds = fo.Dataset(name, persistent=True)
    ds.description = (
        f"VLM-GIST benchmark, dataset {dataset!r}: ground truth and every model's stage outputs "
        "(made by `vlm-gist review`)"
    )
    ds.add_samples(samples)
    ds.create_index("image_id", unique=True)
    say(f"{name}: {len(samples)} images, {len(ground_truth)} ground-truth objects")
    return ds


def _drop_model(ds, prefix: str) -> None:
    eval_key = eval_key_for(prefix)
    if ds.has_evaluation(eval_key):
        ds.delete_evaluation(eval_key)
    schema = ds.get_field_schema()
    leftovers = [
        f for f in (*model_fields(prefix), *(f"{eval_key}_{t}" for t in ("tp", "fp", "fn"))) if f in schema
    ]
    if leftovers:
        ds.delete_sample_fields(leftovers)


def _confidence(value: Any) -> float | None:
    # FiftyOne sorts by ``confidence or -1``: NaN would be truthy and sort arbitrarily; None is "missing".
    return _num(value)


def _add_model(ds, key: str, prefix: str, frames: PairFrames, sizes, display_name, say) -> dict[str, Any]:
    import fiftyone as fo

    known = set(sizes)
    per_image: dict[str, dict[str, Any]] = {}

    def put(field_name: str, image_id: str, value: Any) -> None:
        per_image.setdefault(field_name, {})[image_id] = value

    written: list[str] = []

    if frames.descriptions is not None:
        described, errors = f"{prefix}_described", f"{prefix}_description_error"
        for image_id, rows in _group(frames.descriptions, known, f"descriptions of {key}").items():
            row = rows[-1]
            objects = row.get("objects")
            put(
                described,
                image_id,
                None
                if objects is None or isinstance(objects, float)
                else [f"{o.get('object_name')}: {o.get('description')}" for o in objects],
            )
            ok = bool(_value(row.get("success")))
            put(
                errors,
                image_id,
                None if ok else (_text(row.get("error_message")) or _text(row.get("error")) or "failed"),
            )
        written += [described, errors]

    def put_detections(name: str, frame: pd.DataFrame, what: str, detection: Callable[..., Any]) -> None:
        """One ``fo.Detections`` per image of ``frame``: ``detection(row, image_id)`` of each row."""
        for image_id, rows in _group(frame, known, f"{what} of {key}").items():
            put(name, image_id, fo.Detections(detections=[detection(r, image_id) for r in rows]))
        written.append(name)

    if frames.detections is not None:
        put_detections(
            f"{prefix}_detections",
            frames.detections,
            "detections",
            lambda r, image_id: _detection(r, sizes[image_id]),
        )

    segmented = frames.validations if frames.validations is not None else frames.masks
    if segmented is not None:
        put_detections(f"{prefix}_masks", segmented, "masks", lambda r, _image_id: _mask_detection(r))

    evaluation: dict[str, Any] | None = None
    eval_key: str | None = None
    if frames.label_matches is not None:
        matches_field, predictions_field = f"{prefix}_label_matches", f"{prefix}_predictions"
        grouped = _group(frames.label_matches, known, f"label_matches of {key}")
        for image_id, rows in grouped.items():
            put(matches_field, image_id, fo.Detections(detections=[_label_match(r) for r in rows]))
            # What the paper evaluates: the matched detections, labelled with their dataset class.
            put(
                predictions_field,
                image_id,
                fo.Detections(
                    detections=[
                        fo.Detection(
                            label=str(r["dataset_match"]),
                            bounding_box=_relative_box(r),
                            confidence=_confidence(r.get("confidence")),
                            mask=_row_mask(r),
                            object_name=_text(r.get("label")),
                            description=_text(r.get("description")),
                            score=_value(r.get("score")),
                            detection_index=_value(r.get("detection_index")),
                        )
                        for r in rows
                        if _value(r.get("dataset_match")) is not None
                    ]
                ),
            )
        for image_id in known - set(grouped):  # no prediction: every GT object is a false negative
            put(predictions_field, image_id, fo.Detections())
        written += [matches_field, predictions_field]

    schema = ds.get_field_schema()
    for field_name in written:
        if (
            field_name not in schema
        ):  # declared, so that an all-None field (a baseline's descriptions) has a type
            if field_name.endswith("_described"):
                ds.add_sample_field(field_name, fo.ListField, subfield=fo.StringField)
            elif field_name.endswith("_description_error"):
                ds.add_sample_field(field_name, fo.StringField)
            else:
                ds.add_sample_field(field_name, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
        ds.set_values(field_name, per_image.get(field_name, {}), key_field="image_id")
    if frames.label_matches is not None:
        eval_key = eval_key_for(prefix)
        evaluation = _evaluate(ds, f"{prefix}_predictions", eval_key, say)

    metrics = None
    if frames.metrics is not None and len(frames.metrics):
        row = frames.metrics.iloc[0].to_dict()
        metrics = {
            k: _value(row.get(k)) for k in ("tp", "fp", "fn", "prec", "rec", "f1", "map", "mat", "ins")
        }
        display_name = display_name or _text(row.get("display_name"))
    return {
        "prefix": prefix,
        "display_name": display_name,
        "fields": written,
        "eval_key": eval_key,
        "evaluation": evaluation,
        "metrics": metrics,
        "inputs": frames.present(),
        "built_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def _detection(r: Mapping[str, Any], size: tuple[int, int]):
    """A detections row (pixel ``x1 y1 x2 y2`` of an image of ``size``) as an ``fo.Detection``."""
    import fiftyone as fo

    width, height = size
    return fo.Detection(
        label=_text(r.get("object_name")) or "(none)",
        bounding_box=[
            r["x1"] / width,
            r["y1"] / height,
            (r["x2"] - r["x1"]) / width,
            (r["y2"] - r["y1"]) / height,
        ],
        confidence=_confidence(r.get("confidence")),
        description=_text(r.get("description")),
        prompt=_text(r.get("prompt")),
        over_detection=_value(r.get("is_over_detection")),
        instance_index=_value(r.get("instance_index")),
        detection_index=_value(r.get("detection_index")),
    )


def _mask_detection(r: Mapping[str, Any]):
    """A masks or validations row as an ``fo.Detection`` with its instance mask."""
    import fiftyone as fo

    return fo.Detection(
        label=_text(r.get("validated_object_name", r.get("object_name"))) or "(none)",
        bounding_box=_relative_box(r),
        mask=_row_mask(r),
        confidence=_confidence(r.get("confidence")),
        description=_text(r.get("description")),
        track_id=_value(r.get("track_id")),
        validation=_text(r.get("validation_action")),
        kept=_value(r.get("kept")),
        segmentation_error=_text(r.get("segmentation_error")),
        detection_index=_value(r.get("detection_index")),
    )


def _relative_box(r: Mapping[str, Any]) -> list[float]:
    """The row's relative ``[x, y, w, h]``, as FiftyOne's ``bounding_box``."""
    return [float(r["x"]), float(r["y"]), float(r["w"]), float(r["h"])]


def _row_mask(r: Mapping[str, Any]) -> np.ndarray | None:
    """The row's full-image RLE ``mask`` cut to its box (:func:`box_mask`), or None."""
    return box_mask(r.get("mask"), (r["x"], r["y"], r["w"], r["h"]))


def _label_match(r: Mapping[str, Any]):
    import fiftyone as fo

    skipped = bool(_value(r.get("skipped")))
    dataset_match = _text(r.get("dataset_match"))
    status = "skipped" if skipped else ("matched" if dataset_match is not None else "dropped")
    return fo.Detection(
        label=dataset_match or _text(r.get("best_target")) or _text(r.get("label")) or "(none)",
        bounding_box=_relative_box(r),
        confidence=_confidence(r.get("confidence")),
        status=status,
        object_name=_text(r.get("label")),
        description=_text(r.get("description")),
        target=_text(r.get("best_target")),
        score=_value(r.get("score")),
        mapping_rule_applied=_value(r.get("mapping_rule_applied")),
        detection_index=_value(r.get("detection_index")),
    )


def _evaluate(ds, predictions_field: str, eval_key: str, say) -> dict[str, Any]:
    """The paper's call; repeated without mAP when it raises (docs/protocol/evaluation.md §2.3: a prediction without
    confidence makes the PR sweep fail, and the paper then stores mAP = None)."""
    parameters = dict(EVAL_PARAMETERS)
    reason = None
    mAP: float | None
    mAR: float | None
    try:
        results = ds.evaluate_detections(predictions_field, eval_key=eval_key, **parameters)
        mAP, mAR = float(results.mAP()), float(results.mAR())
    except Exception as exc:  # noqa: BLE001 - the paper's node catches everything here too
        reason = f"{type(exc).__name__}: {exc}"
        say(f"{eval_key}: evaluating without mAP ({reason})")
        if ds.has_evaluation(eval_key):
            ds.delete_evaluation(eval_key)
        parameters["compute_mAP"] = False
        results = ds.evaluate_detections(predictions_field, eval_key=eval_key, **parameters)
        mAP = mAR = None
    numbers = results.metrics()
    return {
        "tp": int(ds.sum(f"{eval_key}_tp")),
        "fp": int(ds.sum(f"{eval_key}_fp")),
        "fn": int(ds.sum(f"{eval_key}_fn")),
        "precision": float(numbers["precision"]),
        "recall": float(numbers["recall"]),
        "fscore": float(numbers["fscore"]),
        "mAP": mAP,
        "mAR": mAR,
        "mAP_unavailable": reason,
    }


def _configure_app(ds, stored: Mapping[str, Mapping[str, Any]], prefixes: Mapping[str, str]) -> None:
    """One sidebar group per model (its stage fields and TP/FP/FN counts), the ground truth and every
    model's evaluated predictions shown by default, dynamic attributes filterable."""
    import fiftyone as fo

    ds.add_dynamic_sample_fields()
    schema = ds.get_field_schema()
    groups = fo.DatasetAppConfig.default_sidebar_groups(ds)
    model_groups, model_paths = [], set()
    for key in sorted(stored):
        prefix = prefixes[key]
        eval_key = stored[key].get("eval_key")
        paths = [f for f in model_fields(prefix) if f in schema]
        if eval_key:
            paths += [f for f in (f"{eval_key}_tp", f"{eval_key}_fp", f"{eval_key}_fn") if f in schema]
        model_paths.update(paths)
        model_groups.append(fo.SidebarGroupDocument(name=key, paths=paths, expanded=True))
    for group in groups:
        group.paths = [p for p in group.paths if p not in model_paths]
    at = next((i + 1 for i, g in enumerate(groups) if g.name == "labels"), len(groups))
    ds.app_config.sidebar_groups = groups[:at] + model_groups + groups[at:]
    active = [GT_FIELD] + [
        f"{prefixes[k]}_predictions" for k in sorted(stored) if f"{prefixes[k]}_predictions" in schema
    ]
    ds.app_config.active_fields = fo.ActiveFields(paths=active)
    if ds.app_config.color_scheme is None:  # a scheme saved from the App is kept
        # Masks of the ground truth and of several models on one image: see the image through them.
        ds.app_config.color_scheme = fo.ColorScheme(opacity=0.4)
    ds.save()
