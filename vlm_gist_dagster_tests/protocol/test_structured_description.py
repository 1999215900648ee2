"""Stage A: parsing and validation of structured descriptions (docs/protocol/pipeline.md §1.5) on real-world-shaped
completions, the request of one attempt (§1.3), task relevancy (§1.7) and the retry bookkeeping (§1.6).
Expected values are worked out by hand from the rules (benchmark normalisation: underscores, punctuation
and specials removed, whitespace collapsed, lowercase)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlm_gist_dagster.protocol.completions import BadFinishReason, Completion, interpret_response
from vlm_gist_dagster.protocol.settings import DescriptionSettings, load_description_settings
from vlm_gist_dagster.protocol.structured_description import (
    Attempt,
    DescriptionAttempts,
    InvalidDescription,
    UnsupportedSettings,
    build_request,
    build_scene_request,
    evaluate_completion,
    parse,
    parse_with_report,
    rename_duplicates,
    require_supported,
    structured_description_prompt,
)

URI = "data:image/jpeg;base64,AAAA"


def _raw(settings_dir: Path, stem: str) -> dict:
    return json.loads((settings_dir / "description" / f"description_settings_{stem}.json").read_text())


@pytest.fixture(scope="module")
def bench(reference_settings_dir: Path) -> DescriptionSettings:
    """A benchmark file in JSON mode (OpenAI gpt-5 high)."""
    return load_description_settings(
        reference_settings_dir / "description" / "description_settings_gpt_5_high.json"
    )


@pytest.fixture(scope="module")
def bench_raw(reference_settings_dir: Path) -> dict:
    return _raw(reference_settings_dir, "gpt_5_high")


@pytest.fixture(scope="module")
def internvl(reference_settings_dir: Path) -> DescriptionSettings:
    """Pseudo-JSON mode: use_json_mode false + json_decoder.py, system prompt as user message."""
    return load_description_settings(
        reference_settings_dir / "description" / "description_settings_internvl_3_5_38b_reason.json"
    )


def _reason(text: str, settings: DescriptionSettings) -> str:
    with pytest.raises(InvalidDescription) as info:
        parse(text, settings)
    return info.value.reason


# ---------------------------------------------------------------------------- real-world completions


def test_fenced_json_with_prose(bench: DescriptionSettings) -> None:
    text = (
        "Here is the list of objects I can see:\n```json\n[\n"
        '  {"object_name": "Chair", "description": "A red, wooden chair."},\n'
        '  {"object_name": "Table", "description": "A round table."}\n'
        "]\n```\nLet me know if you need anything else!"
    )
    assert parse(text, bench) == [
        {"object_name": "chair", "description": "a red wooden chair"},
        {"object_name": "table", "description": "a round table"},
    ]


def test_dict_wrapping_the_list(bench: DescriptionSettings) -> None:
    result = parse_with_report('{"objects": [{"object_name": "cup", "description": "a white cup"}]}', bench)
    assert result.objects == [{"object_name": "cup", "description": "a white cup"}]
    assert result.report == []
    assert result.raw == {"objects": [{"object_name": "cup", "description": "a white cup"}]}


def test_dict_with_several_keys_uses_the_first(bench: DescriptionSettings) -> None:
    text = '{"objects": [{"object_name": "cup", "description": "a cup"}], "count": 1}'
    result = parse_with_report(text, bench)
    assert result.objects == [{"object_name": "cup", "description": "a cup"}]
    assert len(result.report) == 1 and "2 keys" in result.report[0]
    # first key holds a number: the dict cannot be interpreted
    assert _reason('{"count": 1, "objects": []}', bench) == "uninterpretable_dict"


def test_dict_wrapping_a_single_object(bench: DescriptionSettings) -> None:
    result = parse_with_report('{"object": {"object_name": "Lamp", "description": "A tall lamp."}}', bench)
    assert result.objects == [{"object_name": "lamp", "description": "a tall lamp"}]
    assert any("single list element" in line for line in result.report)
    # an unwrapped single object: its first key's value is a string, so the paper fails it
    assert _reason('{"object_name": "lamp", "description": "a lamp"}', bench) == "uninterpretable_dict"
    assert _reason("{}", bench) == "empty_dict"


def test_list_with_malformed_items(bench: DescriptionSettings) -> None:
    text = json.dumps(
        ["cup", {"object_name": "cup"}, {"object_name": "mug", "description": "a white mug"}, 5, None]
    )
    result = parse_with_report(text, bench)
    assert result.objects == [{"object_name": "mug", "description": "a white mug"}]
    # "cup" (str), 5 (int), None: not dicts; {"object_name": "cup"}: missing the required description
    assert sum("not a dict" in line for line in result.report) == 3
    assert any("Object 2/5" in line and "misses required" in line for line in result.report)


def test_key_variants_match_by_normalised_levenshtein(bench: DescriptionSettings) -> None:
    text = json.dumps(
        [
            {"Object Name": "Lamp", "DESCRIPTION": "A tall lamp"},
            {"objectName": "Sofa", "description:": "A grey sofa", "colour": "grey"},
            {"object-name": "Rug", "Description": "A striped rug"},
        ]
    )
    result = parse_with_report(text, bench)
    assert result.objects == [
        {"object_name": "lamp", "description": "a tall lamp"},
        {"object_name": "sofa", "description": "a grey sofa"},  # unmatched key "colour" dropped
        {"object_name": "rug", "description": "a striped rug"},
    ]
    assert any("'Object Name' matched to 'object_name'" in line for line in result.report)


def test_value_normalisation_punctuation_case_unicode(bench: DescriptionSettings) -> None:
    text = json.dumps(
        [
            # unidecode "Café" → "Cafe"; lowercase
            {"object_name": "Café Table", "description": "A small café table."},
            # apostrophe deleted, "-" → space: "T-shirt's" → "T shirts"
            {"object_name": "T-shirt's collar", "description": "A  blue\tcollar!"},
            # parentheses and "#" → spaces, whitespace collapsed and stripped
            {"object_name": "Person (standing)", "description": "A man, wearing a hat #2"},
            # underscores removed
            {"object_name": "coffee_mug", "description": "a_mug"},
        ],
        ensure_ascii=False,
    )
    assert parse(text, bench) == [
        {"object_name": "cafe table", "description": "a small cafe table"},
        {"object_name": "t shirts collar", "description": "a blue collar"},
        {"object_name": "person standing", "description": "a man wearing a hat 2"},
        {"object_name": "coffee mug", "description": "a mug"},
    ]


def test_module_default_normalisation_keeps_case_and_punctuation() -> None:
    # module defaults: specials and underscores removed, punctuation (.,:!?) and case kept
    text = json.dumps([{"object_name": "Coffee_Mug", "description": "A mug (white), 0.5 l!"}])
    assert parse(text, DescriptionSettings()) == [
        {"object_name": "Coffee Mug", "description": "A mug white , 0.5 l!"}
    ]


def test_duplicates_renamed_after_normalisation(bench: DescriptionSettings) -> None:
    text = json.dumps(
        [
            {"object_name": "chair", "description": "a chair"},
            {"object_name": "Table", "description": "a table"},
            {"object_name": "Chair.", "description": "a chair"},
            {"object_name": "chair", "description": "another chair"},
        ]
    )
    assert parse(text, bench) == [
        {"object_name": "chair 1", "description": "a chair"},
        {"object_name": "table", "description": "a table"},
        {"object_name": "chair 2", "description": "a chair"},  # descriptions are not de-duplicated
        {"object_name": "chair 3", "description": "another chair"},
    ]
    assert rename_duplicates(["a", "b", "a", "c", "b"]) == ["a 1", "b 1", "a 2", "c", "b 2"]


def test_invalid_values(bench: DescriptionSettings) -> None:
    text = json.dumps(
        [
            {"object_name": "N/A", "description": "a thing"},  # key("N/A") = "na" = key("n/a")
            {"object_name": "cup", "description": "none"},
            {"object_name": "Not applicable", "description": "x"},
            {"object_name": "bowl", "description": "?!"},  # key("?!") = "" = key("")
            {"object_name": None, "description": "a ghost"},  # str(None) = "None" → invalid
            {"object_name": 7, "description": "a seven"},  # cast to "7"
        ]
    )
    result = parse_with_report(text, bench)
    assert result.objects == [{"object_name": "7", "description": "a seven"}]
    assert any("cast to str" in line for line in result.report)


def test_invalid_after_normalisation_only(bench_raw: dict) -> None:
    # without Levenshtein normalisation "None." is 2 edits from "none"; normalised it is "none"
    settings = DescriptionSettings.model_validate({**bench_raw, "levenshtein_normalization": False})
    text = json.dumps(
        [{"object_name": "cup", "description": "None."}, {"object_name": "jar", "description": "A jar"}]
    )
    result = parse_with_report(text, settings)
    assert result.objects == [{"object_name": "jar", "description": "a jar"}]
    assert any("invalid after normalisation" in line for line in result.report)


def test_zero_valid_objects_fails(bench: DescriptionSettings) -> None:
    assert _reason('[{"object_name": "n/a", "description": "none"}, "text"]', bench) == "zero_valid_objects"
    assert _reason("[]", bench) == "zero_valid_objects"
    with pytest.raises(InvalidDescription) as info:
        parse('[{"name": "cup"}]', bench)
    assert info.value.message == "Found zero valid object dictionaries."
    assert info.value.report  # the per-object reasons are kept


def test_not_json_and_empty_text(bench: DescriptionSettings) -> None:
    assert _reason("I see a cup and a table.", bench) == "invalid_json"
    assert _reason("   ", bench) == "empty_text"
    assert _reason('"just a string"', bench) == "not_list_or_dict"


def test_json_only_in_reasoning_fails(bench: DescriptionSettings) -> None:
    completion = Completion(
        text="I have listed the objects.",
        reasoning='[{"object_name": "cup", "description": "a cup"}]',
    )
    with pytest.raises(InvalidDescription) as info:
        evaluate_completion(completion, bench)
    assert info.value.reason == "invalid_json"
    # with the JSON in the text, the same reasoning is simply ignored
    ok = evaluate_completion(
        Completion(text='[{"object_name": "cup", "description": "a cup"}]', reasoning="hmm"), bench
    )
    assert ok.objects == [{"object_name": "cup", "description": "a cup"}]


@pytest.mark.parametrize("finish", ["length", "content_filter"])
def test_finish_reason_failures_become_failed_attempts(finish: str, bench: DescriptionSettings) -> None:
    body = {"choices": [{"finish_reason": finish, "message": {"content": '[{"object_name": "cup", "descr'}}]}
    book = DescriptionAttempts.for_settings(bench)
    with pytest.raises(BadFinishReason) as info:
        interpret_response(body)
    book.record(Attempt.from_completion(info.value.completion, 12.5, error=info.value.reason))
    assert book.failed_attempts == 1 and not book.success and book.can_retry
    assert book.attempts[0].raw_text == '[{"object_name": "cup", "descr'  # the raw output is kept
    assert book.attempts[0].error == f"finish_reason:{finish}"


def test_pseudo_json_mode(internvl: DescriptionSettings) -> None:
    text = 'Sure! Here is the JSON:\n[{"object_name": "Robot arm", "description": "A white robot arm."}]'
    assert parse(text, internvl) == [{"object_name": "robot arm", "description": "a white robot arm"}]
    assert _reason("A robot arm and a table.", internvl) == "invalid_json"


# ----------------------------------------------------------------------------------------- item types


def _typed(bench_raw: dict, extra_items: list[dict], **overrides: object) -> DescriptionSettings:
    items = bench_raw["dict_items"] + extra_items
    return DescriptionSettings.model_validate({**bench_raw, "dict_items": items, **overrides})


def _obj(**extra: object) -> dict:
    return {"object_name": "cup", "description": "a cup", **extra}


def test_bool_int_float_need_exact_json_types(bench_raw: dict) -> None:
    settings = _typed(
        bench_raw,
        [
            {
                "key": "movable",
                "type": "bool",
                "valid": None,
                "invalid": None,
                "requires": None,
                "required": False,
            },
            {
                "key": "count",
                "type": "int",
                "valid": None,
                "invalid": None,
                "requires": None,
                "required": False,
            },
            {
                "key": "weight",
                "type": "float",
                "valid": None,
                "invalid": None,
                "requires": None,
                "required": False,
            },
        ],
    )
    text = json.dumps(
        [
            _obj(movable=True, count=2, weight=0.5),
            _obj(movable="true", count=2.0, weight=1),  # no casting: all three dropped
            _obj(movable=False, count=True, weight=1.0),  # a bool is an int in Python's isinstance (paper)
        ]
    )
    assert parse(text, settings) == [
        {"object_name": "cup 1", "description": "a cup", "movable": True, "count": 2, "weight": 0.5},
        {"object_name": "cup 2", "description": "a cup"},
        {"object_name": "cup 3", "description": "a cup", "movable": False, "count": True, "weight": 1.0},
    ]


def test_valid_and_invalid_lists_for_non_str_items(bench_raw: dict) -> None:
    settings = _typed(
        bench_raw,
        [
            {
                "key": "count",
                "type": "int",
                "valid": [1, 2, 3],
                "invalid": [2],
                "requires": None,
                "required": False,
            },
        ],
    )
    text = json.dumps([_obj(count=1), _obj(count=2), _obj(count=4)])
    assert [o.get("count") for o in parse(text, settings)] == [1, None, None]


def test_valid_list_for_str_items(bench_raw: dict) -> None:
    settings = _typed(
        bench_raw,
        [
            # valid only: the stored value is the normalised input
            {
                "key": "kind",
                "type": "str",
                "valid": ["Furniture", "Animal"],
                "invalid": None,
                "requires": None,
                "required": False,
            },
            # valid and invalid: the paper stores the matched valid entry itself
            {
                "key": "room",
                "type": "str",
                "valid": ["Living Room", "Kitchen"],
                "invalid": ["n/a"],
                "requires": None,
                "required": False,
            },
        ],
    )
    text = json.dumps([_obj(kind="FURNITURE!", room="living-room"), _obj(kind="Plant", room="garage")])
    result = parse(text, settings)
    assert result == [
        {"object_name": "cup 1", "description": "a cup", "kind": "furniture", "room": "Living Room"},
        {"object_name": "cup 2", "description": "a cup"},
    ]


def test_requires_chain_and_required(bench_raw: dict) -> None:
    settings = _typed(
        bench_raw,
        [
            {
                "key": "material",
                "type": "str",
                "valid": None,
                "invalid": ["none"],
                "requires": None,
                "required": False,
            },
            {
                "key": "size",
                "type": "str",
                "valid": None,
                "invalid": None,
                "requires": "material",
                "required": False,
            },
            {
                "key": "color",
                "type": "str",
                "valid": None,
                "invalid": None,
                "requires": "size",
                "required": False,
            },
            {
                "key": "shape",
                "type": "str",
                "valid": None,
                "invalid": None,
                "requires": "color",
                "required": False,
            },
        ],
    )
    text = json.dumps(
        [
            _obj(size="big", color="red", shape="round"),  # material missing: size, then color, then shape go
            _obj(size="big", color="red", shape="round", material="wood"),  # all kept
            _obj(color="red", material="glass"),  # size missing: color goes
            _obj(size="big", material="none"),  # material invalid → size goes
        ]
    )
    assert parse(text, settings) == [
        {"object_name": "cup 1", "description": "a cup"},
        {
            "object_name": "cup 2",
            "description": "a cup",
            "material": "wood",
            "size": "big",
            "color": "red",
            "shape": "round",
        },
        {"object_name": "cup 3", "description": "a cup", "material": "glass"},
        {"object_name": "cup 4", "description": "a cup"},
    ]


# ------------------------------------------------------------------------------------------ requests


def test_build_request_openrouter(reference_settings_dir: Path) -> None:
    settings = load_description_settings(
        reference_settings_dir / "description" / "description_settings_gemini_2_5_flash_high.json"
    )
    request = build_request(URI, settings)
    assert request.endpoint.completions_url == "https://openrouter.ai/api/v1/chat/completions"
    assert request.response_type == "json"
    assert request.messages == [
        {"role": "system", "content": settings.system_prompt_structured_description},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"detail": "high", "url": URI}},
                {"type": "text", "text": settings.dict_prompt},
            ],
        },
    ]
    assert request.payload["reasoning"] == {"effort": "high", "exclude": False}
    assert request.payload["stream"] is True and request.payload["stream_options"] == {"include_usage": True}


def test_build_request_vllm_user_system_role(internvl: DescriptionSettings) -> None:
    request = build_request(URI, internvl)
    assert request.endpoint.name == "AIS" and request.response_type == "text"
    assert request.messages == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": internvl.system_prompt_structured_description},
                {"type": "image_url", "image_url": {"url": URI}},
                {"type": "text", "text": internvl.dict_prompt},
            ],
        },
    ]
    assert request.payload["response_format"] == {"type": "text"}
    assert request.payload["chat_template_kwargs"] == {"enable_thinking": True}


def test_build_request_with_a_prepared_image(bench: DescriptionSettings, tmp_path: Path) -> None:
    from PIL import Image

    from vlm_gist_dagster.protocol.images import prepare_image

    path = tmp_path / "x.jpg"
    Image.new("RGB", (4, 4)).save(path)
    image = prepare_image(path)
    request = build_request(image, bench)
    assert request.messages[1]["content"][0]["image_url"]["url"] == image.data_uri
    assert "max_completion_tokens" in request.payload  # OpenAI flavour


# ------------------------------------------------------------------------------------- task relevancy


def test_direct_task_relevancy(bench_raw: dict) -> None:
    settings = DescriptionSettings.model_validate(
        {**bench_raw, "task": "set the table", "decoupled_task_relevancy": False}
    )
    prompt = structured_description_prompt(settings)
    assert prompt.startswith(bench_raw["dict_prompt"] + " In addition,")
    assert "task: 'set the table'For each list element" in prompt  # the paper's missing space, kept
    text = json.dumps(
        [
            {"object_name": "plate", "description": "a plate", "task_relevant": True},
            {"object_name": "sofa", "description": "a sofa", "Task Relevant": False},
            {"object_name": "cup", "description": "a cup", "task_relevant": "true"},  # str, not bool: dropped
            {"object_name": "lamp", "description": "a lamp"},  # required key missing
        ]
    )
    assert parse(text, settings) == [
        {"object_name": "plate", "description": "a plate", "task_relevant": True},
        {"object_name": "sofa", "description": "a sofa", "task_relevant": False},
    ]
    require_supported(settings)  # the direct variant is handled here


def test_decoupled_task_relevancy_is_refused(bench_raw: dict) -> None:
    settings = DescriptionSettings.model_validate({**bench_raw, "task": "drink coffee"})
    assert settings.decoupled_task_relevancy_active and not settings.direct_task_relevancy
    with pytest.raises(UnsupportedSettings, match="decoupled"):
        require_supported(settings)


def test_scene_description_request_and_guard(bench_raw: dict) -> None:
    settings = DescriptionSettings.model_validate({**bench_raw, "scene_prompt": "Describe the scene."})
    request = build_scene_request(URI, settings)
    assert request.response_type == "text" and request.payload["response_format"] == {"type": "text"}
    assert request.messages[-1]["content"][-1] == {"type": "text", "text": "Describe the scene."}
    with pytest.raises(UnsupportedSettings, match="scene_prompt"):
        require_supported(settings)


def test_shipped_settings_are_all_supported(reference_settings_dir: Path) -> None:
    paths = sorted((reference_settings_dir / "description").glob("*.json"))
    assert len(paths) == 47  # the paper's 47 description files: an empty folder must not pass
    for path in paths:
        require_supported(load_description_settings(path))


# ---------------------------------------------------------------------------------- attempts (§1.6)


def test_retry_3_means_4_attempts(bench: DescriptionSettings) -> None:
    book = DescriptionAttempts.for_settings(bench)
    assert book.max_attempts == 4
    for duration in (1.0, 2.0, 3.0, 4.0):
        assert book.can_retry
        book.record(Attempt(duration, error="invalid_json"))
    assert book.finished and not book.success and not book.can_retry
    # 4 failures, but only the 3 followed by a retry count as Ret. (evaluation.md §2.10: "an image
    # that failed completely contributes 3")
    assert (book.failed_attempts, book.failed_attempts_total, book.duration_s, book.last_error) == (
        3,
        4,
        None,
        "invalid_json",
    )
    with pytest.raises(RuntimeError):
        book.record(Attempt(1.0))


def test_time_is_the_successful_attempts_duration(bench: DescriptionSettings) -> None:
    from vlm_gist_dagster.protocol.completions import TokenUsage

    book = DescriptionAttempts.for_settings(bench)
    book.record(Attempt(30.0, error="timeout_completion", usage=None))
    book.record(
        Attempt(8.0, error="zero_valid_objects", usage=TokenUsage(prompt_tokens=1000, completion_tokens=50))
    )
    book.record(
        Attempt(5.5, usage=TokenUsage(prompt_tokens=1000, cached_prompt_tokens=900, completion_tokens=400))
    )
    assert book.success and book.finished
    assert book.duration_s == 5.5  # not 30 + 8 + 5.5
    assert book.failed_attempts == 2  # the README "Ret." for this image
    assert (book.prompt_tokens, book.completion_tokens, book.cached_prompt_tokens) == (2000, 450, 900)


def test_retry_limits(bench_raw: dict) -> None:
    assert (
        DescriptionAttempts.for_settings(
            DescriptionSettings.model_validate({**bench_raw, "retry": 0})
        ).max_attempts
        == 1
    )
    unlimited = DescriptionSettings.model_validate({**bench_raw, "retry": -1})
    assert DescriptionAttempts.for_settings(unlimited).max_attempts == 20  # the safety cap
    capped = DescriptionSettings.model_validate({**bench_raw, "retry": -1, "unlimited_retry_cap": 7})
    assert capped.max_attempts == 7
