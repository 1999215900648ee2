"""The local Dagster instance (issue 12, item 6): ``vlm-gist run`` / ``vlm-gist dev`` (``make run`` /
``make dev``) write ``$DAGSTER_HOME/dagster.yaml`` with telemetry off when it is missing, so Dagster
neither prints "No dagster instance configuration file ... found" on every command nor its telemetry
banner; an existing file is left alone; and a normal run prints no BetaWarning / SupersessionWarning."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from vlm_gist_dagster.runner import INSTANCE_YAML, default_instance, ensure_instance_yaml, patched_environ

from .test_cli_errors import mini_coco, write_model

REPO = Path(__file__).resolve().parents[1]
VLM_GIST = Path(sys.executable).with_name("vlm-gist")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_default_instance_writes_a_config_with_telemetry_off(tmp_path):
    home = tmp_path / "dagster_home"
    records = _Records()
    logging.getLogger("dagster").addHandler(records)
    try:
        with patched_environ({"DAGSTER_HOME": str(home)}):
            instance = default_instance()
            try:
                assert instance.telemetry_enabled is False
            finally:
                instance.dispose()
    finally:
        logging.getLogger("dagster").removeHandler(records)
    assert (home / "dagster.yaml").read_text() == INSTANCE_YAML
    assert not [m for m in records.messages if "No dagster instance configuration file" in m]


def test_an_existing_config_is_left_alone(tmp_path):
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: true\n")
    assert ensure_instance_yaml(tmp_path) is None
    assert (tmp_path / "dagster.yaml").read_text() == "telemetry:\n  enabled: true\n"
    other = tmp_path / "other"
    other.mkdir()
    (other / "dagster.yml").write_text("{}\n")
    assert ensure_instance_yaml(other) is None and not (other / "dagster.yaml").exists()


def test_a_run_prints_no_warnings_no_banner_no_missing_config(tmp_path, coco_dir):
    """`vlm-gist run` in its own process on a fresh DAGSTER_HOME (2 COCO images, one zero-latency model)."""
    models = tmp_path / "models"
    models.mkdir()
    write_model(models, "alpha")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "VLM_GIST_DATA_DIR": str(tmp_path / "data"),
        "VLM_GIST_MODELS_DIR": str(models),
        "VLM_GIST_DATASET_DIR_COCO": str(mini_coco(coco_dir, tmp_path / "coco_2")),
        "PYTHONWARNINGS": "default",  # show every warning once, as a user's interpreter would
    }
    env.pop("DAGSTER_DISABLE_TELEMETRY", None)
    result = subprocess.run(
        [str(VLM_GIST), "run", "--datasets", "coco"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "1/1 (dataset, model) pairs done" in result.stdout
    for noise in (
        "No dagster instance configuration file",
        "Telemetry:",
        "BetaWarning",
        "SupersessionWarning",
    ):
        assert noise not in output, f"{noise!r} in:\n{output[-3000:]}"
    assert "enabled: false" in (tmp_path / "dagster_home" / "dagster.yaml").read_text()
