"""Model files → partition keys: the paper's 47 description files become 47 distinct, valid keys."""

import shutil

import pytest

from vlm_gist_dagster.model_registry import ModelRegistryError, discover_models, find_model, model_key_for
from vlm_gist_dagster.protocol.settings import load_model_settings


def test_paper_description_files_become_47_keys(tmp_path, reference_settings_dir):
    for path in (reference_settings_dir / "description").glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    models, problems = discover_models(tmp_path)
    assert problems == []
    assert len(models) == 47
    keys = {m.key for m in models}
    # the two stems with an upper-case letter are lower-cased, the paper's prefix dropped
    assert "qwen_3_vl_235b_a22b_none" in keys and "qwen_3_vl_235b_a22b_reason" in keys
    assert "gpt_5_high" in keys
    for model in models:
        assert load_model_settings(model.path).kind == "vlm"


def test_baseline_files_and_project_models_load(reference_settings_dir):
    assert (
        model_key_for(reference_settings_dir / "baseline" / "baseline_settings_florence_od.json")
        == "florence_od"
    )
    models, problems = discover_models()  # the project's settings/models
    assert problems == []
    assert {m.key for m in models} >= {"sim_strong", "sim_medium", "sim_weak"}


def test_bad_names_are_reported_without_hiding_good_files(tmp_path):
    (tmp_path / "good.json").write_text("{}")
    (tmp_path / "Bad Name.json").write_text("{}")
    (tmp_path / "description_settings_good.json").write_text("{}")
    models, problems = discover_models(tmp_path)
    assert [m.key for m in models] == ["good"]
    assert len(problems) == 2
    assert any("Bad Name.json" in p and "rename" in p for p in problems)
    # files are read in name order: description_settings_good.json claims "good" first
    assert any(
        p.startswith(str(tmp_path / "good.json")) and "already used by description_settings_good.json" in p
        for p in problems
    )
    with pytest.raises(ModelRegistryError, match="no settings file for model 'other'"):
        find_model("other", tmp_path)
