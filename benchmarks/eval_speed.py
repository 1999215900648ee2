"""Speed of ``protocol.evaluation.evaluate`` against FiftyOne's ``evaluate_detections`` (the paper's
evaluation) on the same inputs, and whether the numbers are identical.

    .venv/bin/python benchmarks/eval_speed.py [--shared ../shared] [--fiftyone-images N] [--repeat 5]

Inputs:
* VLM-GIST (64 images, 1178 GT) with ~1200 seeded random predictions (jittered GT boxes, wrong
  labels, duplicates, false boxes, tied confidences);
* a synthetic COCO-sized set: 5,000 images, ~36k GT over 80 classes, a similar number of predictions.

The FiftyOne dataset is built once, outside the timed region; timed is ``evaluate_detections(...,
compute_mAP=True)`` plus ``mAP()``/``mAR()``/``metrics()``. Ours is timed as the median of ``--repeat``
runs of ``evaluate(gt, pred, coco_standard=False)`` (the same metrics), and once more with the
pycocotools columns (``coco_standard=True``) for information. ``--fiftyone-images N`` times FiftyOne on
the first N synthetic images only (and says so in the table). Prints a Markdown table and the machine.
FiftyOne runs with a throw-away database directory unless FIFTYONE_DATABASE_DIR is set.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METRICS = ("precision", "recall", "fscore", "tp", "fp", "fn", "mAP", "mAR")


def jittered_predictions(
    gt: pd.DataFrame, seed: int, keep: float = 0.8, false_fraction: float = 0.1
) -> pd.DataFrame:
    """Predictions from GT: ``keep`` of the objects, box jitter N(0, 0.1) of the size, 10% wrong labels,
    5% duplicates, ``false_fraction`` random false boxes, confidences rounded to 2 decimals (ties)."""
    rng = np.random.default_rng(seed)
    labels = gt["label"].unique()
    src = gt[rng.random(len(gt)) < keep]
    m = len(src)
    size = src[["w", "h", "w", "h"]].to_numpy()
    j = rng.normal(0, 0.1, (m, 4)) * size
    pred = pd.DataFrame(
        {
            "image_id": src["image_id"].to_numpy(),
            "label": np.where(rng.random(m) < 0.1, rng.choice(labels, m), src["label"].to_numpy()),
            "x": src["x"].to_numpy() + j[:, 0],
            "y": src["y"].to_numpy() + j[:, 1],
            "w": np.maximum(src["w"].to_numpy() + j[:, 2], 0.005),
            "h": np.maximum(src["h"].to_numpy() + j[:, 3], 0.005),
            "confidence": np.round(rng.random(m), 2),
        }
    )
    dup = pred.sample(frac=0.05, random_state=seed)
    k = int(len(gt) * false_fraction)
    false = pd.DataFrame(
        {
            "image_id": rng.choice(gt["image_id"].unique(), k),
            "label": rng.choice(labels, k),
            "x": rng.uniform(0, 0.8, k),
            "y": rng.uniform(0, 0.8, k),
            "w": rng.uniform(0.02, 0.2, k),
            "h": rng.uniform(0.02, 0.2, k),
            "confidence": np.round(rng.random(k), 2),
        }
    )
    out = pd.concat([pred, dup, false], ignore_index=True)
    return out.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def synthetic_coco(n_images: int = 5000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """COCO-sized GT: Poisson(7.3) objects per image (COCO val2017 averages ~7.3), 80 classes with a
    dominant "person" (~30%), boxes 2-50% of the image side."""
    rng = np.random.default_rng(seed)
    classes = np.array([f"class_{i:02d}" for i in range(80)])
    p = np.r_[0.3, np.full(79, 0.7 / 79)]
    counts = rng.poisson(7.3, n_images)
    image_ids = np.array([f"{i:012d}" for i in range(n_images)])
    n = int(counts.sum())
    w, h = rng.uniform(0.02, 0.5, n), rng.uniform(0.02, 0.5, n)
    gt = pd.DataFrame(
        {
            "image_id": np.repeat(image_ids, counts),
            "label": rng.choice(classes, n, p=p),
            "x": rng.uniform(0, 1, n) * (1 - w),
            "y": rng.uniform(0, 1, n) * (1 - h),
            "w": w,
            "h": h,
            "iscrowd": 0,
        }
    )
    images = pd.DataFrame({"image_id": image_ids, "path": [f"/synthetic/{i}.jpg" for i in image_ids]})
    return images, gt


def to_fiftyone(fo, images: pd.DataFrame, gt: pd.DataFrame, pred: pd.DataFrame):
    dataset = fo.Dataset()
    gt_by = dict(tuple(gt.groupby("image_id", sort=False)))
    pred_by = dict(tuple(pred.groupby("image_id", sort=False)))
    samples = []
    for image_id, path in zip(images["image_id"], images["path"]):
        s = fo.Sample(filepath=path)
        g, p = gt_by.get(image_id, gt.iloc[:0]), pred_by.get(image_id, pred.iloc[:0])
        s["ground_truth"] = fo.Detections(
            detections=[
                fo.Detection(label=r.label, bounding_box=[r.x, r.y, r.w, r.h], iscrowd=int(r.iscrowd))
                for r in g.itertuples()
            ]
        )
        s["predictions"] = fo.Detections(
            detections=[
                fo.Detection(label=r.label, bounding_box=[r.x, r.y, r.w, r.h], confidence=float(r.confidence))
                for r in p.itertuples()
            ]
        )
        samples.append(s)
    dataset.add_samples(samples)
    return dataset


def time_fiftyone(fo, images, gt, pred) -> tuple[float, dict, float]:
    t0 = time.perf_counter()
    dataset = to_fiftyone(fo, images, gt, pred)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = dataset.evaluate_detections(
        "predictions", gt_field="ground_truth", eval_key="eval", compute_mAP=True
    )
    numbers = dict(results.metrics(), mAP=results.mAP(), mAR=results.mAR())
    numbers.update(tp=dataset.sum("eval_tp"), fp=dataset.sum("eval_fp"), fn=dataset.sum("eval_fn"))
    elapsed = time.perf_counter() - t0
    dataset.delete()
    return elapsed, numbers, build


def time_ours(gt, pred, repeat: int) -> tuple[float, dict, float]:
    from vlm_gist_dagster.protocol.evaluation import evaluate

    evaluate(gt, pred, coco_standard=False)  # warm-up (imports, first-call allocations)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = evaluate(gt, pred, coco_standard=False)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    evaluate(gt, pred, coco_standard=True)
    with_coco = time.perf_counter() - t0
    return statistics.median(times), result.scalars(), with_coco


def identical(a: dict, b: dict) -> bool:
    return all(abs(float(a[k]) - float(b[k])) <= 1e-9 for k in METRICS)


def stop_fiftyone_database() -> None:
    """Stop our throw-away MongoDB before its directory is deleted (FiftyOne would otherwise stop it
    only after this process exits). Uses FiftyOne internals; on any failure the database is left to
    FiftyOne's own shutdown."""
    try:
        import fiftyone.core.odm.database as fod

        service = fod._db_service
        fod._disconnect()
        child = getattr(service, "child", None)
        if child is not None:
            service.stop()  # closes the service's stdin: it stops mongod once no client is left
            child.wait(timeout=60)
    except Exception as exc:  # noqa: BLE001 - cleanup only
        print(f"could not stop FiftyOne's database cleanly: {exc!r}", file=sys.stderr)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}, {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shared", default=str(REPO.parent / "shared"), help="the shared reference data directory"
    )
    parser.add_argument("--images", type=int, default=5000, help="synthetic images (default 5000)")
    parser.add_argument(
        "--fiftyone-images", type=int, default=None, help="time FiftyOne on this many synthetic images only"
    )
    parser.add_argument("--repeat", type=int, default=5, help="runs of ours per input (median)")
    args = parser.parse_args()

    tmp = None
    if "FIFTYONE_DATABASE_DIR" not in os.environ:
        tmp = tempfile.mkdtemp(prefix="eval_speed_")
        os.environ["FIFTYONE_DATABASE_DIR"] = str(Path(tmp) / "db")
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    import fiftyone as fo

    from vlm_gist_dagster.datasets import load_dataset

    fo.config.show_progress_bars = False
    try:
        rows = []
        ds = load_dataset(Path(args.shared) / "datasets" / "vlm_gist")
        pred = jittered_predictions(ds.ground_truth, seed=1, keep=0.85, false_fraction=0.1)
        cases = [
            (
                f"VLM-GIST: 64 images, {len(ds.ground_truth)} GT, {len(pred)} predictions",
                ds.images,
                ds.ground_truth,
                pred,
                None,
            )
        ]
        images, gt = synthetic_coco(args.images, seed=0)
        spred = jittered_predictions(gt, seed=2)
        subset = None
        if args.fiftyone_images and args.fiftyone_images < args.images:
            keep = set(images["image_id"].iloc[: args.fiftyone_images])
            subset = (
                images[images["image_id"].isin(keep)],
                gt[gt["image_id"].isin(keep)],
                spred[spred["image_id"].isin(keep)],
            )
        label = f"synthetic COCO-sized: {args.images} images, {len(gt)} GT, {len(spred)} predictions"
        cases.append((label, images, gt, spred, subset))

        for label, images_, gt_, pred_, sub in cases:
            ours_t, ours_n, ours_coco_t = time_ours(gt_, pred_, args.repeat)
            if sub is None:
                fo_t, fo_n, build = time_fiftyone(fo, images_, gt_, pred_)
                rows.append(
                    (label, ours_t, ours_coco_t, fo_t, fo_t / ours_t, identical(ours_n, fo_n), build, "")
                )
            else:
                sub_ours_t, sub_ours_n, _ = time_ours(sub[1], sub[2], args.repeat)
                fo_t, fo_n, build = time_fiftyone(fo, *sub)
                note = f"FiftyOne timed on the first {len(sub[0])} images only ({len(sub[1])} GT); speed-up vs ours on the same subset ({sub_ours_t:.3f} s)"
                rows.append(
                    (
                        label,
                        ours_t,
                        ours_coco_t,
                        fo_t,
                        fo_t / sub_ours_t,
                        identical(sub_ours_n, fo_n),
                        build,
                        note,
                    )
                )
            print(f"done: {label}", file=sys.stderr, flush=True)
    finally:
        if tmp is not None:
            stop_fiftyone_database()
            shutil.rmtree(tmp, ignore_errors=True)

    print(
        "| input | ours (paper metrics) | ours + pycocotools columns | FiftyOne evaluate_detections (compute_mAP) | speed-up | numbers identical |"
    )
    print("|:--|--:|--:|--:|--:|:--|")
    for label, ours_t, ours_coco_t, fo_t, speedup, same, build, note in rows:
        print(
            f"| {label} | {ours_t:.3f} s | {ours_coco_t:.2f} s | {fo_t:.1f} s | {speedup:.0f}x | {'yes' if same else 'NO'} |"
        )
    print()
    for label, *_, build, note in rows:
        print(
            f"- {label}: building the FiftyOne dataset took {build:.1f} s (not timed).{' ' + note + '.' if note else ''}"
        )
    print(f"- Machine: {machine()}. Ours: median of {args.repeat} runs; FiftyOne: one run.")


if __name__ == "__main__":
    main()
