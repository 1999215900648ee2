"""Settings models: every paper settings file loads as it is; bad files give errors naming file and key."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from vlm_gist_dagster.protocol.settings import (
    AUGMENTED_TARGETS,
    COCO_TARGETS,
    MAPPING_RULES,
    BaselineSettings,
    CompletionParams,
    DescriptionSettings,
    DetectionSettings,
    FlorencePrompt,
    LabelMatchingSettings,
    ModelSettings,
    SettingsError,
    ValidationSettings,
    detect_kind,
    load_description_settings,
    load_detection_settings,
    load_label_matching_settings,
    load_model_settings,
    load_settings,
    parse_model_settings,
    parse_settings,
)


def _files(settings_dir: Path, kind: str) -> list[Path]:
    return sorted((settings_dir / kind).glob("*.json"))


def _raw(settings_dir: Path, kind: str, stem: str) -> dict:
    return json.loads((settings_dir / kind / f"{stem}.json").read_text())


# ---------------------------------------------------------------------------------------------- loading


def test_every_reference_file_loads_with_its_kind(reference_settings_dir: Path) -> None:
    expected = {
        "description": (47, DescriptionSettings),
        "detection": (1, DetectionSettings),
        "label_matching": (2, LabelMatchingSettings),
        "validation": (2, ValidationSettings),
        "baseline": (3, BaselineSettings),
    }
    for kind, (count, model) in expected.items():
        files = _files(reference_settings_dir, kind)
        assert len(files) == count, kind
        for path in files:
            assert isinstance(load_settings(path), model), path.name


def test_all_47_description_files_load_as_model_settings(reference_settings_dir: Path) -> None:
    for path in _files(reference_settings_dir, "description"):
        model = load_model_settings(path)
        assert isinstance(model, ModelSettings)
        assert model.kind == "vlm" and not model.simulated
        assert model.name == path.stem
        assert model.display_name == path.stem.removeprefix("description_settings_")
        assert isinstance(model.description, DescriptionSettings)


def test_baseline_files_load_as_model_settings(reference_settings_dir: Path) -> None:
    kosmos = load_model_settings(reference_settings_dir / "baseline" / "baseline_settings_kosmos.json")
    assert (kosmos.kind, kosmos.display_name) == ("baseline", "kosmos")
    assert kosmos.baseline.model_prompt == "<grounding> Describe this image in detail:"
    assert kosmos.baseline.segmentation_track is False
    od = load_model_settings(reference_settings_dir / "baseline" / "baseline_settings_florence_od.json")
    assert od.baseline.model_prompt == FlorencePrompt(task_prompt="<OD>", prompt_args=None)
    with pytest.raises(TypeError):
        _ = od.description


def test_kind_is_detected_from_content_not_file_name(reference_settings_dir: Path, tmp_path: Path) -> None:
    misnamed = tmp_path / "description_settings_actually_detection.json"
    misnamed.write_text(
        (reference_settings_dir / "detection" / "detection_settings_mmgd_large.json").read_text()
    )
    assert isinstance(load_settings(misnamed), DetectionSettings)
    with pytest.raises(SettingsError, match="expected description settings"):
        load_description_settings(misnamed)
    assert detect_kind({"vlm": {}, "validation_prompt": "x"}) == "validation"


# ------------------------------------------------------------------------------- coerced values (by hand)


def test_gpt_5_nano_block_values(reference_settings_dir: Path) -> None:
    s = load_description_settings(
        reference_settings_dir / "description" / "description_settings_gpt_5_nano_none.json"
    )
    block = s.vlm_structured_description
    # the file holds "100000", "15.0"/"15.0"/"100.0", "False", "none" (docs/protocol/pipeline.md §1.9)
    assert block.model_max_tokens == 100000
    assert (block.timeout_chunk_first, block.timeout_chunk_next, block.timeout_completion) == (
        15.0,
        15.0,
        100.0,
    )
    assert block.stream_completion is False
    assert block.model_reasoning_effort == "none" and not block.reasoning_requested
    assert block.endpoint.api_flavor == "openai"
    assert block.completion_parsers == ()


def test_mistral_temperature(reference_settings_dir: Path) -> None:
    s = load_description_settings(
        reference_settings_dir / "description" / "description_settings_mistral_medium_3_1.json"
    )
    assert s.vlm_structured_description.model_temperature == 0.15
    assert s.vlm_structured_description.api_flavor == "mistral"
    assert s.vlm_structured_description.stream_completion is True


def test_internvl_pseudo_json_and_user_system_role(reference_settings_dir: Path) -> None:
    s = load_description_settings(
        reference_settings_dir / "description" / "description_settings_internvl_3_5_38b_reason.json"
    )
    assert s.use_json_mode is False
    assert s.vlm_structured_description.completion_parsers == ("json_decoder.py",)
    assert s.system_prompt_structured_description_role == "user"
    assert (s.vlm_structured_description.model_temperature, s.vlm_structured_description.model_top_p) == (
        0.6,
        0.8,
    )
    assert s.vlm_structured_description.endpoint.key_env_var == "AIS_API_KEY"


def test_gemini_flash_high_inherits_retry_and_role(reference_settings_dir: Path) -> None:
    raw = _raw(reference_settings_dir, "description", "description_settings_gemini_2_5_flash_high")
    assert "retry" not in raw and "system_prompt_structured_description_role" not in raw
    s = parse_settings(raw)
    assert s.retry == 3 and s.max_attempts == 4  # 1 + 3 retries (docs/protocol/pipeline.md gotcha 2)
    assert s.system_prompt_structured_description_role == "system"
    assert s.vlm_structured_description.model_reasoning_effort == "high"


def test_benchmark_normalisation_differs_from_module_default(reference_settings_dir: Path) -> None:
    s = load_description_settings(
        reference_settings_dir / "description" / "description_settings_gpt_5_high.json"
    )
    norm = s.dict_value_normalization
    assert (norm.remove_underscores, norm.remove_punctuation, norm.remove_common_specials) == (
        True,
        True,
        True,
    )
    assert (norm.remove_whitespaces, norm.lowercase) == (False, True)
    default = DescriptionSettings().dict_value_normalization
    assert (default.remove_punctuation, default.lowercase) == (False, False)


def test_module_defaults() -> None:
    s = DescriptionSettings()
    block = s.vlm_structured_description
    assert (block.api_endpoint, block.model_name, block.model_max_tokens) == (
        "OpenRouter",
        "google/gemini-2.5-flash",
        5000,
    )
    assert (block.timeout_chunk_first, block.timeout_chunk_next, block.timeout_completion) == (
        10.0,
        5.0,
        30.0,
    )
    assert s.png_max_pixels == 1920 * 1080 == 2073600
    assert s.retry == 3 and s.use_json_mode
    # the module dict prompt lacks the space after "person." (docs/protocol/pipeline.md §1.1)
    assert "must be person.The description" in s.dict_prompt
    assert [item.key for item in s.dict_items] == ["object_name", "description"]
    assert s.dict_items[0].invalid == ("", "none", "not applicable", "n/a")


def test_benchmark_dict_prompt_has_the_space(reference_settings_dir: Path) -> None:
    s = load_description_settings(
        reference_settings_dir / "description" / "description_settings_gpt_5_high.json"
    )
    assert "must be person. The description" in s.dict_prompt


def test_label_matching_defaults_equal_the_coco_file(reference_settings_dir: Path) -> None:
    coco = load_label_matching_settings(
        reference_settings_dir / "label_matching" / "label_matching_settings_coco.json"
    )
    raw = _raw(reference_settings_dir, "label_matching", "label_matching_settings_coco")
    assert list(coco.dataset_targets) == raw["dataset_targets"] == list(COCO_TARGETS)
    assert list(coco.augmented_targets) == raw["augmented_targets"] == list(AUGMENTED_TARGETS)
    assert coco.mapping_rules == raw["mapping_rules"] == MAPPING_RULES
    assert (len(COCO_TARGETS), len(AUGMENTED_TARGETS), len(MAPPING_RULES)) == (80, 277, 11)
    assert coco.llm.correction_attempts == 2 and coco.llm.probe_api_connection is True
    assert coco.llm.model_max_tokens == 2000 and coco.llm.model_name == "gpt-4o-2024-11-20"
    assert coco.fix_definition_prompt_swap is False
    default = LabelMatchingSettings()
    assert default.llm.correction_attempts == 0 and default.llm.timeout_chunk_next == 5.0
    assert default.definition_prompt_item == coco.definition_prompt_item
    assert default.definition_prompt_label == coco.definition_prompt_label


def test_label_matching_per_image(reference_settings_dir: Path) -> None:
    s = load_settings(reference_settings_dir / "label_matching" / "label_matching_settings_per_image.json")
    assert s.use_per_set_targets and s.dataset_targets == () and s.mapping_rules == {}
    with pytest.raises(SettingsError, match="must be empty"):
        parse_settings({"use_per_set_targets": True}, "label_matching")


def test_detection_module_default_vs_benchmark(reference_settings_dir: Path) -> None:
    bench = load_detection_settings(
        reference_settings_dir / "detection" / "detection_settings_mmgd_large.json"
    )
    assert bench.over_detect == 1.0 and DetectionSettings().over_detect == 0.0
    assert bench.png_max_pixels == 2073600
    node = bench.as_run_by_fiftyone_node()
    assert node.png_max_pixels is None and node.crop_masks and node.segmentation_model_id_secondary is None


def test_validation_files(reference_settings_dir: Path) -> None:
    gemini = load_settings(
        reference_settings_dir / "validation" / "validation_settings_gemini_2_5_flash.json"
    )
    assert gemini.vlm.model_max_tokens == 50 and gemini.vlm.normalize_text_completion is True
    assert (gemini.vlm.timeout_chunk_first, gemini.vlm.timeout_chunk_next) == (20.0, 20.0)
    gpt = load_settings(reference_settings_dir / "validation" / "validation_settings_gpt_5_mini_none.json")
    assert gpt.vlm.model_max_tokens == 100 and gpt.vlm.stream_completion is False
    assert gpt.levenshtein_threshold == 2 and gpt.invalid == "n/a"
    assert ValidationSettings().vlm.timeout_chunk_next == 10.0  # module default 15/10/30


def test_paper_dict_round_trip(reference_settings_dir: Path) -> None:
    raw = _raw(reference_settings_dir, "description", "description_settings_internvl_3_5_38b_reason")
    block = parse_settings(raw).vlm_structured_description
    assert block.to_paper_dict() == raw["vlm_structured_description"]


def test_partial_block_keeps_context_defaults() -> None:
    s = parse_settings({"llm": {"model_name": "gpt-4o-mini"}, "dataset_targets": ["cat"]}, "label_matching")
    assert s.llm.model_name == "gpt-4o-mini"
    assert s.llm.api_endpoint == "OpenAI" and s.llm.model_max_tokens == 2000


def test_typed_values_are_accepted_too() -> None:
    block = CompletionParams.model_validate(
        {
            "stream_completion": False,
            "model_max_tokens": 7,
            "completion_parsers": ["json_decoder.py"],
            "timeout_completion": "None",
        }
    )
    assert (block.stream_completion, block.model_max_tokens, block.completion_parsers) == (
        False,
        7,
        ("json_decoder.py",),
    )
    assert block.timeout_completion is None


# -------------------------------------------------------------------------------------------- errors


@pytest.fixture()
def gpt_5_high(reference_settings_dir: Path) -> dict:
    return _raw(reference_settings_dir, "description", "description_settings_gpt_5_high")


def _error(data: dict, tmp_path: Path, name: str = "description_settings_x.json") -> SettingsError:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    return info.value


def test_misspelled_block_key_names_file_and_key(gpt_5_high: dict, tmp_path: Path) -> None:
    data = copy.deepcopy(gpt_5_high)
    data["vlm_structured_description"]["model_tempreature"] = "1.0"
    error = _error(data, tmp_path)
    assert (
        str(error)
        == "description_settings_x.json: unknown key 'vlm_structured_description.model_tempreature'"
    )
    assert error.key == "vlm_structured_description.model_tempreature"
    assert error.file == tmp_path / "description_settings_x.json"


def test_misspelled_top_level_key(gpt_5_high: dict, tmp_path: Path) -> None:
    data = copy.deepcopy(gpt_5_high)
    data["png_max_pixel"] = 5
    assert str(_error(data, tmp_path)) == "description_settings_x.json: unknown key 'png_max_pixel'"


def test_wrong_types_name_the_key(gpt_5_high: dict, tmp_path: Path) -> None:
    data = copy.deepcopy(gpt_5_high)
    data["vlm_structured_description"]["model_max_tokens"] = "lots"
    error = _error(data, tmp_path)
    assert error.key == "vlm_structured_description.model_max_tokens"
    assert "description_settings_x.json: key 'vlm_structured_description.model_max_tokens'" in str(error)

    data = copy.deepcopy(gpt_5_high)
    data["use_json_mode"] = "true"  # top-level values are typed JSON in the paper's files: no coercion
    assert _error(data, tmp_path).key == "use_json_mode"

    data = copy.deepcopy(gpt_5_high)
    data["dict_items"][1]["type"] = "string"
    assert _error(data, tmp_path).key == "dict_items[1].type"

    data = copy.deepcopy(gpt_5_high)
    data["vlm_structured_description"]["stream_completion"] = "yes"
    assert "expected a boolean" in str(_error(data, tmp_path))


def test_plain_api_keys_are_refused(gpt_5_high: dict, tmp_path: Path) -> None:
    data = copy.deepcopy(gpt_5_high)
    data["vlm_structured_description"]["api_endpoint"] = {
        "name": "Mine",
        "api_flavor": "vllm",
        "completions_url": "http://localhost:1/v1/chat/completions",
        "key_type": "plain",
        "key_value": "sk-secret",
    }
    error = _error(data, tmp_path)
    assert error.key == "vlm_structured_description.api_endpoint"
    assert "environment variable" in str(error) and "sk-secret" not in str(error)


def test_unknown_endpoint_and_parser(gpt_5_high: dict, tmp_path: Path) -> None:
    data = copy.deepcopy(gpt_5_high)
    data["vlm_structured_description"]["api_endpoint"] = "OpenAl"
    assert "unknown endpoint name 'OpenAl'" in str(_error(data, tmp_path))
    data = copy.deepcopy(gpt_5_high)
    data["vlm_structured_description"]["completion_parsers"] = '["yaml_decoder.py"]'
    assert "unknown completion parser" in str(_error(data, tmp_path))


def test_paper_io_keys_are_refused_with_a_reason(gpt_5_high: dict, tmp_path: Path) -> None:
    data = copy.deepcopy(gpt_5_high)
    data["metadata_file"] = "descriptions.json"
    assert "manages storage itself" in str(_error(data, tmp_path))


def test_unusable_files(tmp_path: Path) -> None:
    assert "cannot tell the kind" in str(_error({"colour": "red"}, tmp_path))
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(SettingsError, match="broken.json: not valid JSON"):
        load_settings(bad)
    with pytest.raises(SettingsError, match="expected a JSON object"):
        _error_list = tmp_path / "list.json"
        _error_list.write_text("[]")
        load_settings(_error_list)
    both_null = {"scene_prompt": None, "dict_prompt": None}
    assert "cannot both be null" in str(_error(both_null, tmp_path))


# ------------------------------------------------------------------------------------------ model files


def test_model_header(gpt_5_high: dict, tmp_path: Path) -> None:
    data = {"model": {"kind": "vlm", "display_name": "GPT-5 (high)", "simulated": True}, **gpt_5_high}
    path = tmp_path / "gpt_5_high.json"
    path.write_text(json.dumps(data))
    model = load_settings(path)
    assert isinstance(model, ModelSettings)
    assert (model.name, model.display_name, model.simulated, model.kind) == (
        "gpt_5_high",
        "GPT-5 (high)",
        True,
        "vlm",
    )
    assert model.description.vlm_structured_description.model_name == "gpt-5-2025-08-07"


def test_model_header_errors(gpt_5_high: dict) -> None:
    with pytest.raises(SettingsError, match="model.kind"):
        parse_model_settings({"model": {"kind": "baseline"}, **gpt_5_high}, "m")
    with pytest.raises(SettingsError, match="unknown key 'model.colour'"):
        parse_model_settings({"model": {"colour": "red"}, **gpt_5_high}, "m")
    with pytest.raises(SettingsError, match="description or baseline"):
        parse_model_settings({"over_detect": 1.0}, "m")


def test_dict_items_rules(gpt_5_high: dict) -> None:
    items = gpt_5_high["dict_items"]
    extra = {
        "key": "size",
        "type": "str",
        "valid": None,
        "invalid": None,
        "requires": "material",
        "required": False,
    }
    with pytest.raises(SettingsError, match="requires 'material', which is not another dict item"):
        parse_settings({**gpt_5_high, "dict_items": items + [extra]})
    with pytest.raises(SettingsError, match="must hold strings"):
        parse_settings({**gpt_5_high, "dict_items": items + [{**extra, "requires": None, "invalid": [0]}]})
    with pytest.raises(SettingsError, match="two required items"):
        parse_settings({**gpt_5_high, "dict_items": items[:1]})
    with pytest.raises(SettingsError, match="duplicate keys"):
        parse_settings({**gpt_5_high, "dict_items": items + items[:1]})


def test_baseline_prompt_and_threshold_errors_name_the_key() -> None:
    with pytest.raises(SettingsError, match="key 'model_prompt': .*unknown key 'task_promt'"):
        parse_settings({"model_name": "florence2", "model_prompt": {"task_promt": "<OD>"}}, "baseline")
    with pytest.raises(SettingsError, match="kosmos2 takes a text model_prompt"):
        parse_settings({"model_name": "kosmos2", "model_prompt": {"task_prompt": "<OD>"}}, "baseline")
    with pytest.raises(SettingsError, match="key 'levenshtein_threshold': must be >= 0"):
        parse_settings({"dict_prompt": "x", "levenshtein_threshold": -1}, "description")
    # an int threshold stays an int (edit distance), a float stays a float (fraction of the length)
    assert parse_settings({"dict_prompt": "x", "levenshtein_threshold": 2}).levenshtein_threshold == 2
    assert isinstance(
        parse_settings({"dict_prompt": "x", "levenshtein_threshold": 0.3}).levenshtein_threshold, float
    )
