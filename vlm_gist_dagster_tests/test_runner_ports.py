"""``runner.simulator`` starts on free ports when a default port is taken between its check and the bind
(two runs starting at once), instead of failing the run."""

from __future__ import annotations

import socket

import httpx

from vlm_gist_dagster import runner, sim


def test_a_default_port_taken_after_the_check_falls_back_to_free_ports(monkeypatch, coco_dir, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setitem(sim.DEFAULT_PORTS, "chat", port)
        monkeypatch.setattr(runner, "_port_free", lambda _: True)  # the check said free; the bind will fail
        monkeypatch.setenv("VLM_GIST_MODELS_DIR", str(tmp_path))  # no model files: default controls
        lines: list[str] = []
        with runner.simulator({"coco": coco_dir}, log=lines.append) as handle:
            assert handle.chat_base_url != f"http://127.0.0.1:{port}"
            response = httpx.get(handle.models_url, headers={"Authorization": "Bearer x"}, timeout=10)
            assert response.status_code == 200
    assert any("starting on free ports instead" in line for line in lines)
