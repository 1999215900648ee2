"""A small simulated benchmark run for the review tests (and the browser tests): the given pairs on the
simulator, in this process, into an isolated :class:`~vlm_gist_dagster_tests.defs.conftest.Bench`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dagster as dg
from dagster._core.instance.ref import InstanceRef

from ..defs.conftest import Bench, pair_keys, run_inputs, run_job


def simulated_bench(root: Path, datasets: Sequence[str], models: Sequence[str]) -> Bench:
    """Run every (dataset, model) pair of ``datasets`` × ``models`` through stages A-E on the running
    simulator (the ``simulator`` fixture) into a new bench under ``root``; returns the bench (its Parquet
    assets are what ``vlm-gist review`` reads)."""
    bench = Bench.create(root, models)
    with bench.activated():
        instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(bench.home)))
        try:
            defs = bench.definitions()
            instance.add_dynamic_partitions("models", list(models))
            run_inputs(defs, instance, datasets)
            for key in pair_keys(models, datasets):
                run_job(defs, instance, "benchmark_pair_job", key)
        finally:
            instance.dispose()
    return bench
