"""Assets on object storage (issue 19, item 4): with ``VLM_GIST_ASSETS_DIR=s3://bucket/prefix`` a pair run
writes and reads its Parquet files in the bucket, and the leaderboard reads every pair's metrics from it.

The bucket is served by moto in server mode on 127.0.0.1 (a real HTTP S3 endpoint; the IO manager talks
to it through universal_pathlib -> s3fs -> aiobotocore exactly as it would to AWS or MinIO), reached
through the standard ``AWS_ENDPOINT_URL`` variable: nothing in the project knows it is a test.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import boto3
import dagster as dg
import pandas as pd
import pytest

from vlm_gist_dagster.runner import patched_environ, simulator_environment
from vlm_gist_dagster.sim import FAULT_TYPES, SERVER_NAMES, controls_from_model_files, start_simulator

from ..deployment import run_job
from ..postgres.service import mini_coco, write_fast_model

BUCKET = "vlm-gist-test"
PREFIX = "bench/assets"
MODELS = ("s3a", "s3b")
NO_FAULTS = {name: 0.0 for name in FAULT_TYPES}
PAIR_ASSETS = (
    "descriptions",
    "detections",
    "detection_images",
    "masks",
    "validations",
    "label_matches",
    "metrics",
)


@pytest.fixture()
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def test_a_pair_run_and_the_leaderboard_keep_their_parquet_in_s3(tmp_path, coco_dir, s3_endpoint):
    aws = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_bucket(Bucket=BUCKET)
    models = tmp_path / "models"
    models.mkdir()
    files = [write_fast_model(models, m) for m in MODELS]
    coco = mini_coco(coco_dir, tmp_path / "coco_2", 2)
    local_data = tmp_path / "data"
    env = {
        **aws,
        "VLM_GIST_ASSETS_DIR": f"s3://{BUCKET}/{PREFIX}",
        "VLM_GIST_DATA_DIR": str(local_data),
        "VLM_GIST_MODELS_DIR": str(models),
        "VLM_GIST_DATASET_DIR_COCO": str(coco),
        "VLM_GIST_CONCURRENCY": "8",
    }
    handle = start_simulator(
        {"coco": coco},
        ports={n: 0 for n in SERVER_NAMES},
        seed=0,
        model_controls=controls_from_model_files(files),
    )
    try:
        for model in MODELS:
            handle.set_controls("chat", model=f"test/{model}", faults=NO_FAULTS)
        handle.set_controls(
            "chat", model=None, latency_mean_s=0.0, latency_jitter_s=0.0, chunk_chars=4096, faults=NO_FAULTS
        )
        with patched_environ({**env, **simulator_environment(handle)}), dg.instance_for_test() as instance:
            # The default resources, as a deployment builds them: the IO manager's base path comes from
            # VLM_GIST_ASSETS_DIR.
            from vlm_gist_dagster.definitions import build_definitions

            defs = build_definitions()
            instance.add_dynamic_partitions("models", list(MODELS))
            run_job(defs, instance, "datasets_job", "coco")
            run_job(defs, instance, "settings_job")
            for model in MODELS:
                run_job(defs, instance, "benchmark_pair_job", f"coco|{model}")
            run_job(defs, instance, "leaderboard_job")
            metadata = instance.get_latest_materialization_event(
                dg.AssetKey("metrics")
            ).asset_materialization.metadata
    finally:
        handle.stop()

    keys = {
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for o in page.get("Contents", [])
    }
    for model in MODELS:
        for asset in PAIR_ASSETS:
            assert f"{PREFIX}/{asset}/coco/{model}.parquet" in keys, (asset, model, sorted(keys))
    assert f"{PREFIX}/leaderboard.parquet" in keys
    assert f"{PREFIX}/dataset_images/coco.parquet" in keys
    # Nothing went to the local assets folder: the bucket is the only copy.
    assert not (local_data / "assets").exists() or not any((local_data / "assets").rglob("*.parquet"))

    def read(key: str) -> pd.DataFrame:
        return pd.read_parquet(io.BytesIO(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()))

    # The metrics rows were computed from Parquet read back from the bucket (descriptions -> ... -> metrics),
    # and the leaderboard lists exactly the pairs whose metrics are in the bucket.
    for model in MODELS:
        metrics = read(f"{PREFIX}/metrics/coco/{model}.parquet")
        assert len(metrics) >= 1 and set(metrics["model"].astype(str)) <= {model, f"{model} (simulated)"}
        descriptions = read(f"{PREFIX}/descriptions/coco/{model}.parquet")
        assert len(descriptions) == 2  # one row per image of the 2-image copy
    leaderboard = read(f"{PREFIX}/leaderboard.parquet")
    cells = set(leaderboard.astype(str).stack())
    assert {f"{m} (simulated)" for m in MODELS} <= cells or set(MODELS) <= cells, leaderboard.head()
    assert metadata is not None
