"""nimbro-api's ChatCompletions and Embeddings clients against the simulated OpenAI-compatible server,
with their default validation (model probe via the Models API, JSON check and automatic correction,
choice count, usage)."""

from __future__ import annotations

import numpy as np
import pytest
from nimbro_api.api.openai.client.chat_completions import ChatCompletions
from nimbro_api.api.openai.client.embeddings import Embeddings

from .conftest import CHAT_TIMEOUTS, MODEL, PAPER_DICT_PROMPT, chat_endpoint

FLAVORS = ("openai", "openrouter", "mistral", "vllm")


def describe_messages(image_b64: str, prompt: str = PAPER_DICT_PROMPT) -> list[dict]:
    return [
        {"role": "system", "content": "You are a robot's visual perception system."},
        # nimbro-api adds the data: prefix to raw base64 itself (chat_completions_base.py encode_files)
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": image_b64, "detail": "high"}}],
        },
        {"role": "user", "content": [{"type": "text", "text": prompt}]},
    ]


def chat(sim, flavor: str, **settings) -> ChatCompletions:
    return ChatCompletions(
        settings={
            "endpoint": chat_endpoint(sim, flavor),
            "model": MODEL,
            "logger_severity": "warn",
            **CHAT_TIMEOUTS,
            **settings,
        }
    )


def assert_paper_objects(value) -> None:
    # the JSON mode answer {"objects": [...]}, each with the paper's two fields
    assert isinstance(value, dict) and list(value) == ["objects"]
    assert value["objects"] and all(set(o) == {"object_name", "description"} for o in value["objects"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("flavor", FLAVORS)
def test_structured_description_each_flavour(sim, coco_b64, flavor, stream):
    client = chat(sim, flavor, stream=stream)
    success, message, completion = client.prompt(
        describe_messages(coco_b64), reset_context=True, response_type="json"
    )
    assert success, message
    assert_paper_objects(completion["text"])
    assert completion["usage"]["tokens_input_uncached"] > 0 and completion["usage"]["tokens_output"] > 0
    # nimbro-api probed the Models API first (validate_model) and found the model listed
    assert sim.request_log.filter(
        server="chat", path=("/api/v1" if flavor == "openrouter" else "/v1") + "/models"
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("flavor", ["openai", "mistral", "vllm"])
def test_two_choices(sim, coco_b64, flavor, stream):
    """n = 2 (nimbro-api's ``choices``): two choices, each validated; OpenAI, vLLM and Mistral honour n."""
    client = chat(sim, flavor, stream=stream, choices=2)
    success, message, completion = client.prompt(
        describe_messages(coco_b64), reset_context=True, response_type="json"
    )
    assert success, message
    assert len(completion["choices"]) == 2
    for choice in completion["choices"]:
        assert_paper_objects(choice["text"])
    assert completion["choices"][0]["text"] != completion["choices"][1]["text"]  # separate draws


def test_two_choices_on_openrouter_get_one(sim, coco_b64):
    """OpenRouter ignores n, and nimbro-api warns that such a completion will fail
    (chat_completions_base.py:269-270); it then reports the missing choice (:904-907)."""
    client = chat(sim, "openrouter", choices=2, retry=False)
    success, message, _ = client.prompt(describe_messages(coco_b64), reset_context=True, response_type="json")
    assert not success and "Expected to receive '2' choices but got '1'" in message


def test_a_model_the_server_does_not_list_is_refused(sim):
    """validate_model (default 3600 s) checks the Models API first (nimbro_api/api/openai/utility.py:37-42):
    a model the simulator does not serve never reaches the completions endpoint."""
    client = chat(sim, "openai", model="gpt-9", retry=False)
    before = len(sim.request_log.filter(server="chat", path="/v1/chat/completions"))
    success, message, _ = client.prompt("Hello", reset_context=True, response_type="text")
    assert not success and "is not served under Models API" in message
    assert len(sim.request_log.filter(server="chat", path="/v1/chat/completions")) == before


def test_text_scene_and_nimbro_prompts(sim, coco_b64):
    """Prompts other than the paper's get answers that follow them (issue 14 item 7)."""
    client = chat(sim, "openai")
    scene = "Please provide a complete and detailed description of the image above."
    success, message, completion = client.prompt(
        describe_messages(coco_b64, scene), reset_context=True, response_type="text"
    )
    assert success, message
    assert completion["text"].startswith("The image shows") and completion["text"].count(". ") >= 5
    success, message, completion = client.prompt(
        "What is the capital of France?", reset_context=True, response_type="text"
    )
    assert success and completion["text"].startswith("This is a simulated answer")


def test_embeddings_with_model_validation(sim, tmp_path):
    base = sim.chat_base_url + "/v1"
    endpoint = {
        "name": "Simulator",
        "api_url": base + "/embeddings",
        "models_url": base + "/models",
        "key_type": "environment",
        "key_value": "VLM_GIST_INTEROP_KEY",
    }
    client = Embeddings(
        settings={
            "endpoint": endpoint,
            "model": "text-embedding-3-large",
            "cache_folder": str(tmp_path),
            "logger_severity": "warn",
            "timeout_connect": 10.0,
            "timeout_read": 60.0,
        }
    )
    success, message, vectors = client.get_embedding(["tv", "monitor", "banana split"])
    assert success, message
    v = np.asarray(vectors)
    assert v.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-6)
    assert v[0] @ v[1] > v[0] @ v[2]
    # a model the server does not list is refused by the model validation
    success, message, _ = client.get_embedding("chair", model="text-embedding-9", retry=False)
    assert not success and "is not served under Models API" in message
