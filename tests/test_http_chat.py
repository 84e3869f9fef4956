"""A chat VLM as a zero-shot classifier (--format openai-chat), against an httpx.MockTransport server of the
OpenAI chat-completions shapes that vLLM, Ollama and hosted APIs share: the request it sends, the scores it reads
from top_logprobs, model discovery, and a whole run."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from backends.base import BackendError
from backends.http import HTTPBackend
from backends.toy import ToyBackend
from blackbox_vp import RunConfig, optimize

BASE = "http://vlm.test:8000"
CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def chat_server(answer, asked: list[dict], models: tuple[str, ...] = ("qwen2-vl",)):
    """``answer(image)`` gives the top_logprobs entries [(token, logprob)] for the image the request carries."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": m, "object": "model"} for m in models]})
        body = json.loads(request.content)
        asked.append(body)
        url = body["messages"][0]["content"][1]["image_url"]["url"]
        image = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
        top = [{"token": token, "logprob": logprob, "bytes": None} for token, logprob in answer(image)]
        return httpx.Response(200, json={"id": "chatcmpl-1", "object": "chat.completion", "choices": [{
            "index": 0, "message": {"role": "assistant", "content": top[0]["token"] if top else ""},
            "logprobs": {"content": [{"token": top[0]["token"] if top else "", "logprob": 0.0, "top_logprobs": top}]},
            "finish_reason": "length"}]})

    return httpx.MockTransport(handle)


def test_the_request_asks_for_one_token_and_the_scores_come_from_top_logprobs(rng):
    asked: list[dict] = []
    def answer(image):
        return [("Three", np.log(0.6)), (" two", np.log(0.3)), ("t", np.log(0.05)), ("cat", np.log(0.05))]

    model = HTTPBackend(BASE, "openai-chat", labels=CLASSES, image_size=(16, 16), transport=chat_server(answer, asked))
    try:
        row = model.query(rng.integers(0, 256, (1, 16, 16, 3), dtype=np.uint8))[0]
    finally:
        model.close()
    body = asked[0]
    assert body["model"] == "qwen2-vl" and body["max_tokens"] == 1 and body["logprobs"] is True
    assert body["top_logprobs"] == 20 and "zero, one, two, three" in body["messages"][0]["content"][0]["text"]
    assert body["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    # 'Three' and ' two' name one class each; 't' begins both two and three: it names neither; 'cat' no class
    assert row[3] == pytest.approx(0.6) and row[2] == pytest.approx(0.3)  # the 0.1 left: 0.0125 for each other class
    assert row.sum() == pytest.approx(1) and row.argmax() == 3


def test_an_answer_naming_no_class_scores_every_class_alike(rng):
    model = HTTPBackend(BASE, "openai-chat", labels=CLASSES, image_size=(16, 16),
                        transport=chat_server(lambda image: [("I", -0.1), ("The", -2.5)], []))
    try:
        np.testing.assert_allclose(model.query(rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)), 0.1)
    finally:
        model.close()


def test_the_model_is_named_or_discovered_and_labels_are_needed():
    never = chat_server(lambda image: [], [], models=("a", "b"))
    with pytest.raises(BackendError, match=r"/v1/models lists 2 models \(a, b\); name the one to ask with --chat-model"):
        HTTPBackend(BASE, "openai-chat", labels=CLASSES, transport=never)
    named = HTTPBackend(f"{BASE}/v1/chat/completions", "openai-chat", labels=CLASSES, chat_model="b", transport=never)
    assert named.codec.model == "b" and named.codec.base == f"{BASE}/v1"
    named.close()
    with pytest.raises(ValueError, match="publishes no label names; pass a labels file .* holding the candidate labels"):
        HTTPBackend(BASE, "openai-chat", chat_model="b", transport=never)


def test_a_run_against_a_chat_vlm_reads_the_classes_it_names():
    """A VLM that names the toy model's top label as a digit's name: the run sees the toy's ranking."""
    toy = ToyBackend(num_labels=10)

    def answer(image: np.ndarray) -> list[tuple[str, float]]:
        probabilities = toy.query(image[None])[0]
        top = np.argsort(-probabilities)[:5]
        return [(CLASSES[i], float(np.log(probabilities[i]))) for i in top]

    settings = dict(optimizer="cma", mapping="frequency", data="digits", budget=600, batch_size=8, grid=4, val=40,
                    test=60, train=200, quiet=True, seed=0)
    model = HTTPBackend(BASE, "openai-chat", labels=CLASSES, image_size=toy.image_size, concurrency=8,
                        transport=chat_server(answer, []))
    try:
        result = optimize(RunConfig(backend="vlm", **settings), backend=model)
    finally:
        model.close()
    assert result.status == "finished" and result.queries_used <= 600
    assert result.backend_stats["images"] == result.queries_used + result.test_queries
