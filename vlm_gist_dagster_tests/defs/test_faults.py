"""A run with injected faults finishes with exact Fail / Ret. (docs/protocol/evaluation.md §2.10, gotcha 16).

The simulator decides one fault per request from a hash of (seed, server, model, image, attempt), so the
fault plan is fixed by the seed; the request log then says, per image, what the model answered to every
request. Fail and Ret. are computed from that log by hand, with the paper's rules:

* a 429 / 500 is a transport failure: retried inside the attempt, never an attempt of its own;
* a 200 whose fault is ``invalid_json`` (prose, no JSON) or ``finish_content_filter`` (empty content) is a
  failed attempt; any other 200 is a valid description (recall 1 and one invented object per image here,
  so every image has at least one object and an unfaulted answer always validates);
* up to 1 + retry = 4 attempts; Ret. of an image = its failed attempts that were followed by a retry
  (``min(failed, 3)``: a completely failed image contributes 3), Fail = fraction of images without a
  valid description after the 4 attempts. Both are means over the dataset's images.
"""

from __future__ import annotations

from collections import defaultdict

import dagster as dg
import pytest

from vlm_gist_dagster.defs.partitions import pair_key

from ..deployment import NO_FAULTS, Deployment, run_inputs, run_job

MODEL_NAME = "sim/strong"  # what settings/models/sim_strong.json asks for
CONTENT_FAULTS = {"invalid_json", "finish_content_filter"}
TRANSPORT_STATUSES = {429, 500}
RETRY = 3  # "retry" of the shipped model files


@pytest.fixture()
def faulty_model(simulator):
    simulator.set_controls(
        "chat",
        model=MODEL_NAME,
        seed=11,
        recall=1.0,
        hallucinations=1.0,
        faults={
            **NO_FAULTS,
            # per request: 15 % transport failures, 60 % failed attempts, 25 % valid answers, so each
            # image fails an attempt with probability 0.6 / 0.85: ~1/4 of the 32 images fail all four
            # attempts and ~2/7 succeed at once, whatever the seed; 7 transport failures in a row (which
            # would end the batch) have probability 0.15^7
            "rate_limit": 0.10,
            "server_error": 0.05,
            "invalid_json": 0.45,
            "finish_content_filter": 0.15,
            "retry_after_s": 0,
        },
    )
    simulator.request_log.clear()
    yield simulator
    simulator.set_controls("chat", model=MODEL_NAME, faults={**NO_FAULTS, "retry_after_s": 1})


def expected_from_log(records, images: list[str]) -> dict[str, dict[str, int]]:
    """Per image: content attempts, failed attempts, transport failures and whether it failed."""
    by_image = defaultdict(list)
    for r in records:
        by_image[r.image_key.split("/")[-1]].append(r)
    out = {}
    for image in images:
        requests = sorted(by_image[image], key=lambda r: r.attempt)
        assert [r.attempt for r in requests] == list(range(len(requests)))  # nothing lost in the log
        transport = [r for r in requests if r.status in TRANSPORT_STATUSES]
        content = [r for r in requests if r.status == 200]
        assert len(transport) + len(content) == len(requests), [(r.status, r.fault) for r in requests]
        failed = 0
        for record in content:
            if record.fault not in CONTENT_FAULTS:
                break
            failed += 1
        # the client stops at the first valid answer, or after 1 + RETRY failed attempts
        assert len(content) == (failed + 1 if failed < RETRY + 1 else RETRY + 1), image
        out[image] = {
            "attempts": len(content),
            "failed": failed,
            "ret": min(failed, RETRY),
            "fail": int(failed == RETRY + 1),
            "transport": len(transport),
        }
    return out


def test_fail_and_ret_are_exact_under_content_and_transport_faults(simulator, faulty_model, tmp_path):
    deployment = Deployment.create(tmp_path / "deployment", ["sim_strong"])
    key = str(pair_key("coco", "sim_strong"))
    with dg.instance_for_test() as instance:
        defs = deployment.definitions()
        instance.add_dynamic_partitions("models", ["sim_strong"])
        run_inputs(defs, instance, ["coco"])
        run_job(defs, instance, "benchmark_pair_job", key)

        images = list(deployment.read("dataset_images", "coco")["image_id"])
        chat = simulator.request_log.filter(server="chat", model=MODEL_NAME)
        assert chat and all(r.path == "/v1/chat/completions" for r in chat)
        expected = expected_from_log(chat, images)
        n = len(images)
        fail = sum(e["fail"] for e in expected.values()) / n
        ret = sum(e["ret"] for e in expected.values()) / n

        # the plan exercises every case: first-try successes, retried successes, completely failed
        # images, and transport failures (which must not count)
        failed_counts = [e["failed"] for e in expected.values()]
        assert 0 in failed_counts and any(0 < f <= RETRY for f in failed_counts)
        assert RETRY + 1 in failed_counts
        assert sum(e["transport"] for e in expected.values()) >= 3
        statuses = {r.status for r in chat}
        assert {429, 500} <= statuses

        metrics = deployment.read("metrics", "coco", "sim_strong").iloc[0]
        assert metrics["fail"] == pytest.approx(fail, abs=1e-12)
        assert metrics["ret"] == pytest.approx(ret, abs=1e-12)

        descriptions = deployment.read("descriptions", "coco", "sim_strong").set_index("image_id")
        for image, e in expected.items():
            row = descriptions.loc[image]
            assert row["attempts"] == e["attempts"], image
            assert row["failed_attempts"] == e["ret"], image
            assert row["failed_attempts_total"] == e["failed"], image
            assert bool(row["success"]) == (not e["fail"]), image
            assert row["http_retries"] == e["transport"], image

        # the materialisation metadata and the leaderboard agree
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("metrics"), asset_partitions=[key]), limit=1
        ).records
        meta = records[0].asset_materialization.metadata
        assert meta["fail"].value == pytest.approx(fail, abs=1e-12)
        assert meta["ret"].value == pytest.approx(ret, abs=1e-12)
