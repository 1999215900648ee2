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
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    # fsspec reuses one S3FileSystem per set of arguments, and the endpoint comes from the environment,
    # not the arguments: without this a second test would talk to the first test's (stopped) server.
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
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


# --- the response cache in the bucket ------------------------------------------------------------------


def aws_environment(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def s3_client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def bucket_keys(client, prefix: str = "") -> set[str]:
    return {
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        for o in page.get("Contents", [])
    }


def test_the_response_cache_keeps_one_object_per_answer_in_s3(s3_endpoint, caplog):
    """``ResponseCache("s3://…")``: a missing object is a miss, a stored answer is one object at
    ``<prefix>/<digest[:2]>/<digest>.json`` that another cache (another run worker) reads back, and an
    object that is not a cache entry is a miss with a warning. (moto's servers in one process share
    one store, so each test keeps to its own prefix.)"""
    import hashlib
    import json

    from vlm_gist_dagster.clients.cache import CacheKey, ResponseCache

    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    key = CacheKey.for_request("chat", "https://api.openai.com/v1/chat/completions", "gpt-5", {"a": 1})
    answer = {"kind": "json", "status": 200, "body_text": "{}"}
    with patched_environ(aws_environment(s3_endpoint)):
        writer = ResponseCache(f"s3://{BUCKET}/unit/responses")
        assert writer.remote
        assert writer.get(key) is None and writer.misses == 1
        writer.put(key, answer)
        # The digest, computed here from the key's documented material (sorted, compact JSON).
        material = {
            "kind": "chat",
            "service": "https://api.openai.com",
            "route": "/v1/chat/completions",
            "model": "gpt-5",
            "payload_sha256": hashlib.sha256(b'{"a":1}').hexdigest(),
            "subject": None,
            "attempt": None,
            "v": 2,
        }
        digest = hashlib.sha256(
            json.dumps(material, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        assert bucket_keys(client, "unit/") == {f"unit/responses/{digest[:2]}/{digest}.json"}
        reader = ResponseCache(f"s3://{BUCKET}/unit/responses")
        assert reader.get(key) == answer and reader.hits == 1
        assert ResponseCache(f"s3://{BUCKET}/unit/responses", mode="refresh").get(key) is None
        # Torn or foreign content is a miss, not an error.
        client.put_object(Bucket=BUCKET, Key=f"unit/responses/{digest[:2]}/{digest}.json", Body=b"{not json")
        assert reader.get(key) is None
        assert "unreadable" in caplog.text


def test_a_pair_run_replays_its_answers_from_the_bucket(tmp_path, coco_dir, s3_endpoint):
    """With ``VLM_GIST_RESPONSE_CACHE_DIR=s3://…`` a pair run files every answer (chat, vision,
    embeddings) in the bucket; a second run of the pair sends not one request to the simulator."""
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    models = tmp_path / "models"
    models.mkdir()
    files = [write_fast_model(models, "s3a")]
    coco = mini_coco(coco_dir, tmp_path / "coco_2", 2)
    local_data = tmp_path / "data"
    env = {
        **aws_environment(s3_endpoint),
        "VLM_GIST_RESPONSE_CACHE_DIR": f"s3://{BUCKET}/cache/responses",
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
        handle.set_controls("chat", model="test/s3a", faults=NO_FAULTS)
        handle.set_controls(
            "chat", model=None, latency_mean_s=0.0, latency_jitter_s=0.0, chunk_chars=4096, faults=NO_FAULTS
        )
        with patched_environ({**env, **simulator_environment(handle)}), dg.instance_for_test() as instance:
            from vlm_gist_dagster.definitions import build_definitions

            defs = build_definitions()

            def run(job: str, partition: str | None = None) -> dg.ExecuteInProcessResult:
                result = defs.resolve_job_def(job).execute_in_process(
                    partition_key=partition, instance=instance, raise_on_error=False
                )
                assert result.success, (
                    job,
                    partition,
                    [e.message for e in result.all_events if e.is_step_failure],
                )
                return result

            instance.add_dynamic_partitions("models", ["s3a"])
            run("datasets_job", "coco")
            run("settings_job")
            handle.request_log.clear()
            run("benchmark_pair_job", "coco|s3a")
            first = {server for server in (r.server for r in handle.request_log)}
            calls = len(handle.request_log)
            stored = bucket_keys(client, "cache/responses/")
            handle.request_log.clear()
            run("benchmark_pair_job", "coco|s3a")
            replayed = handle.request_log.snapshot()
    finally:
        handle.stop()
    # The first run asked the VLM, the detector and SAM2, and filed each answer in the bucket...
    assert {"chat", "mmgroundingdino", "sam2_realtime"} <= first, first
    assert calls > 0 and len(stored) > 0
    assert not (local_data / "cache" / "responses").exists()
    # ... and the second run replayed all of them: zero requests.
    assert replayed == [], [(r.server, r.path) for r in replayed[:10]]
