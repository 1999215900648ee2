"""Protocol conformance of the simulated OpenAI-compatible server (docs/protocol/pipeline.md §1.3–1.4, §2.3;
docs/protocol/evaluation.md §1.5), auth, and determinism per seed."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from vlm_gist_dagster.sim import run_simulator

from .conftest import AUTH, EPHEMERAL, b64_file, image_path

SYSTEM = "You are a robot's visual perception system that identifies and analyzes objects in an image. Be concise and factual."
# The benchmark's dict_prompt (docs/protocol/pipeline.md §1.1), abbreviated to the part the simulator keys on.
DICT_PROMPT = (
    "Provide a list in JSON format that contains each object (including furniture, persons, and animals) visible "
    "in the image above. Each list element must be a dictionary with the fields object_name and description."
)
# docs/protocol/evaluation.md §1.5, exact strings.
DEFINITION_PROMPT_ITEM = (
    "Please define and describe the characteristic properties of the item category of the item described below in "
    "5 sentences:\n{item}\n\nYour description must not refer to the given task or include the words 'item', "
    "'category' and 'context'."
)
DEFINITION_PROMPT_LABEL = (
    "Please define and describe the characteristic properties of the following term in 5 sentences: {label}"
)


def describe_body(
    image_b64: str, model: str = "sim/test", *, json_mode: bool = True, stream: bool = False, **extra
):
    """The wire payload of one structured-description attempt (docs/protocol/pipeline.md §1.3, normal case)."""
    body = {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {"detail": "high", "url": "data:image/jpeg;base64," + image_b64},
                    },
                    {"type": "text", "text": DICT_PROMPT},
                ],
            },
        ],
        "temperature": 1.0,
        "top_p": 1.0,
        "stream": stream,
        "tools": None,
        "n": 1,
        "max_tokens": 10000,
        "response_format": {"type": "json_object" if json_mode else "text"},
    }
    body.update(extra)
    return body


def text_body(text: str, model: str = "sim/test", **extra):
    body = {
        "model": model,
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
        "stream": False,
    }
    body.update(extra)
    return body


def read_sse(response: httpx.Response) -> tuple[list[str], list[dict], bool]:
    """(comment lines, parsed data chunks, saw [DONE]) of an SSE body, framed by blank lines."""
    comments, chunks, done = [], [], False
    raw = response.read().decode("utf-8")
    assert raw.endswith("\n\n")
    for event in raw.split("\n\n")[:-1]:
        assert "\n" not in event  # one line per event
        if event.startswith(":"):
            comments.append(event)
        elif event == "data: [DONE]":
            done = True
        else:
            assert event.startswith("data: ")
            chunks.append(json.loads(event[len("data: ") :]))
    return comments, chunks, done


@pytest.fixture(scope="module")
def coco_image(coco_dataset):
    return b64_file(image_path(coco_dataset, "000000037777"))


def test_non_streaming_description_shape(simulator, client, coco_image):
    r = client.post(simulator.chat_completions_url, json=describe_body(coco_image))
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "sim/test"
    assert isinstance(body["id"], str) and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    parsed = json.loads(choice["message"]["content"])  # json_object mode: a dict with one list
    assert list(parsed) == ["objects"]
    assert parsed["objects"] and all(set(o) == {"object_name", "description"} for o in parsed["objects"])
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}


def test_text_mode_answers_survive_longest_first_json_extraction(simulator, client, coco_dataset):
    """Text mode: a bare list or prose around a ```json fence; both contain one valid JSON list
    (docs/protocol/pipeline.md §1.4 extract_json: longest parseable substring from [ to ])."""
    simulator.set_controls("chat", model="sim/text", fenced_rate=0.5, recall=1.0, hallucinations=0.0)
    kinds = set()
    for image_id in list(coco_dataset.images["image_id"])[:12]:  # 12 images, each its own draw
        body = describe_body(b64_file(image_path(coco_dataset, image_id)), "sim/text", json_mode=False)
        content = client.post(simulator.chat_completions_url, json=body).json()["choices"][0]["message"][
            "content"
        ]
        kinds.add(content.lstrip().startswith("["))
        start, end = content.index("["), content.rindex("]") + 1
        objects = json.loads(content[start:end])
        assert isinstance(objects, list) and all(set(o) == {"object_name", "description"} for o in objects)
    assert kinds == {True, False}  # 12 draws at 0.5: both forms occur (P(all equal) = 2 * 0.5**12 ≈ 0.0005)


def test_invented_objects_on_coco_are_absent_classes_or_scene_stuff(simulator, client, coco_image):
    """What a simulated VLM invents on a class dataset: a COCO class not in the image, or (half the time)
    scene stuff outside COCO's classes, which label matching rejects (Mat. < 1, as for real VLMs)."""
    from vlm_gist_dagster.sim.language import COCO_CLASSES, SCENE_STUFF

    simulator.set_controls("chat", model="sim/inventive", recall=0.0, hallucinations=4.0, synonym_rate=0.0)
    names = []
    for seed in range(4):  # each seed its own draws
        simulator.set_controls("chat", model="sim/inventive", seed=seed)
        content = client.post(
            simulator.chat_completions_url, json=describe_body(coco_image, "sim/inventive")
        ).json()["choices"][0]["message"]["content"]
        names += [o["object_name"] for o in json.loads(content)["objects"]]
    assert len(names) == 16  # recall 0: only the 4 invented objects per answer
    stuff = [n for n in names if n in SCENE_STUFF]
    classes = [n for n in names if n in COCO_CLASSES]
    assert len(stuff) + len(classes) == len(names)
    assert not set(SCENE_STUFF) & set(COCO_CLASSES)
    assert stuff and classes  # 16 draws at 1/2: both kinds occur (P(not) = 2 * 0.5**16)


def test_sse_framing_keepalive_usage_chunk_and_done(simulator, client, coco_image):
    body = describe_body(coco_image, stream=True, stream_options={"include_usage": True})
    with client.stream("POST", simulator.chat_completions_url, json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        comments, chunks, done = read_sse(r)
    assert ": keep-alive" in comments
    assert done
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"] is not None]
    assert [c["choices"][0]["finish_reason"] for c in finish] == ["stop"]
    # include_usage: a final chunk with empty choices carries the usage (OpenAI's form)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert list(json.loads(text)) == ["objects"]


def test_sse_without_include_usage_puts_usage_on_the_finish_chunk(simulator, client, coco_image):
    with client.stream(
        "POST", simulator.chat_completions_url, json=describe_body(coco_image, stream=True)
    ) as r:
        _, chunks, done = read_sse(r)
    assert done
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_reasoning_models_return_reasoning(simulator, client, coco_image):
    simulator.set_controls("chat", model="sim/thinker", reasoning=True)
    message = client.post(
        simulator.chat_completions_url, json=describe_body(coco_image, "sim/thinker")
    ).json()["choices"][0]["message"]
    assert message["reasoning"]
    # vLLM-style request (chat_template_kwargs) → reasoning_content, in the stream too
    body = describe_body(
        coco_image, "sim/thinker", stream=True, chat_template_kwargs={"enable_thinking": True}
    )
    with client.stream("POST", simulator.chat_completions_url, json=body) as r:
        _, chunks, _ = read_sse(r)
    assert any("reasoning_content" in c["choices"][0]["delta"] for c in chunks if c["choices"])


def test_definition_prompts(simulator, client):
    item = json.dumps({"object_name": "chair", "description": "a red wooden chair"}, indent=4)
    for prompt, term in (
        (DEFINITION_PROMPT_ITEM.format(item="sports ball"), "sports ball"),
        (DEFINITION_PROMPT_LABEL.format(label=item), "chair"),
    ):
        body = text_body(prompt)
        body["messages"].insert(0, {"role": "system", "content": "You are a helpful assistant."})
        first = client.post(simulator.chat_completions_url, json=body).json()["choices"][0]["message"][
            "content"
        ]
        again = client.post(simulator.chat_completions_url, json=body).json()["choices"][0]["message"][
            "content"
        ]
        assert first == again  # deterministic
        assert term in first
        assert first.count(". ") == 4 and first.endswith(".")  # 5 sentences, no newlines
        assert "\n" not in first


def test_models_endpoint_lists_the_simulated_models(simulator, client):
    body = client.get(simulator.models_url).json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert {"sim/strong", "sim/medium", "sim/weak"} <= set(ids)
    assert all(m["object"] == "model" for m in body["data"])


def test_embeddings_shape_and_input_order(simulator, client):
    texts = ["tv", "monitor", "banana split", "sofa"]
    body = {"input": texts, "model": "text-embedding-3-large", "encoding_format": "float"}
    r = client.post(simulator.embeddings_url, json=body)
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "list" and data["model"] == "text-embedding-3-large"
    assert [d["index"] for d in data["data"]] == [0, 1, 2, 3]
    batch = np.array([d["embedding"] for d in data["data"]])
    # each text alone gives the same vector as at its position in the batch: the order is the input order
    for i, text in enumerate(texts):
        single = client.post(simulator.embeddings_url, json={**body, "input": [text]}).json()["data"][0][
            "embedding"
        ]
        np.testing.assert_allclose(batch[i], single)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0)
    assert batch[0] @ batch[1] > batch[0] @ batch[2]  # tv~monitor above tv~banana split
    assert data["usage"]["prompt_tokens"] == data["usage"]["total_tokens"] > 0
    assert client.post(simulator.embeddings_url, json={**body, "input": ["ok", ""]}).status_code == 400
    assert (
        len(
            client.post(simulator.embeddings_url, json={**body, "dimensions": 32}).json()["data"][0][
                "embedding"
            ]
        )
        == 32
    )


def test_auth_and_bad_requests(simulator, coco_image):
    """OpenAI's 401 texts and 400 bodies (``{"error": {"message", "type", "param", "code"}}``)."""
    url = simulator.chat_completions_url
    body = describe_body(coco_image)
    r = httpx.post(url, json=body)
    assert r.status_code == 401 and r.json()["error"]["message"].startswith("You didn't provide an API key.")
    r = httpx.post(url, json=body, headers={"Authorization": "Basic abc"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(simulator.models_url).status_code == 401
    r = httpx.post(url, content=b"{not json", headers=AUTH)
    assert r.status_code == 400 and "could not parse the JSON body" in r.json()["error"]["message"]
    r = httpx.post(url, json={"messages": []}, headers=AUTH)
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert r.json()["error"]["param"] == "model"
    web = describe_body(coco_image)
    web["messages"][1]["content"][0]["image_url"]["url"] = "https://example.org/x.jpg"
    r = httpx.post(url, json=web, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[1].content[0].image_url.url"


@pytest.mark.parametrize(
    ("change", "param", "words"),
    [
        ({"temperature": "1.0"}, "temperature", "valid number"),  # a string is not a number
        ({"temperature": 2.5}, "temperature", "less than or equal to 2"),
        ({"top_p": -0.1}, "top_p", "greater than or equal to 0"),
        ({"n": 0}, "n", "greater than or equal to 1"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"stream": "yes"}, "stream", "valid boolean"),
        ({"response_format": {"type": "yaml"}}, "response_format.type", "'json_object'"),
        ({"stream_options": {"include_usage": True}}, None, "only allowed when 'stream' is enabled"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", "'assistant'"),
        ({"messages": [{"role": "user"}]}, "messages[0]", "needs content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0]",
            "'image_url'",
        ),
    ],
)
def test_request_validation(simulator, client, coco_image, change, param, words):
    """What OpenAI and vLLM reject with a 400, the simulator rejects too (sim/chat_requests.py)."""
    r = client.post(simulator.chat_completions_url, json=describe_body(coco_image, **change))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"]


def test_unlisted_model_is_the_providers_404(simulator, client, coco_image):
    listed = {m["id"] for m in client.get(simulator.models_url).json()["data"]}
    # the simulated VLMs, the label-matching LLM, the embedding model and the validation VLM
    assert {"sim/strong", "sim/medium", "sim/weak", "sim/test"} <= listed
    assert {"gpt-4o-2024-11-20", "text-embedding-3-large", "google/gemini-2.5-flash"} <= listed
    assert "gpt-9" not in listed
    r = client.post(simulator.chat_completions_url, json=describe_body(coco_image, "gpt-9"))
    # OpenAI's body for a model that does not exist
    assert r.status_code == 404 and r.json() == {
        "error": {
            "message": "The model `gpt-9` does not exist or you do not have access to it.",
            "type": "invalid_request_error",
            "param": None,
            "code": "model_not_found",
        }
    }
    # vLLM's, for a vLLM-style request
    r = client.post(
        simulator.chat_completions_url,
        json=describe_body(coco_image, "gpt-9", chat_template_kwargs={"enable_thinking": False}),
    )
    assert r.status_code == 404 and r.json() == {
        "object": "error",
        "message": "The model `gpt-9` does not exist.",
        "type": "NotFoundError",
        "param": None,
        "code": 404,
    }
    r = client.post(simulator.embeddings_url, json={"model": "gpt-9", "input": "chair"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    # a model given controls at run time is served from then on
    simulator.set_controls("chat", model="sim/late", recall=0.5)
    assert "sim/late" in {m["id"] for m in client.get(simulator.models_url).json()["data"]}
    assert (
        client.post(simulator.chat_completions_url, json=describe_body(coco_image, "sim/late")).status_code
        == 200
    )


def test_n_choices(simulator, client, coco_image):
    """n = 3 → three choices, separate draws, choice 0 the n = 1 answer; the stream carries each choice's
    index and finish reason; OpenRouter's path answers one choice (it ignores n)."""
    simulator.set_controls("chat", model="sim/choices", recall=0.6, hallucinations=1.5)
    one = client.post(simulator.chat_completions_url, json=describe_body(coco_image, "sim/choices")).json()
    three = client.post(
        simulator.chat_completions_url, json=describe_body(coco_image, "sim/choices", n=3)
    ).json()
    assert [c["index"] for c in three["choices"]] == [0, 1, 2]
    texts = [c["message"]["content"] for c in three["choices"]]
    assert texts[0] == one["choices"][0]["message"]["content"]
    assert len(set(texts)) == 3
    assert three["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]
    assert three["usage"]["completion_tokens"] > one["usage"]["completion_tokens"]
    body = describe_body(coco_image, "sim/choices", n=3, stream=True, stream_options={"include_usage": True})
    with client.stream("POST", simulator.chat_completions_url, json=body) as r:
        _, chunks, done = read_sse(r)
    assert done
    streamed = {i: "" for i in range(3)}
    finishes = {}
    for c in chunks:
        for choice in c["choices"]:
            streamed[choice["index"]] += choice["delta"].get("content", "")
            if choice["finish_reason"]:
                finishes[choice["index"]] = choice["finish_reason"]
    assert [streamed[i] for i in range(3)] == texts and finishes == {0: "stop", 1: "stop", 2: "stop"}
    openrouter = simulator.chat_url.replace("/v1", "/api/v1") + "/chat/completions"
    assert (
        len(client.post(openrouter, json=describe_body(coco_image, "sim/choices", n=3)).json()["choices"])
        == 1
    )


def test_unknown_image_is_a_clear_400(simulator, client):
    import base64

    import cv2

    noise = np.random.default_rng(1).integers(0, 256, size=(64, 96, 3), dtype=np.uint8)
    data = base64.b64encode(cv2.imencode(".png", noise)[1].tobytes()).decode()
    r = client.post(simulator.chat_completions_url, json=describe_body(data))
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "sim_unknown_image"
    assert "not in the simulator's datasets" in r.json()["error"]["message"]


def test_required_api_key(sim_datasets, coco_image):
    with run_simulator(sim_datasets, ports=EPHEMERAL, servers=["chat"], chat_api_key="s3cret") as sim:
        body = describe_body(coco_image, "sim/strong")
        wrong = httpx.post(sim.chat_completions_url, json=body, headers=AUTH)
        # OpenAI's text; a short key is not shown at all (a long one keeps 3 + 4 characters)
        assert wrong.status_code == 401 and wrong.json()["error"] == {
            "message": "Incorrect API key provided: **********. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
        ok = httpx.post(sim.chat_completions_url, json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def _run_answers(sim_datasets, seed: int, images: list[str]) -> list[str]:
    with run_simulator(sim_datasets, ports=EPHEMERAL, servers=["chat"], seed=seed) as sim:
        sim.set_controls("chat", model="sim/det", recall=0.5, hallucinations=1.5, synonym_rate=0.5)
        with httpx.Client(headers=AUTH) as c:
            answers = []
            for image in images:
                for _ in range(
                    2
                ):  # the same request twice: a usable answer ends the attempts, so twice the same
                    r = c.post(sim.chat_completions_url, json=describe_body(image, "sim/det"))
                    answers.append(r.json()["choices"][0]["message"]["content"])
            return answers


def test_determinism_per_seed(sim_datasets, coco_dataset, vlm_gist_dataset):
    images = [
        b64_file(image_path(coco_dataset, "000000037777")),
        b64_file(image_path(vlm_gist_dataset, "00001")),
    ]
    first = _run_answers(sim_datasets, 7, images)
    second = _run_answers(sim_datasets, 7, images)
    other = _run_answers(sim_datasets, 8, images)
    assert first == second
    assert first != other
    assert first[0] == first[1] and first[2] == first[3]  # what a re-run, or an identical model, gets


def test_an_unusable_answer_is_followed_by_fresh_attempts(simulator, client, coco_image):
    """A description without objects is what a client rejects and asks again for: the same request is then
    the next attempt (fresh draws), as after a fault; a usable answer ends the run of attempts."""
    simulator.set_controls("chat", model="sim/blind", recall=0.0, hallucinations=0.0)
    before = len(simulator.request_log)
    for _ in range(3):
        content = client.post(
            simulator.chat_completions_url, json=describe_body(coco_image, "sim/blind")
        ).json()
        assert json.loads(content["choices"][0]["message"]["content"]) == {"objects": []}
    assert [r.attempt for r in simulator.request_log.snapshot()[before:]] == [0, 1, 2]
    simulator.set_controls("chat", model="sim/blind", hallucinations=1.0)  # resets the attempts
    for _ in range(2):
        client.post(simulator.chat_completions_url, json=describe_body(coco_image, "sim/blind"))
    assert [r.attempt for r in simulator.request_log.snapshot()[before + 3 :]] == [0, 0]


def test_per_model_seed_overrides_the_server_seed(simulator, client, coco_image):
    def answer(seed: int) -> str:
        simulator.set_controls("chat", model="sim/seeded", seed=seed, recall=0.5, hallucinations=1.5)
        body = describe_body(coco_image, "sim/seeded")
        return client.post(simulator.chat_completions_url, json=body).json()["choices"][0]["message"][
            "content"
        ]

    first, other, again = answer(5), answer(6), answer(5)
    assert first == again
    assert first != other
