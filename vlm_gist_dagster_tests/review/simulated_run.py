"""A small simulated benchmark run for the review tests (and the browser tests): the given pairs on the
simulator, in this process, into an isolated :class:`~vlm_gist_dagster_tests.deployment.Deployment`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..deployment import Deployment, pair_keys, run_inputs, run_job


def simulated_deployment(root: Path, datasets: Sequence[str], models: Sequence[str]) -> Deployment:
    """Run every (dataset, model) pair of ``datasets`` × ``models`` through stages A-E on the running
    simulator (the ``simulator`` fixture) into a new deployment under ``root``; returns the deployment
    (its Parquet assets are what ``vlm-gist review`` reads)."""
    deployment = Deployment.create(root, models)
    instance = deployment.instance()
    try:
        defs = deployment.definitions()
        instance.add_dynamic_partitions("models", list(models))
        run_inputs(defs, instance, datasets)
        for key in pair_keys(models, datasets):
            run_job(defs, instance, "benchmark_pair_job", key)
    finally:
        instance.dispose()
    return deployment
