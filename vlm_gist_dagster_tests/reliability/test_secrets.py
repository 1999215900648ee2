"""Secrets: with canary keys in every key variable the pipeline reads (``VLM_GIST_SIM_API_KEY`` for the
simulated models, ``OPENAI_API_KEY`` for the label-matching LLM and embeddings, ``NIMBRO_VISION_API_KEY``
for the vision servers), a whole (dataset, model) pair and the leaderboard run through Dagster; then no
file under the deployment (Parquet, response / definitions / embedding caches, leaderboard files, the
Dagster instance's SQLite run and event storage, compute logs), no captured log line or console output,
no Dagster event and no error message contains a canary. A second run against a server that rejects the
key (HTTP 401) fails, and its error names the variable, not the key.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
from pathlib import Path

import dagster as dg
import pytest

from vlm_gist_dagster.defs.partitions import pair_key
from vlm_gist_dagster.runner import patched_environ, simulator_environment
from vlm_gist_dagster.sim import SERVER_NAMES, start_simulator

from ..deployment import TEST_CONCURRENCY, Deployment, run_job

CANARIES = {
    "VLM_GIST_SIM_API_KEY": "sk-canary-sim-5d1f0c7e9b2a4f38",
    "OPENAI_API_KEY": "sk-canary-openai-8e4b2c6a0f1d7395",
    "NIMBRO_VISION_API_KEY": "canary-vision-3a9c5e7b1d0f2846",
}


def forms(secret: str) -> list[bytes]:
    """The canary as it could be stored: raw UTF-8, and base64 at each of the three byte alignments
    (e.g. inside a basic-auth header or a serialised blob): the middle of the encoding, whose characters
    depend on the canary's bytes only."""
    raw = secret.encode()
    return [raw, *(base64.b64encode(b"\0" * shift + raw)[4:-4] for shift in range(3))]


def leaks(data: bytes | str) -> list[str]:
    blob = data.encode("utf-8", "replace") if isinstance(data, str) else data
    return [name for name, secret in CANARIES.items() if any(f in blob for f in forms(secret))]


def run_pair(deployment: Deployment, sim, *, whole: bool) -> tuple[dg.ExecuteInProcessResult, list]:
    """The pair (and with ``whole`` the settings and the leaderboard) on ``deployment`` with the canary
    keys; returns the pair run's result and every event of the deployment's instance."""
    deployment.write_model("canary", "rel/canary")
    with patched_environ({**simulator_environment(sim), **CANARIES}):
        instance = deployment.instance()
        try:
            defs = deployment.definitions()
            instance.add_dynamic_partitions("models", ["canary"])
            run_job(defs, instance, "datasets_job", "coco")
            if whole:
                run_job(defs, instance, "settings_job")
            result = defs.resolve_job_def("benchmark_pair_job").execute_in_process(
                partition_key=str(pair_key("coco", "canary")),
                instance=instance,
                raise_on_error=False,
                asset_selection=None if whole else [dg.AssetKey("descriptions")],
            )
            if whole:
                run_job(defs, instance, "leaderboard_job")
            return result, [entry for r in instance.get_runs() for entry in instance.all_logs(r.run_id)]
        finally:
            instance.dispose()


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, coco_dataset):
    root = tmp_path_factory.mktemp("secrets")
    ports = {name: 0 for name in SERVER_NAMES}
    sim = start_simulator({"coco": coco_dataset}, ports=ports, seed=0)
    # Transport faults make the client log its retries (with the provider's message) as warnings.
    sim.set_controls(
        "chat", model="rel/canary", latency_mean_s=0.0, faults={"rate_limit": 0.1, "server_error": 0.05}
    )
    rejecting = start_simulator({"coco": coco_dataset}, ports=ports, seed=0, chat_api_key="the-right-key")
    keep, root_logger = Keep(), logging.getLogger()
    old_level = root_logger.level
    root_logger.addHandler(keep)
    root_logger.setLevel(logging.DEBUG)
    console = io.StringIO()  # Dagster's console logger and anything printed
    try:
        with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
            ok, events = run_pair(Deployment.create(root / "deployment"), sim, whole=True)
            failed, failed_events = run_pair(Deployment.create(root / "failing"), rejecting, whole=False)
    finally:
        root_logger.removeHandler(keep)
        root_logger.setLevel(old_level)
        sim.stop()
        rejecting.stop()
    assert ok.success, "the pair run with the canary keys failed"
    yield (
        root,
        Deployment(root / "deployment"),
        events + failed_events,
        failed,
        keep.records,
        console.getvalue(),
        rejecting.request_log.snapshot(),
    )


def test_the_run_really_used_the_keys_and_wrote_files(pipeline_run):
    _, deployment, _, result, records, console, _ = pipeline_run
    assert len(deployment.read("metrics", "coco", "canary")) == 1
    assert any((deployment.data_dir / "cache" / "responses").rglob("*.json"))
    assert any(deployment.home.rglob("*.db"))  # the SQLite run / event storage that is scanned below
    assert any(deployment.home.rglob("compute_logs/*.err"))  # the captured step output, scanned too
    assert not result.success
    assert any("transport retry" in r.getMessage() for r in records)  # the retries were logged
    assert "descriptions[canary]" in console  # the console log was captured


def test_no_file_contains_a_key(pipeline_run):
    root, *_ = pipeline_run
    scanned, found = 0, {}
    for path in Path(root).rglob("*"):
        if path.is_file():
            scanned += 1
            names = leaks(path.read_bytes())
            if names:
                found[str(path.relative_to(root))] = names
    assert scanned > 50 and found == {}


def test_no_event_log_line_or_error_contains_a_key(pipeline_run):
    _, _, events, _, records, console, _ = pipeline_run
    assert events and records and console
    for entry in events:
        assert leaks(entry.user_message or "") == []
        assert leaks(repr(entry.dagster_event)) == []
    for record in records:
        assert leaks(record.getMessage()) == [], record.name
    assert leaks(console) == []


def test_a_rejected_key_fails_naming_the_variable_not_the_key(pipeline_run):
    _, _, _, result, _, _, _ = pipeline_run
    failures = [e for e in result.all_events if e.is_step_failure]
    assert len(failures) == 1
    message = failures[0].event_specific_data.error.to_string()
    assert "401" in message and "VLM_GIST_SIM_API_KEY" in message
    assert leaks(message) == []


def test_a_rejected_key_is_not_retried(pipeline_run):
    """Counted where it costs: at the server. The step ran once (no retry by the asset's retry policy)
    and sent no more than its requests in flight (TEST_CONCURRENCY), plus at most one per 401 that a freed
    slot let out before the cancellation landed; a client that retried 401s would send 1 + 6 times as
    many, a retried step as many again."""
    _, _, _, result, _, _, rejected = pipeline_run
    starts = [e for e in result.all_events if e.event_type_value == "STEP_START"]
    assert [e.step_key for e in starts] == ["descriptions"]
    assert not [e for e in result.all_events if e.event_type_value in ("STEP_UP_FOR_RETRY", "STEP_RESTARTED")]
    chat = [r for r in rejected if r.server == "chat"]
    assert chat and all(r.status == 401 for r in chat)
    assert len(chat) <= 2 * TEST_CONCURRENCY
