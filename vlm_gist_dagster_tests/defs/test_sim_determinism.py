"""The simulator is deterministic whatever else runs (issue 14 item 8): a simulated answer depends only
on the seed, the model, the image and the attempt number of that model on that image.

* A model run alone (its own simulator, as ``vlm-gist run --models sim_medium`` starts one) and in a full
  run after other models gives identical tables, stage by stage. (Before, one per-image attempt counter
  per simulator process made the detector's draws depend on how many models had grounded the image
  before: sim_strong's COCO F1 was 0.920 in the full run and 0.909 alone.)
* Two identical model files give identical rows, although the second asks the simulator again (response
  cache bypassed) for the same images after the first's usable answers.

COCO only (the property does not depend on the dataset); the presets' faults stay on (429s, 500s,
invalid JSON), so retries and attempt numbers are exercised; latencies are 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dagster as dg
import pandas as pd

from vlm_gist_dagster.runner import patched_environ, simulator_environment
from vlm_gist_dagster.sim import SERVER_NAMES, SIM_MODEL_PRESETS, start_simulator

from ..deployment import NO_FAULTS, PAIR_ASSETS, SIM_SEED, Deployment, pair_keys, run_inputs, run_job

#: Columns that measure wall-clock time or say where a value came from: they differ between two runs.
TIMING = {"duration_s", "attempt_log_json", "from_cache", "time"}
#: Columns naming the model file (partition key): the only difference between two identical files.
IDENTITY = {"model"}


@contextlib.contextmanager
def simulator(vlm_gist_dataset, coco_dataset) -> Iterator[None]:
    """A fresh simulator (as each ``vlm-gist run`` starts one), the environment pointed at it, the cache
    bypassed so that every request reaches it."""
    handle = start_simulator(
        {"vlm_gist": vlm_gist_dataset, "coco": coco_dataset},
        ports={name: 0 for name in SERVER_NAMES},
        seed=SIM_SEED,
    )
    try:
        for model in SIM_MODEL_PRESETS:  # the presets' faults stay; no waiting
            handle.set_controls(
                "chat", model=model, latency_mean_s=0.0, latency_jitter_s=0.0, chunk_interval_s=0.0
            )
        handle.set_controls("chat", model=None, latency_mean_s=0.0, chunk_chars=4096, faults=NO_FAULTS)
        with patched_environ({**simulator_environment(handle), "VLM_GIST_CACHE_MODE": "bypass"}):
            yield
    finally:
        handle.stop()


def run_pairs(deployment: Deployment, models: list[str]) -> None:
    with dg.instance_for_test() as instance:
        defs = deployment.definitions()
        instance.add_dynamic_partitions("models", models)
        run_inputs(defs, instance, datasets=("coco",))
        for key in pair_keys(models, datasets=("coco",)):
            run_job(defs, instance, "benchmark_pair_job", key)


def table(deployment: Deployment, asset: str, model: str) -> pd.DataFrame:
    frame = deployment.read(asset, "coco", model)
    frame = frame.drop(columns=[c for c in frame.columns if c in TIMING | IDENTITY]).reset_index(drop=True)
    # error texts name the server, whose port differs between two simulators
    for column in ("error_message", "segmentation_error", "validation_error"):
        if column in frame:
            frame[column] = frame[column].str.replace(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", regex=True)
    return frame


def test_alone_and_in_a_full_run_and_identical_copies(tmp_path, vlm_gist_dataset, coco_dataset):
    full = Deployment.create(tmp_path / "full", ["sim_strong", "sim_weak", "sim_medium"])
    full.add_model("sim_medium", as_name="sim_medium_copy")
    with simulator(vlm_gist_dataset, coco_dataset):
        run_pairs(full, ["sim_strong", "sim_weak", "sim_medium", "sim_medium_copy"])
    alone = Deployment.create(tmp_path / "alone", ["sim_medium"])
    with simulator(vlm_gist_dataset, coco_dataset):
        run_pairs(alone, ["sim_medium"])

    for asset in PAIR_ASSETS:
        in_full = table(full, asset, "sim_medium")
        pd.testing.assert_frame_equal(
            table(alone, asset, "sim_medium"), in_full, obj=f"{asset}: alone vs full run"
        )
        pd.testing.assert_frame_equal(
            table(full, asset, "sim_medium_copy"), in_full, obj=f"{asset}: identical copy"
        )
    descriptions = full.read("descriptions", "coco", "sim_medium")
    # the presets' faults were met and retried (so attempt numbers mattered) and nothing failed
    assert descriptions["http_retries"].sum() + descriptions["failed_attempts_total"].sum() > 0
    metrics = full.read("metrics", "coco", "sim_medium").iloc[0]
    assert metrics["f1"] > 0.5
