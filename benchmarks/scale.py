"""Scale: a synthetic COCO-format dataset of up to 5,000 images through the whole pair (descriptions →
detections → masks → validations → label matches → metrics) and the leaderboard, with ``vlm-gist run``.

    .venv/bin/python benchmarks/scale.py [--images 1000 2500 5000] [--keep]

The dataset is generated into a temporary directory (never committed): 320 × 240 JPEGs, each a random
background with 2–8 filled rectangles of random colours, one COCO instance per rectangle (box and polygon
mask, a random class of the 80 COCO categories), ``labels.json`` in COCO format. It replaces the COCO
partition for the run (``VLM_GIST_DATASET_DIR_COCO``), as a user runs the benchmark on another dataset;
the built-in simulator is started by ``vlm-gist run`` with that dataset, so it recognises every image.
One generated zero-latency simulated model (``sim_strong``'s quality, content faults only), 8 chat
requests in flight (``--concurrency``; a user describing thousands of images raises the default), empty
caches.

Reported per size: wall time of ``vlm-gist run`` (process start to exit; the simulator, which lives in the
same process, loads and fingerprints the dataset too), time per step from the Dagster event log, seconds
per 1,000 images, and the peak RSS of the whole process (``wait4``; it includes the simulator's copy of
the dataset).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import DATASET_DIRS, base_environment, machine, markdown_table, write_models
from whole_benchmark import run_cli

WIDTH, HEIGHT = 320, 240
STEPS = ("dataset_tables", "descriptions", "detections", "masks", "validations", "label_matches", "metrics")


def generate(root: Path, count: int, seed: int = 0) -> tuple[int, float]:
    """Write ``count`` synthetic images and ``labels.json`` under ``root``; (instances, seconds)."""
    import cv2

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    categories = json.loads((DATASET_DIRS["coco"] / "labels.json").read_text())["categories"]
    (root / "data").mkdir(parents=True)
    images, annotations = [], []
    for index in range(count):
        image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
        image[:] = rng.integers(0, 256, 3)
        for _ in range(int(rng.integers(2, 9))):
            w, h = int(rng.integers(16, WIDTH // 2)), int(rng.integers(16, HEIGHT // 2))
            x, y = int(rng.integers(0, WIDTH - w)), int(rng.integers(0, HEIGHT - h))
            image[y : y + h, x : x + w] = rng.integers(0, 256, 3)
            category = categories[int(rng.integers(0, len(categories)))]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": category["id"],
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
                    "iscrowd": 0,
                }
            )
        name = f"{index + 1:012d}.jpg"
        cv2.imwrite(str(root / "data" / name), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        images.append({"id": index + 1, "file_name": name, "width": WIDTH, "height": HEIGHT})
    labels = {"images": images, "annotations": annotations, "categories": categories}
    (root / "labels.json").write_text(json.dumps(labels))
    return len(annotations), time.perf_counter() - start


def step_seconds(home: Path) -> dict[str, float]:
    """Seconds from STEP_START to STEP_SUCCESS per step, summed over the runs of the instance."""
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    out: dict[str, float] = {}
    try:
        for run in instance.get_runs():
            started: dict[str, float] = {}
            for entry in instance.all_logs(run.run_id):
                event = entry.dagster_event
                if event is None or entry.step_key is None:
                    continue
                if event.event_type_value == "STEP_START":
                    started[entry.step_key] = entry.timestamp
                elif event.event_type_value == "STEP_SUCCESS" and entry.step_key in started:
                    key = entry.step_key
                    out[key] = out.get(key, 0.0) + entry.timestamp - started[key]
    finally:
        instance.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, nargs="+", default=[1000, 2500, 5000])
    parser.add_argument(
        "--concurrency", type=int, default=8, help="chat requests in flight (VLM_GIST_CONCURRENCY)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories (printed)")
    args = parser.parse_args()

    rows, roots = [], []
    try:
        for count in args.images:
            root = Path(tempfile.mkdtemp(prefix=f"scale_{count}_"))
            roots.append(root)
            instances, generation_s = generate(root / "synthetic", count)
            write_models(root / "models", 1)
            env = base_environment(root, root / "models")
            env["VLM_GIST_DATASET_DIR_COCO"] = str(root / "synthetic")
            env["VLM_GIST_CONCURRENCY"] = str(args.concurrency)
            run = run_cli(f"{count} images", ["run", "--datasets", "coco"], env, root)
            if run.returncode != 0 or run.failed:
                raise SystemExit(f"{count} images: the run failed; see {root}")
            steps = step_seconds(root / "dagster_home")
            rows.append((count, instances, generation_s, run, steps))
            print(f"done: {count} images in {run.wall_s:.0f} s", file=sys.stderr, flush=True)
        print(
            "### Scale: synthetic COCO-format datasets, one zero-latency simulated model, `vlm-gist run` "
            f"(VLM_GIST_CONCURRENCY={args.concurrency})\n"
        )
        header = ["images", "instances", "wall time", "s per 1,000 images", *STEPS, "peak RSS"]
        table = []
        for count, instances, _, run, steps in rows:
            table.append(
                [
                    f"{count:,}",
                    f"{instances:,}",
                    f"{run.wall_s:.0f} s",
                    f"{1000 * run.wall_s / count:.1f}",
                    *(f"{steps.get(step, float('nan')):.1f} s" for step in STEPS),
                    f"{run.peak_rss_mib:.0f} MiB",
                ]
            )
        print(markdown_table(header, table))
        print(
            "\n- Generating the datasets (not timed above): "
            + ", ".join(f"{c:,} images {g:.0f} s" for c, _, g, _, _ in rows)
            + ". Steps: Dagster step time (start to success, Parquet IO included). Peak RSS: the whole "
            "`vlm-gist run` process, the in-process simulator included."
        )
        print(f"- Machine: {machine()}.")
    finally:
        for root in roots:
            if args.keep:
                print(f"- kept {root}", file=sys.stderr)
            else:
                shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
