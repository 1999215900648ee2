"""The shipped simulated model files, per-model controls from model files, and ``vlm-gist sim``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from vlm_gist_dagster.protocol.settings import load_model_settings
from vlm_gist_dagster.sim import SIM_MODEL_PRESETS, ModelControls, SimControlsError, controls_from_model_files

from .conftest import AUTH

REPO = Path(__file__).resolve().parents[2]
SIM_MODEL_FILES = sorted((REPO / "settings" / "models").glob("sim_*.json"))


def test_shipped_sim_models_are_valid_simulated_model_files():
    assert [p.stem for p in SIM_MODEL_FILES] == [
        "sim_florence_od",
        "sim_medium",
        "sim_sam3_classes",
        "sim_strong",
        "sim_strong_boxes",
        "sim_strong_boxes_sam2",
        "sim_strong_sam3",
        "sim_weak",
    ]
    vlm_names, flavors, streams, modes = set(), set(), set(), set()
    for path in SIM_MODEL_FILES:
        model = load_model_settings(path)
        assert model.simulated is True
        assert "(simulated)" in model.display_name
        if model.kind == "vlm":
            block = model.description.vlm_structured_description
            assert block.endpoint.key_env_var == "VLM_GIST_SIM_API_KEY"
            assert block.endpoint.completions_url == "http://127.0.0.1:8900/v1/chat/completions"
            vlm_names.add(block.model_name)
            flavors.add(block.endpoint.api_flavor)
            streams.add(block.stream_completion)
            modes.add(model.grounding.mode)
    # three models with their own quality presets, exercising several flavours and both SSE and JSON
    assert sorted(vlm_names) == sorted(SIM_MODEL_PRESETS)
    assert len(flavors) == 3 and streams == {True, False}
    # every grounding mode has a row in `make run`'s leaderboard
    assert modes == {"mmgd_sam2", "sam3", "vlm_boxes", "vlm_boxes_sam2"}
    recalls = sorted(SIM_MODEL_PRESETS[name].recall for name in vlm_names)
    assert recalls[0] < recalls[1] < recalls[2]


def test_simulator_block_in_a_model_file_header(tmp_path):
    data = json.loads((REPO / "settings" / "models" / "sim_strong.json").read_text())
    data["model"]["simulator"] = {"recall": 0.4, "faults": {"rate_limit": 0.1}}
    for block in ("vlm_scene_description", "vlm_structured_description", "vlm_decoupled_attribution"):
        data[block]["model_name"] = "sim/custom"
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(data))
    controls = controls_from_model_files([path], base=ModelControls(hallucinations=0.0))
    assert list(controls) == ["sim/custom"]
    assert controls["sim/custom"].recall == 0.4
    assert controls["sim/custom"].hallucinations == 0.0
    assert controls["sim/custom"].faults.rate_limit == 0.1
    data["model"]["simulator"] = {"recall": 2.0}
    path.write_text(json.dumps(data))
    with pytest.raises(SimControlsError, match="custom.json.*model.simulator"):
        controls_from_model_files([path])
    # files without a simulator block (the shipped ones, real models) contribute nothing
    assert controls_from_model_files(SIM_MODEL_FILES) == {}


def test_cli_serves_both_apis_until_sigterm(vlm_gist_dir, coco_dir):
    env = dict(os.environ)
    env.update(
        {"VLM_GIST_DATASET_DIR_VLM_GIST": str(vlm_gist_dir), "VLM_GIST_DATASET_DIR_COCO": str(coco_dir)}
    )
    ports = [
        arg
        for name in ("chat", "mmgroundingdino", "sam2_realtime", "florence2", "kosmos2", "sam3")
        for arg in ("--port", f"{name}=0")
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlm_gist_dagster.cli", "sim", "--no-download", *ports],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops" in line:
                break
        text = "".join(lines)
        assert "serving vlm_gist, coco" in text
        urls = dict(re.findall(r"^\s+(\S+).*?(http://127\.0\.0\.1:\d+\S*)", text, flags=re.MULTILINE))
        assert set(urls) == {"chat", "mmgroundingdino", "sam2_realtime", "florence2", "kosmos2", "sam3"}
        assert urls["chat"].endswith("/v1")
        models = httpx.get(urls["chat"] + "/models", headers=AUTH).json()
        assert {"sim/strong", "sim/medium", "sim/weak"} <= {m["id"] for m in models["data"]}
        for family in ("mmgroundingdino", "sam2_realtime", "florence2", "kosmos2", "sam3"):
            assert httpx.get(urls[family] + "/health").json()["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert "simulator stopped" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
