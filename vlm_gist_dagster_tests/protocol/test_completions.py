"""Chat completions: messages, payloads per flavour (written by hand from docs/protocol/pipeline.md §1.3), headers,
response interpretation (§1.4), SSE accumulation, JSON extraction and post-processing."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from vlm_gist_dagster.protocol.completions import (
    BadFinishReason,
    Completion,
    EmptyText,
    InvalidJson,
    InvalidResponse,
    StreamAccumulator,
    StreamIncomplete,
    TokenUsage,
    assistant_message,
    build_headers,
    build_payload,
    extract_json,
    interpret_response,
    merge_user_messages,
    postprocess,
    split_think_tags,
    system_message,
    user_image_message,
    user_text_message,
)
from vlm_gist_dagster.protocol.endpoints import ENDPOINTS, EndpointError, endpoint_from_dict, resolve_endpoint
from vlm_gist_dagster.protocol.settings import CompletionParams, load_description_settings

SYS = "You are a robot. Be concise."
PROMPT = "List the objects."
URI = "data:image/jpeg;base64,AAAA"


def _messages(role: str = "system") -> list[dict]:
    return [
        system_message(f"  {SYS}\n", role),
        user_image_message(URI, "high"),
        user_text_message(f"\n{PROMPT} "),
    ]


def _block(settings_dir: Path, stem: str) -> CompletionParams:
    return load_description_settings(
        settings_dir / "description" / f"description_settings_{stem}.json"
    ).vlm_structured_description


# ------------------------------------------------------------------------------------------- messages


def test_messages_are_stripped_and_consecutive_user_messages_merged() -> None:
    assert merge_user_messages(_messages()) == [
        {"role": "system", "content": SYS},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"detail": "high", "url": URI}},
                {"type": "text", "text": PROMPT},
            ],
        },
    ]


def test_system_role_user_becomes_the_first_text_part() -> None:
    assert merge_user_messages(_messages("user")) == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": SYS},
                {"type": "image_url", "image_url": {"detail": "high", "url": URI}},
                {"type": "text", "text": PROMPT},
            ],
        },
    ]


def test_assistant_breaks_the_merge() -> None:
    messages = [
        user_text_message("a"),
        assistant_message(" b "),
        user_text_message("c"),
        user_text_message("d"),
    ]
    assert merge_user_messages(messages) == [
        {"role": "user", "content": [{"type": "text", "text": "a"}]},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}]},
    ]


# ------------------------------------------------------------------------------------------- payloads

MERGED_SYSTEM = [
    {"role": "system", "content": SYS},
    {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"detail": "high", "url": URI}},
            {"type": "text", "text": PROMPT},
        ],
    },
]


def test_openrouter_payload_gemini_2_5_flash_high(reference_settings_dir: Path) -> None:
    payload = build_payload(_block(reference_settings_dir, "gemini_2_5_flash_high"), _messages(), "json")
    assert payload == {
        "model": "google/gemini-2.5-flash",
        "messages": MERGED_SYSTEM,
        "temperature": 1.0,
        "top_p": 1.0,
        "stream": True,
        "n": 1,
        "tools": None,
        "max_tokens": 10000,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "reasoning": {"effort": "high", "exclude": False},
        "response_format": {"type": "json_object"},
        "stream_options": {"include_usage": True},
    }


def test_openai_payload_gpt_5_high(reference_settings_dir: Path) -> None:
    payload = build_payload(_block(reference_settings_dir, "gpt_5_high"), _messages(), "json")
    assert payload == {
        "model": "gpt-5-2025-08-07",
        "messages": MERGED_SYSTEM,
        "temperature": 1.0,
        "top_p": 1.0,
        "stream": False,
        "n": 1,
        "tools": None,
        "max_completion_tokens": 10000,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "reasoning_effort": "high",
        "response_format": {"type": "json_object"},
    }


def test_mistral_payload_medium_3_1(reference_settings_dir: Path) -> None:
    payload = build_payload(_block(reference_settings_dir, "mistral_medium_3_1"), _messages(), "json")
    assert payload == {
        "model": "mistral-medium-2508",
        "messages": MERGED_SYSTEM,
        "temperature": 0.15,
        "top_p": 1.0,
        "stream": True,
        "n": 1,
        "tools": None,
        "max_tokens": 10000,
        "response_format": {"type": "json_object"},
        "tool_choice": "none",
    }


def test_vllm_payload_internvl_38b_reason(reference_settings_dir: Path) -> None:
    payload = build_payload(
        _block(reference_settings_dir, "internvl_3_5_38b_reason"), _messages("user"), "text"
    )
    assert payload == {
        "model": "ais/internvl3-5-38b",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": SYS},
                    {"type": "image_url", "image_url": {"url": URI}},  # detail removed for vLLM
                    {"type": "text", "text": PROMPT},
                ],
            },
        ],
        "temperature": 0.6,
        "top_p": 0.8,
        "stream": False,
        "n": 1,
        "tools": None,
        "max_tokens": 10000,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "chat_template_kwargs": {"enable_thinking": True},
        "response_format": {"type": "text"},
    }


def test_effort_none_sends_no_reasoning_field(reference_settings_dir: Path) -> None:
    internvl_off = build_payload(
        _block(reference_settings_dir, "internvl_3_5_2b_none"), _messages("user"), "text"
    )
    assert internvl_off["chat_template_kwargs"] == {"enable_thinking": False}
    ovis = build_payload(_block(reference_settings_dir, "ovis_2_5_9b_none"), _messages("user"), "json")
    assert ovis["stream_options"] == {"include_usage": True}  # vLLM streams with usage
    gpt = build_payload(_block(reference_settings_dir, "gpt_5_none"), _messages(), "json")
    assert "reasoning_effort" not in gpt and "reasoning" not in gpt
    gemini = build_payload(_block(reference_settings_dir, "gemini_2_5_flash_none"), _messages(), "json")
    assert "reasoning" not in gemini
    empty = build_payload(CompletionParams(model_reasoning_effort=""), _messages(), "text")
    assert "reasoning" not in empty and empty["response_format"] == {"type": "text"}


def test_payload_does_not_mutate_the_messages() -> None:
    messages = _messages()
    build_payload(CompletionParams(api_endpoint="vLLM"), messages, "json")
    assert messages[1]["content"][0]["image_url"]["detail"] == "high"


def test_no_token_limit_when_none_and_flavour_override() -> None:
    payload = build_payload(CompletionParams(model_max_tokens="None"), _messages(), "json", flavor="openai")
    assert "max_tokens" not in payload and "max_completion_tokens" not in payload
    with pytest.raises(ValueError, match="flavour"):
        build_payload(CompletionParams(), _messages(), "json", flavor="anthropic")


def test_headers() -> None:
    assert build_headers("sk-test") == {
        "Authorization": "Bearer sk-test",
        "HTTP-Referer": "https://github.com/AIS-Bonn/nimbro_api",
        "X-Title": "NimbRo-API",
        "Content-Type": "application/json",
    }
    assert "Authorization" not in build_headers(None)


# ------------------------------------------------------------------------------------------ endpoints


def test_named_endpoints() -> None:
    assert set(ENDPOINTS) == {"OpenAI", "Mistral AI", "OpenRouter", "vLLM", "AIS"}
    assert resolve_endpoint("AIS").api_flavor == "vllm"
    assert resolve_endpoint("AIS").completions_url == "https://api-code.ais.uni-bonn.de/v1/chat/completions"
    assert resolve_endpoint("Mistral AI").key_env_var == "MISTRAL_API_KEY"
    assert resolve_endpoint("OpenAI").embeddings_url == "https://api.openai.com/v1/embeddings"
    with pytest.raises(EndpointError, match="unknown endpoint name"):
        resolve_endpoint("Anthropic")


def test_endpoint_dict_form() -> None:
    spec = {
        "name": "Sim",
        "api_flavor": "openrouter",
        "completions_url": "http://127.0.0.1:8100/v1/chat/completions",
        "models_url": "http://127.0.0.1:8100/v1/models",
        "key_type": "environment",
        "key_value": "SIM_KEY",
    }
    endpoint = endpoint_from_dict(spec)
    assert (endpoint.api_flavor, endpoint.key_env_var, endpoint.models_url) == (
        "openrouter",
        "SIM_KEY",
        spec["models_url"],
    )
    with pytest.raises(EndpointError, match="environment variable"):
        endpoint_from_dict({**spec, "key_type": "plain", "key_value": "sk-123"})
    with pytest.raises(EndpointError, match="api_flavor"):
        endpoint_from_dict({**spec, "api_flavor": "anthropic"})
    with pytest.raises(EndpointError, match="misses"):
        endpoint_from_dict({k: v for k, v in spec.items() if k != "completions_url"})
    assert endpoint_from_dict({**spec, "key_type": "none", "key_value": None}).key_env_var is None


# ------------------------------------------------------------------------- non-streaming responses


def _body(content: str | None = "[]", finish: str | None = "stop", **message: object) -> dict:
    return {
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": finish,
                "message": {"role": "assistant", "content": content, **message},
            }
        ],
        "usage": {
            "prompt_tokens": 1200,
            "completion_tokens": 340,
            "prompt_tokens_details": {"cached_tokens": 1024},
            "completion_tokens_details": {"reasoning_tokens": 300},
        },
    }


def test_interpret_response() -> None:
    completion = interpret_response(_body('{"objects": []}', reasoning="thinking…"))
    assert completion == Completion(
        text='{"objects": []}',
        reasoning="thinking…",
        finish_reason="stop",
        usage=TokenUsage(
            prompt_tokens=1200, cached_prompt_tokens=1024, completion_tokens=340, reasoning_tokens=300
        ),
        model="m",
    )
    assert interpret_response(_body("x", reasoning_content="r")).reasoning == "r"
    assert interpret_response(_body("x", finish=None)).finish_reason is None
    for allowed in ("tool_calls", "STOP", "end_turn"):
        assert interpret_response(_body("x", finish=allowed)).text == "x"
    assert interpret_response(_body(None)).text == ""


@pytest.mark.parametrize("finish", ["length", "content_filter", "error"])
def test_bad_finish_reason_keeps_the_partial_output(finish: str) -> None:
    with pytest.raises(BadFinishReason) as info:
        interpret_response(_body('[{"object_name": "cup"', finish=finish))
    assert info.value.reason == f"finish_reason:{finish}"
    assert info.value.completion.text == '[{"object_name": "cup"'


def test_a_choice_without_finish_reason_fails_the_attempt() -> None:
    """The paper's client checks every choice for the key 'finish_reason' (a null value is allowed, a
    missing key is not) and fails the attempt (docs/protocol/pipeline.md §1.4); the raw output is kept as for any failure."""
    body = _body('[{"object_name": "cup"}]')
    del body["choices"][0]["finish_reason"]
    with pytest.raises(InvalidResponse) as info:
        interpret_response(body)
    assert info.value.reason == "invalid_choice" and "finish_reason" in info.value.message
    assert info.value.completion.text == '[{"object_name": "cup"}]'  # the raw output is kept
    second = _body("y")["choices"][0]
    del second["finish_reason"]
    two = _body("x")
    two["choices"].append(second)
    with pytest.raises(InvalidResponse, match=r"choices\[1\]"):
        interpret_response(two)


def test_malformed_bodies() -> None:
    cases = {
        "invalid_body": [],
        "empty_choices": {"choices": []},
        "provider_error": {"error": {"message": "Rate limit", "code": 429}},
        "invalid_choice": {"choices": ["x"]},
        "invalid_message": {"choices": [{"finish_reason": "stop", "message": "text"}]},
    }
    for reason, body in cases.items():
        with pytest.raises(InvalidResponse) as info:
            interpret_response(body)
        assert info.value.reason == reason


# ------------------------------------------------------------------------------------------- streaming


def _sse(*chunks: dict | str) -> list[str]:
    return [c if isinstance(c, str) else "data: " + json.dumps(c) for c in chunks]


def test_stream_accumulates_text_reasoning_and_usage() -> None:
    lines = _sse(
        ": OPENROUTER PROCESSING",
        {
            "model": "g",
            "choices": [
                {"delta": {"role": "assistant", "reasoning": "Let me look. "}, "finish_reason": None}
            ],
        },
        {"choices": [{"delta": {"reasoning": "A cup."}, "finish_reason": None}]},
        {"choices": [{"delta": {"content": '```json\n[{"object_name"'}, "finish_reason": None}]},
        {"choices": [{"delta": {"content": ': "cup"}]\n```'}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 20}},
        "",
        "data: [DONE]",
    )
    stream = StreamAccumulator()
    assert [stream.feed_line(line) for line in lines][-1] is True
    result = stream.result()
    assert result.text == '```json\n[{"object_name": "cup"}]\n```'
    assert result.reasoning == "Let me look. A cup."
    assert result.finish_reason == "stop" and result.model == "g"
    assert result.usage == TokenUsage(prompt_tokens=10, completion_tokens=20)


def test_stream_fails_at_once_on_length() -> None:
    stream = StreamAccumulator()
    stream.feed_line(
        "data: " + json.dumps({"choices": [{"delta": {"content": "[{"}, "finish_reason": None}]})
    )
    with pytest.raises(BadFinishReason) as info:
        stream.feed_line("data: " + json.dumps({"choices": [{"delta": {}, "finish_reason": "length"}]}))
    assert info.value.reason == "finish_reason:length" and info.value.completion.text == "[{"


def test_stream_top_level_finish_reason_is_checked() -> None:
    stream = StreamAccumulator()
    with pytest.raises(BadFinishReason, match="content_filter"):
        stream.feed({"finish_reason": "content_filter", "choices": []})


def test_stream_without_done_fails() -> None:
    stream = StreamAccumulator()
    stream.feed_line(
        "data: " + json.dumps({"choices": [{"delta": {"content": "[]"}, "finish_reason": "stop"}]})
    )
    with pytest.raises(StreamIncomplete) as info:
        stream.result()
    assert info.value.reason == "stream_incomplete" and info.value.completion.text == "[]"
    # A data line that is not JSON is ignored, as the paper's reader ignores it (docs/protocol/pipeline.md §1.4).
    stream = StreamAccumulator()
    assert stream.feed_line("data: {broken") is False and stream.chunks == 0
    assert stream.feed_line("data: [DONE]") is True and stream.result().text == ""
    with pytest.raises(InvalidResponse, match="provider_error"):
        StreamAccumulator().feed({"error": {"message": "upstream"}})


# ---------------------------------------------------------------------------------- JSON extraction


def _reference_extract_json(text: str):
    """The paper's algorithm verbatim in spirit: all (opening, closing) pairs, stable sort longest
    first, first that json.loads accepts."""
    opens = [i for i, c in enumerate(text) if c in "{["]
    closes = [j for j, c in enumerate(text) if c in "}]"]
    options = [text[i : j + 1] for i in opens for j in closes if j >= i]
    options.sort(key=len, reverse=True)
    for option in options:
        try:
            return json.loads(option)
        except json.JSONDecodeError:
            pass
    return None


def test_extract_json_hand_cases() -> None:
    assert extract_json('Here you go:\n```json\n[{"a": 1}]\n```\nAnything else?') == [{"a": 1}]
    # the longest valid substring wins over an earlier, shorter one
    assert extract_json('{"x": 1} and then [1, 2, 3, 4, 5]') == [1, 2, 3, 4, 5]
    # a truncated outer list: the longest valid inner object wins
    assert extract_json('[{"object_name": "cup"}, {"object_name": "table lamp"}, {"obj') == {
        "object_name": "table lamp"
    }
    # equal lengths: the earlier start wins
    assert extract_json("[1] [2]") == [1]
    assert extract_json("no json here") is None
    assert extract_json("} {") is None


def test_extract_json_matches_the_reference_on_random_texts() -> None:
    rng = random.Random(1234)
    alphabet = ["{", "}", "[", "]", '"a"', ":", ",", "1", " ", "x", '"']
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25)))
        assert extract_json(text) == _reference_extract_json(text), text


def test_extract_json_on_a_large_truncated_completion() -> None:
    # ~20 kB list cut inside its last object: the outer list is invalid, so the longest valid substring
    # is the longest single object. Objects 100..298 have 3-digit numbers (twice each), so they are the
    # longest and equally long; the earliest start wins: object 100. (The reference would try ~45 000
    # candidate substrings of up to 20 kB here.)
    objects = [
        {"object_name": f"thing {i}", "description": f"a thing number {i} on the table"} for i in range(300)
    ]
    text = json.dumps(objects)[:-30]
    assert extract_json(text) == {
        "object_name": "thing 100",
        "description": "a thing number 100 on the table",
    }


# ----------------------------------------------------------------------------------- post-processing


def test_json_mode_postprocess() -> None:
    params = CompletionParams()
    assert postprocess(Completion('{"objects": [1]}'), "json", params).value == {"objects": [1]}
    assert postprocess(Completion("prose ```json\n[1]\n``` prose"), "json", params).value == [1]
    with pytest.raises(InvalidJson) as info:
        postprocess(Completion("I cannot see any objects."), "json", params)
    assert info.value.reason == "invalid_json" and info.value.completion.text == "I cannot see any objects."


def test_reasoning_is_not_searched_for_json() -> None:
    completion = Completion(text="Done.", reasoning='The answer is [{"object_name": "cup"}]')
    with pytest.raises(InvalidJson):
        postprocess(completion, "json", CompletionParams())


def test_empty_text_fails_even_with_reasoning() -> None:
    for response_type in ("json", "text"):
        with pytest.raises(EmptyText) as info:
            postprocess(Completion(text="  \n", reasoning="long thoughts"), response_type, CompletionParams())
        assert info.value.reason == "empty_text"


def test_json_decoder_parser_for_text_mode() -> None:
    params = CompletionParams(completion_parsers='["json_decoder.py"]')
    parsed = postprocess(Completion('Sure:\n[{"object_name": "cup"}]'), "text", params)
    assert parsed.value == [{"object_name": "cup"}]
    with pytest.raises(InvalidJson):
        postprocess(Completion("There is a cup."), "text", params)
    with pytest.raises(InvalidJson):  # the parser tests truthiness: an empty list fails
        postprocess(Completion("[]"), "text", params)
    assert postprocess(Completion("  plain  "), "text", CompletionParams()).value == "  plain  "


def test_normalize_text_completion_is_transliteration_and_strip() -> None:
    params = CompletionParams(normalize_text_completion="True")
    assert postprocess(Completion("  Café chair_2!\n"), "text", params).value == "Cafe chair_2!"


def test_reasoning_extractor() -> None:
    assert split_think_tags("<think> hmm </think>\n[1]") == ("hmm", "[1]")
    params = CompletionParams(completion_parsers='["reasoning_extractor.py", "json_decoder.py"]')
    parsed = postprocess(Completion("<think>a cup</think> [1, 2]", reasoning="r"), "text", params)
    assert parsed.value == [1, 2] and parsed.completion.reasoning == "r a cup"
    with pytest.raises(EmptyText):
        postprocess(Completion("<think>only thoughts</think>"), "text", params)
