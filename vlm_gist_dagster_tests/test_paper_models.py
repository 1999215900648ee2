"""The paper's models, ready to run (issue 15 item 3).

``settings/paper/`` holds the paper's 47 description settings and 3 baseline settings as model files
(its files as published, plus a one-line header with the display name of its tables) and its two
validation settings; ``settings/prices.json`` prices them with the date each price was read. The README's
command ``vlm-gist run --no-simulator --models-dir settings/paper --models gpt_5_high`` runs exactly that
model's two pairs: checked here against independent stub servers (OpenAI API, MM-Grounding-DINO,
SAM2) on small subsets of both datasets, and without keys, where it stops before any request.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import dagster as dg
import pytest

from vlm_gist_dagster.cli import EXIT_USER_ERROR, main
from vlm_gist_dagster.clients.errors import ConfigurationError
from vlm_gist_dagster.clients.pricing import PriceTable, load_price_table
from vlm_gist_dagster.model_registry import discover_models, model_key_for, validation_settings_path
from vlm_gist_dagster.preflight import missing_keys
from vlm_gist_dagster.protocol.endpoints import resolve_endpoint
from vlm_gist_dagster.protocol.settings import load_model_settings, load_validation_settings
from vlm_gist_dagster.runner import patched_environ

from .stubs import StubServer, openai_route, vision_route

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "settings" / "paper"


def table_names(path: Path) -> set[str]:
    """The model names of a published table (the text before the first '|', rows below the rule)."""
    lines = path.read_text().splitlines()
    return {line.split("|")[0].strip() for line in lines[2:] if "|" in line}


@pytest.fixture(scope="module")
def paper_models():
    models, problems = discover_models(PAPER)
    assert problems == []
    return {m.key: (m, load_model_settings(m.path)) for m in models}


def test_every_paper_file_is_a_model_with_the_published_settings(paper_models, reference_settings_dir):
    description = sorted((reference_settings_dir / "description").glob("*.json"))
    baseline = sorted((reference_settings_dir / "baseline").glob("*.json"))
    assert len(description) == 47 and len(baseline) == 3
    assert set(paper_models) == {model_key_for(f) for f in description + baseline}
    for reference in description + baseline:
        model, settings = paper_models[model_key_for(reference)]
        assert model.path.name == reference.name
        shipped = json.loads(model.path.read_text())
        header = shipped.pop("model")
        assert shipped == json.loads(reference.read_text()), reference.name  # the paper's file, as published
        assert set(header) == {"kind", "display_name"}
        assert settings.kind == ("vlm" if reference.parent.name == "description" else "baseline")
        assert not settings.simulated and not settings.validation
    for reference in (reference_settings_dir / "validation").glob("*.json"):
        shipped = PAPER / "validation" / reference.name
        assert json.loads(shipped.read_text()) == json.loads(reference.read_text())
        assert load_validation_settings(shipped).vlm.model_name


def test_display_names_are_the_published_tables(paper_models, shared_dir):
    tables = shared_dir / "reference" / "published_tables"
    coco, vlm_gist = table_names(tables / "coco.txt"), table_names(tables / "custom.txt")
    vlms = {key: s.display_name for key, (_, s) in paper_models.items() if s.kind == "vlm"}
    assert len(set(vlms.values())) == 47
    for key, name in vlms.items():
        assert name in coco and name in vlm_gist, (key, name)
    assert vlms["gpt_5_high"] == "GPT-5 (high)" and vlms["gpt_5_none"] == "GPT-5"
    assert vlms["qwen_3_vl_235b_a22b_reason"] == "Qwen3-VL 235B A22B (think)"
    # The one Mistral file samples at T 0.15: the table's "(t=0.15)" row, not "(t=1.00)".
    mistral = paper_models["mistral_medium_3_1"][1]
    assert mistral.description.vlm_structured_description.model_temperature == 0.15
    assert vlms["mistral_medium_3_1"] == "Mistral Medium 3.1 (t=0.15)"
    # The tables' other rows are models without a published settings file (older runs).
    assert coco - set(vlms.values()) == {
        "Claude Sonnet 4",
        "Gemini 2.5 Flash (preview)",
        "Gemini 2.5 Pro (preview)",
        "GPT-4.1",
        "GPT-4.1 mini",
        "GPT-4.1 nano",
        "InternVL 3.5 20B A4B (think)",
        "Mistral Medium 3.1 (t=1.00)",
    }


def test_the_paper_folder_is_not_benchmarked_by_default():
    default = {m.key for m in discover_models(REPO / "settings" / "models")[0]}
    assert default == {
        "sim_strong",
        "sim_medium",
        "sim_weak",
        "sim_florence_od",
        "sim_strong_sam3",
        "sim_strong_boxes",
        "sim_strong_boxes_sam2",
        "sim_sam3_classes",
    }


def test_prices_for_the_paper_models_say_when_they_were_read(paper_models):
    table = load_price_table(env={})
    shipped = json.loads((REPO / "settings" / "prices.json").read_text())["models"]
    for name, entry in shipped.items():
        if not name.startswith("sim/"):
            assert re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", entry["read"]), name
            assert table.get(name).read == entry["read"]
    # Every paper model at a provider with one list price (OpenAI, Mistral AI) is priced, and so are
    # the label-matching LLM, the embeddings and both validation VLMs.
    for key, (_, settings) in paper_models.items():
        if settings.kind != "vlm":
            continue
        params = settings.description.vlm_structured_description
        if resolve_endpoint(params.api_endpoint).name in ("OpenAI", "Mistral AI"):
            assert params.model_name in table, key
    for name in ("gpt-4o-2024-11-20", "text-embedding-3-large", "google/gemini-2.5-flash"):
        assert name in table
    assert "gpt-5-mini-2025-08-07" in table
    # Self-hosted models have no price: an unknown cost, never 0.
    assert "ais/internvl3-5-38b" not in table
    with pytest.raises(ConfigurationError, match="read"):
        PriceTable.from_json({"models": {"m": {"input": 1, "output": 2, "read": "last autumn"}}}, "x.json")


def test_missing_keys_name_the_variable_and_who_needs_it(tmp_path):
    needed = missing_keys(["gpt_5_high"], ["coco", "vlm_gist"], env={}, models_directory=PAPER)
    assert needed == [
        "NIMBRO_VISION_API_KEY (gpt_5_high detections and masks)",
        "OPENAI_API_KEY (gpt_5_high descriptions, label matching on coco, label matching on vlm_gist, "
        "label-matching embeddings)",
    ]
    env = {"NIMBRO_VISION_API_KEY": "t", "OPENAI_API_KEY": "k"}
    assert missing_keys(["gpt_5_high"], ["coco"], env=env, models_directory=PAPER) == []
    assert missing_keys(["grok_4"], ["coco"], env=env, models_directory=PAPER) == [
        "OPENROUTER_API_KEY (grok_4 descriptions)"
    ]
    # A model validated with the paper's Gemini 2.5 Flash validator also needs OpenRouter's key.
    models = tmp_path / "models"
    (models / "validation").mkdir(parents=True)
    raw = json.loads((PAPER / "description_settings_gpt_5_high.json").read_text())
    raw["model"]["validation"] = "validation/validation_settings_gemini_2_5_flash.json"
    (models / "gpt_5_high_validated.json").write_text(json.dumps(raw))
    (models / "validation" / "validation_settings_gemini_2_5_flash.json").write_bytes(
        (PAPER / "validation" / "validation_settings_gemini_2_5_flash.json").read_bytes()
    )
    assert missing_keys(["gpt_5_high_validated"], ["coco"], env=env, models_directory=models) == [
        "OPENROUTER_API_KEY (gpt_5_high_validated validation)"
    ]


def test_a_model_header_selects_the_papers_validation_settings():
    model_file = PAPER / "description_settings_gpt_5_mini_none.json"
    chosen = validation_settings_path("validation/validation_settings_gpt_5_mini_none.json", model_file)
    assert chosen == PAPER / "validation" / "validation_settings_gpt_5_mini_none.json"
    assert load_validation_settings(chosen).vlm.model_name == "gpt-5-mini-2025-08-07"
    assert validation_settings_path(True, model_file) == REPO / "settings" / "validation" / "validation.json"
    assert validation_settings_path(False, model_file) is None


# -- the README command ---------------------------------------------------------------------------------


def small_vlm_gist(source: Path, target: Path, samples: int) -> Path:
    """A FiftyOne export holding the first ``samples`` samples of ``source`` (images linked, not copied)."""
    document = json.loads((source / "samples.json").read_text())
    document["samples"] = document["samples"][:samples]
    (target / "data").mkdir(parents=True)
    for sample in document["samples"]:
        name = Path(sample["filepath"]).name
        (target / "data" / name).symlink_to(source / "data" / name)
    (target / "samples.json").write_text(json.dumps(document))
    (target / "metadata.json").write_bytes((source / "metadata.json").read_bytes())
    return target


def small_coco(source: Path, target: Path, images: int) -> Path:
    document = json.loads((source / "labels.json").read_text())
    document["images"] = document["images"][:images]
    ids = {image["id"] for image in document["images"]}
    document["annotations"] = [a for a in document["annotations"] if a["image_id"] in ids]
    (target / "data").mkdir(parents=True)
    for image in document["images"]:
        (target / "data" / image["file_name"]).symlink_to(source / "data" / image["file_name"])
    (target / "labels.json").write_text(json.dumps(document))
    return target


@pytest.fixture()
def deployment(tmp_path, vlm_gist_dir, coco_dir):
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {
        "VLM_GIST_DATA_DIR": str(tmp_path / "data"),
        "VLM_GIST_ASSETS_DIR": str(tmp_path / "data" / "assets"),
        "VLM_GIST_DATASET_DIR_VLM_GIST": str(small_vlm_gist(vlm_gist_dir, tmp_path / "vlm_gist", 2)),
        "VLM_GIST_DATASET_DIR_COCO": str(small_coco(coco_dir, tmp_path / "coco", 3)),
        "VLM_GIST_CONCURRENCY": "8",
        "DAGSTER_HOME": str(home),
    }
    # Only what the README exports may reach the run; the session's own keys must not help.
    # (VLM_GIST_MODELS_DIR is patched so that what `--models-dir` sets is undone afterwards.)
    unset = {k: "" for k in ("OPENAI_API_KEY", "NIMBRO_VISION_API_KEY", "VLM_GIST_MODELS_DIR")}
    with patched_environ({**unset, **env}):
        yield tmp_path


def readme_command() -> list[str]:
    """The command as README.md writes it (the test fails when the README changes it)."""
    readme = (REPO / "README.md").read_text()
    wanted = "--models-dir settings/paper --models gpt_5_high"
    line = next(line for line in readme.splitlines() if wanted in line)
    command = line.split("#")[0].split()
    assert command[0].endswith("vlm-gist") and command[1] == "run", line
    return command[1:]


def test_the_readme_command_without_keys_stops_before_any_request(deployment, capsys):
    with StubServer(openai_route()) as chat, patched_environ({"VLM_GIST_ENDPOINT_URL_OPENAI": chat.url}):
        code = main(readme_command())
        assert chat.requests == []
    message = capsys.readouterr().err
    assert code == EXIT_USER_ERROR and "Traceback" not in message
    assert "nothing was run" in message and "OPENAI_API_KEY (gpt_5_high descriptions" in message
    assert "NIMBRO_VISION_API_KEY" in message
    assert dg.DagsterInstance.get().get_runs() == []


def test_the_readme_command_runs_exactly_that_models_pairs(deployment, capsys):
    with (
        StubServer(openai_route()) as chat,
        StubServer(vision_route("mmgroundingdino")) as gdino,
        StubServer(vision_route("sam2_realtime")) as sam2,
        patched_environ(
            {
                # What README's "Running real models" exports, with the servers moved to the stubs.
                "OPENAI_API_KEY": "stub-key",
                "NIMBRO_VISION_API_KEY": "stub-token",
                "VLM_GIST_ENDPOINT_URL_OPENAI": chat.url,
                "VLM_GIST_VISION_URL_MMGROUNDINGDINO": gdino.url,
                "VLM_GIST_VISION_URL_SAM2_REALTIME": sam2.url,
            }
        ),
    ):
        code = main(readme_command())
        output = capsys.readouterr().out
        completions = chat.seen("/v1/chat/completions")
    assert code == 0, output[-3000:]
    assert "2/2 (dataset, model) pairs done" in output
    instance = dg.DagsterInstance.get()
    assert instance.get_dynamic_partitions("models") == ["gpt_5_high"]
    runs = instance.get_runs(filters=dg.RunsFilter(job_name="benchmark_pair_job"))
    assert sorted(run.tags["dagster/partition"] for run in runs) == ["coco|gpt_5_high", "vlm_gist|gpt_5_high"]
    # gpt_5_high described every image (3 COCO + 2 VLM-GIST); the rest were label-matching definitions.
    models = [r.body["model"] for r in completions]
    assert models.count("gpt-5-2025-08-07") == 5
    assert set(models) == {"gpt-5-2025-08-07", "gpt-4o-2024-11-20"}
    assert len(gdino.seen("/infer")) == 5 and len(sam2.seen("/update")) == 5
    leaderboard = Path(os.environ["VLM_GIST_DATA_DIR"]) / "leaderboard"
    assert (leaderboard / "coco.txt").read_text().splitlines()[2].startswith("GPT-5 (high) ")
