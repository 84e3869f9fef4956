"""A chat VLM asked to name the class, over the OpenAI-compatible chat API: ``--format openai-chat``.

The server's side, under ``/openai`` (so that it does not meet KServe V1's ``/v1/models``): ``GET
/openai/v1/models`` lists the served model; ``POST /openai/v1/chat/completions`` with one image as a data URL
answers with the most probable label as the one-token content, and where ``logprobs`` is asked, the
``top_logprobs`` most probable labels (at most :data:`CHAT_TOP_LOGPROBS`) as whole-name tokens with their log
probabilities. The question is not read: the served model answers over its own labels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from backends.base import PROBABILITY_FLOOR
from backends.errors import CodecError
from backends.http.codecs import FORMATS, Call, Codec, CodecOptions, Fetch, ModelInfo, fill_partial, png_base64
from backends.http.serving import Body, RequestError, Route, ServedModel, base64_field, json_object

CHAT_QUESTION = ("Which one of these is shown in the image: {classes}? Answer with exactly one of them, "
                 "nothing else.")
CHAT_TOP_LOGPROBS = 20  # the most that OpenAI's API returns; other servers take it as asked


@FORMATS.register("openai-chat", "a chat VLM as a zero-shot classifier (OpenAI-compatible /v1/chat/completions: vLLM, "
                         "Ollama, hosted APIs): the labels are the class names asked for; top_logprobs back")
class OpenAIChatCodec(Codec):
    """``POST {base}/v1/chat/completions`` with the image as a data URL and :data:`CHAT_QUESTION`, asking for
    one token and its ``top_logprobs``. A class scores the probability of the answer tokens that are its name or
    begin its name and no other class's (case and spaces aside); classes no token names share what is left
    (:func:`fill_partial`); an answer naming no class scores every class alike (the model did not know).

    The URL is the server's (``http://host:8000``, ``.../v1``) or the endpoint itself; ``model`` (``--chat-model``)
    names the model, else the one model that ``GET {base}/v1/models`` lists. Class names should differ in their
    first word, since the answer is read from its first token.
    """

    batched = False
    keyed = True

    def __init__(self, url: str, options: CodecOptions | None = None):
        super().__init__(url, options)
        path = urlsplit(self.url).path
        base = self.url[: -len("/chat/completions")] if path.endswith("/chat/completions") else self.url
        self.base = base if base.endswith("/v1") else f"{base}/v1"
        self.model = self.options.chat_model

    def discover(self, fetch: Fetch) -> ModelInfo:
        if self.model is None:
            where = f"{self.base}/models"
            listing = fetch(Call("GET", where))
            models = listing.get("data") if isinstance(listing, dict) else None
            names = [entry.get("id") for entry in models if isinstance(entry, dict)] if isinstance(models, list) else []
            if len(names) != 1 or not isinstance(names[0], str):
                raise CodecError(f"{where} lists {len(names)} models ({', '.join(map(str, names[:5])) or 'none'}); "
                                 "name the one to ask with --chat-model")
            self.model = names[0]
        return ModelInfo()

    def encode(self, images: np.ndarray, labels: Sequence[str]) -> Call:
        question = CHAT_QUESTION.format(classes=", ".join(labels))
        content = [{"type": "text", "text": question},
                   {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png_base64(images[0])}"}}]
        return Call("POST", f"{self.base}/chat/completions",
                    json={"model": self.model, "messages": [{"role": "user", "content": content}], "max_tokens": 1,
                          "temperature": 0, "logprobs": True, "top_logprobs": CHAT_TOP_LOGPROBS})

    def decode(self, payload: Any, count: int, labels: Sequence[str]) -> np.ndarray:
        try:
            first = payload["choices"][0]["logprobs"]["content"][0]
            candidates = first.get("top_logprobs") or [first]
        except (KeyError, IndexError, TypeError):
            raise CodecError("the answer has no choices[0].logprobs.content[0] (ask a server that returns "
                             "logprobs; vLLM, Ollama and OpenAI do)") from None
        names = [label.strip().lower() for label in labels]
        reported: dict[str, float] = {}
        for candidate in candidates:
            if not isinstance(candidate, dict) or not isinstance(candidate.get("token"), str):
                raise CodecError(f"a top_logprobs entry is not {{'token', 'logprob'}}: {candidate!r}")
            token = candidate["token"].strip().lower()
            exact = [i for i, name in enumerate(names) if name == token]  # a whole name: no other class's
            matching = exact or [i for i, name in enumerate(names) if token and name.startswith(token)]
            logprob = candidate.get("logprob")
            if len(matching) == 1 and isinstance(logprob, int | float) and not isinstance(logprob, bool):
                label = labels[matching[0]]
                reported[label] = reported.get(label, 0.0) + float(np.exp(min(logprob, 0.0)))
        if not reported:  # no token names a class: no information about this image
            return np.full((1, len(labels)), 1.0 / len(labels))
        return fill_partial(reported, labels)[None]  # partial by nature (20 tokens at most): not warned about


# --- the server's side ---------------------------------------------------------------------------

def model_list(model: ServedModel) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": model.name, "object": "model", "owned_by": "blackbox-vp"}]}


def data_url_image(request: dict[str, Any]) -> bytes:
    """The bytes of the one image, a base64 data URL, in the request's messages."""
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list")
    urls = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "image_url":
                image = part.get("image_url")
                urls.append(image.get("url") if isinstance(image, dict) else None)
    if len(urls) != 1:
        raise RequestError(400, f"the messages hold {len(urls)} images; this model answers about exactly one")
    prefix, _, data = urls[0].partition(";base64,") if isinstance(urls[0], str) else ("", "", "")
    if not prefix.startswith("data:image/") or not data:
        raise RequestError(400, "the image_url must be a data URL, data:image/png;base64,...")
    return base64_field(data, "the image_url's data")


def asked_logprobs(request: dict[str, Any]) -> int:
    """How many top_logprobs to answer with; 0 where logprobs are not asked for."""
    count = request.get("top_logprobs", 0)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= CHAT_TOP_LOGPROBS:
        raise RequestError(400, f"top_logprobs must be an integer from 0 to {CHAT_TOP_LOGPROBS}, got {count!r}")
    return count if request.get("logprobs") is True else 0


def completion(model: ServedModel, body: Body) -> tuple[dict[str, Any], int]:
    request = json_object(body, '{"model", "messages": [...]}')
    if "model" in request:
        model.check_name(request["model"])
    count = asked_logprobs(request)
    scores = model.score(model.decode([data_url_image(request)]))[0]
    order = np.argsort(-scores, kind="stable")
    tokens = [{"token": model.labels[i], "logprob": math.log(max(float(scores[i]), PROBABILITY_FLOOR))}
              for i in order[: max(count, 1)]]
    logprobs = {"content": [{**tokens[0], "top_logprobs": tokens[:count]}]} if request.get("logprobs") is True else None
    choice = {"index": 0, "message": {"role": "assistant", "content": tokens[0]["token"]}, "logprobs": logprobs,
              "finish_reason": "length"}
    return {"id": "chatcmpl-bbvp", "object": "chat.completion", "created": int(time.time()), "model": model.name,
            "choices": [choice]}, 1


ROUTES = [Route("GET", "/openai/v1/models", model_list),
          Route("POST", "/openai/v1/chat/completions", completion, infers=True)]
