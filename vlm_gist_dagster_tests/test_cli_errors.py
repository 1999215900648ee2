"""``vlm-gist run`` as a newcomer meets it (issue 12, items 2-4), through ``cli.main`` in this process:

* with no dataset and no network, one short message names both datasets, their variables and what to
  do, exit status 2, no traceback (the traceback only with ``--debug``);
* a model file with a JSON syntax error or an unknown key is reported as such (also in the final
  summary), the other models still run, and the exit status is non-zero; asking only for a bad model
  runs nothing and exits non-zero (not "0/0 pairs done" with status 0);
* a broken image in the COCO folder fails only COCO's pairs: the VLM-GIST pairs run, and the summary
  says what failed and why.

The datasets are small copies (2 VLM-GIST images, 2 COCO images) in temp directories; the model is a
zero-latency copy of ``sim_strong``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
import requests

from vlm_gist_dagster import cli
from vlm_gist_dagster.preflight import missing_keys
from vlm_gist_dagster.runner import UserFixableError, patched_environ, select_models

REPO = Path(__file__).resolve().parents[1]


def write_model(models_dir: Path, key: str) -> Path:
    raw = json.loads((REPO / "settings" / "models" / "sim_strong.json").read_text())
    raw["model"]["display_name"] = f"{key} (simulated)"
    raw["model"]["simulator"] = {"latency_mean_s": 0.0, "recall": 0.9}
    for block in ("vlm_scene_description", "vlm_structured_description", "vlm_decoupled_attribution"):
        raw[block]["model_name"] = f"test/{key}"
    path = models_dir / f"{key}.json"
    path.write_text(json.dumps(raw, indent=2))
    return path


def write_bad_models(models_dir: Path) -> None:
    good = (models_dir / "alpha.json").read_text()
    (models_dir / "bad_json.json").write_text(good.replace('"kind": "vlm",', '"kind": "vlm"', 1))
    raw = json.loads(good)
    raw["vlm_structured_description"]["model_tempreature"] = "1.0"
    (models_dir / "bad_key.json").write_text(json.dumps(raw))


def mini_vlm_gist(src: Path, dst: Path, samples: int = 2) -> Path:
    document = json.loads((src / "samples.json").read_text())
    document["samples"] = document["samples"][:samples]
    (dst / "data").mkdir(parents=True)
    for s in document["samples"]:
        shutil.copy(src / s["filepath"], dst / s["filepath"])
    shutil.copy(src / "metadata.json", dst / "metadata.json")
    (dst / "samples.json").write_text(json.dumps(document))
    return dst


def mini_coco(src: Path, dst: Path, images: int = 2) -> Path:
    document = json.loads((src / "labels.json").read_text())
    document["images"] = document["images"][:images]
    ids = {im["id"] for im in document["images"]}
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] in ids]
    (dst / "data").mkdir(parents=True)
    for im in document["images"]:
        shutil.copy(src / "data" / im["file_name"], dst / "data" / im["file_name"])
    (dst / "labels.json").write_text(json.dumps(document))
    return dst


@pytest.fixture()
def deployment(tmp_path, vlm_gist_dir, coco_dir):
    """A fresh checkout's view: own models folder, data dir, DAGSTER_HOME, small local dataset copies."""
    models = tmp_path / "models"
    models.mkdir()
    write_model(models, "alpha")
    env = {
        "VLM_GIST_DATA_DIR": str(tmp_path / "data"),
        "VLM_GIST_ASSETS_DIR": str(tmp_path / "data" / "assets"),
        "VLM_GIST_MODELS_DIR": str(models),
        "VLM_GIST_DATASET_DIR_VLM_GIST": str(mini_vlm_gist(vlm_gist_dir, tmp_path / "vlm_gist_2")),
        "VLM_GIST_DATASET_DIR_COCO": str(mini_coco(coco_dir, tmp_path / "coco_2")),
        "VLM_GIST_CONCURRENCY": "8",
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    with patched_environ(env):
        yield tmp_path


def test_every_missing_dataset_in_one_short_message(deployment, monkeypatch, capsys):
    """Neither dataset on disk, no network: both named at once with their variables, status 2."""
    settings = deployment / "settings"
    settings.mkdir()
    (settings / "datasets.json").write_text(
        json.dumps(
            {
                "vlm_gist": {
                    "path": str(deployment / "datasets" / "vlm_gist"),
                    "download": "vlm_gist_github",
                },
                "coco": {
                    "path": str(deployment / "datasets" / "coco_500"),
                    "download": "coco_2017_val_lowest_ids",
                    "max_samples": 500,
                },
            }
        )
    )
    monkeypatch.setenv("VLM_GIST_SETTINGS_DIR", str(settings))
    monkeypatch.delenv("VLM_GIST_DATASET_DIR_VLM_GIST")
    monkeypatch.delenv("VLM_GIST_DATASET_DIR_COCO")

    def no_network_httpx(self, request):
        raise httpx.ConnectError("[Errno -3] Temporary failure in name resolution", request=request)

    def no_network_requests(self, request, **kwargs):
        raise requests.ConnectionError(
            "HTTPConnectionPool(host='images.cocodataset.org', port=80): Max retries exceeded (Caused by "
            'NameResolutionError("<urllib3.connection.HTTPConnection object at 0x7f00>: Failed to resolve '
            "'images.cocodataset.org' ([Errno -3] Temporary failure in name resolution)\"))"
        )

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", no_network_httpx)
    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", no_network_requests)

    assert cli.main(["run"]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err[err.index("vlm-gist run:") :].strip().splitlines()
    assert len(message) <= 8, message
    text = "\n".join(message)
    assert "No dataset can be used (vlm_gist, coco)" in text
    assert "vlm_gist: not in" in text and "coco: not in" in text
    assert text.count("[Errno -3] Temporary failure in name resolution") == 2
    assert "export VLM_GIST_DATASET_DIR_VLM_GIST=" in text and "export VLM_GIST_DATASET_DIR_COCO=" in text
    assert "Connect to the internet" in text

    with pytest.raises(UserFixableError):  # --debug: the exception and its traceback
        cli.main(["--debug", "run"])
    with pytest.raises(UserFixableError):
        cli.main(["run", "--debug"])


def test_only_a_bad_model_requested_runs_nothing_and_fails(deployment, capsys):
    write_bad_models(deployment / "models")
    assert cli.main(["run", "--models", "bad_json"]) == cli.EXIT_USER_ERROR
    out, err = capsys.readouterr()
    assert "pairs done" not in out
    assert "No requested model can be run" in err
    assert "bad_json: bad_json.json: not valid JSON: Expecting ',' delimiter: line 4" in err
    assert "not meant for the simulator" not in out + err and "Traceback" not in err

    assert cli.main(["run", "--models", "gamma"]) == cli.EXIT_USER_ERROR
    assert "gamma: no model file for it in" in capsys.readouterr().err


def test_bad_model_files_are_reported_and_the_others_run(deployment, capsys):
    write_bad_models(deployment / "models")
    assert cli.main(["run", "--datasets", "coco"]) == 1
    out, err = capsys.readouterr()
    assert "1/1 (dataset, model) pairs done" in out  # alpha ran
    assert "not meant for the simulator" not in out + err
    summary = err[err.index("Not everything requested ran:") :]
    assert "model bad_json: bad_json.json: not valid JSON" in summary
    assert (
        "model bad_key: bad_key.json: unknown key 'vlm_structured_description.model_tempreature'" in summary
    )
    assert "Traceback" not in err


def test_real_model_without_its_key_stops_the_run_naming_the_key(
    tmp_path, monkeypatch, reference_settings_dir
):
    paper_file = sorted((reference_settings_dir / "description").glob("description_settings_*.json"))[0]
    raw = json.loads(paper_file.read_text())
    raw["vlm_structured_description"]["api_endpoint"] = "OpenRouter"
    (tmp_path / "real_model.json").write_text(json.dumps(raw))
    monkeypatch.setenv("VLM_GIST_MODELS_DIR", str(tmp_path))
    assert select_models(use_simulator=False, wanted=None).run == ["real_model"]
    # the key is checked for the whole run before anything starts (preflight), naming who needs it
    missing = missing_keys(["real_model"], ["coco"], env={}, models_directory=tmp_path)
    assert "OPENROUTER_API_KEY (real_model descriptions)" in missing
    assert not any("OPENROUTER" in line for line in missing_keys(
        ["real_model"], ["coco"], env={"OPENROUTER_API_KEY": "sk-or-test"}, models_directory=tmp_path
    ))  # fmt: skip
    # Under the simulator the real model is skipped when not asked for, and a problem when asked for.
    assert select_models(use_simulator=True, wanted=None).skipped == ["real_model"]
    problems = select_models(use_simulator=True, wanted=["real_model"]).problems
    assert "a real model" in problems["real_model"] and "--no-simulator" in problems["real_model"]


def test_a_broken_coco_image_fails_only_the_coco_pairs(deployment, capsys):
    coco = Path(deployment / "coco_2")
    broken = sorted((coco / "data").iterdir())[0]
    broken.write_bytes(b"this is not a JPEG")
    assert cli.main(["run"]) == 1
    out, err = capsys.readouterr()
    assert "1/1 (dataset, model) pairs done" in out  # vlm_gist|alpha ran; coco|alpha did not
    assert "vlm_gist|alpha: ok" in out
    assert "\nVLM-GIST, local copy vlm_gist_2: 2 images\n" in out  # the heading names the copy used
    summary = err[err.index("Not everything requested ran:") :]
    assert f"dataset coco: the simulator cannot load it: {broken}: not a readable image" in summary
    assert "(1 pair(s) not run)" in summary
    assert (deployment / "data" / "leaderboard" / "vlm_gist.txt").is_file()
    assert "Traceback" not in err
    # Only the broken dataset requested: nothing can run, one message, status 2.
    assert cli.main(["run", "--datasets", "coco"]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "vlm-gist run: No dataset can be used (coco):" in err and "not a readable image" in err


def test_a_bad_detection_settings_file_is_one_message(deployment, monkeypatch, capsys):
    settings = deployment / "settings"
    shutil.copytree(REPO / "settings", settings, ignore=shutil.ignore_patterns("models"))
    path = settings / "detection" / "detection.json"
    raw = json.loads(path.read_text())
    raw["over_detekt"] = 1.0
    path.write_text(json.dumps(raw))
    monkeypatch.setenv("VLM_GIST_SETTINGS_DIR", str(settings))
    assert cli.main(["run", "--datasets", "coco"]) == cli.EXIT_USER_ERROR
    out, err = capsys.readouterr()
    assert "vlm-gist run: The detection settings cannot be used: detection_settings: detection.json:" in err
    assert "over_detekt" in err and "Traceback" not in err
    assert "pairs done" not in out
