"""Backends behind a URL (``--backend http://...``) and the server that puts a local backend behind one.

``make_http_backend(url, format=..., ...)`` builds an :class:`HTTPBackend` from run options whose
names are the ``RunConfig`` fields listed in ``HTTP_OPTIONS``. The server (``server.py``) needs
FastAPI and uvicorn and is imported only by ``bbvp serve``.
"""

from __future__ import annotations

from collections.abc import Sequence

from backends.http.client import (
    FailureHook,
    HTTPBackend,
    InsecureTLSWarning,
    PartialAnswerWarning,
    UnnamedLabelsWarning,
    is_url,
    read_token_file,
)
from backends.http.codecs import FORMATS, load_labels

HTTP_OPTIONS = ("format", "labels", "token_env", "token_file", "torchserve_key_file", "token_header", "tls_verify", "rate_limit",
                "image_rate_limit", "cost_per_image", "http_max_batch", "http_concurrency", "http_timeout",
                "http_attempts", "scores", "input_mean", "input_std", "input_layout",
                "chat_model")
"""The run options (``RunConfig`` fields) that configure an HTTP backend. ``tls_verify`` is a switch there
(``--tls-verify``/``--no-tls-verify``); a CA bundle path is an argument of :func:`make_http_backend` only."""


def make_http_backend(url: str, format: str = "bbvp", labels: str | Sequence[str] | None = None,
                      token_env: str | None = None,
                      token_file: str | None = None, torchserve_key_file: str | None = None,
                      token_header: str = "Authorization",
                      tls_verify: bool | str = True, rate_limit: float | None = None,
                      image_rate_limit: float | None = None, cost_per_image: float = 0.0,
                      http_max_batch: int | None = None, http_concurrency: int = 4, http_timeout: float = 60.0,
                      http_attempts: int = 6, scores: str = "auto", input_mean: str | None = None,
                      input_std: str | None = None, input_layout: str | None = None, chat_model: str | None = None,
                      on_failure: FailureHook | None = None) -> HTTPBackend:
    """An :class:`HTTPBackend` for ``url`` from run options; ``labels`` is a labels file (see ``load_labels``) or the
    labels themselves,
    ``token_file`` a file holding the token (mode 0600), ``tls_verify`` True, False (warned) or a CA bundle
    file, ``scores`` the kind of numbers the server answers with (:mod:`backends.http.scores`), ``on_failure``
    gets one event per failed attempt (for the run journal)."""
    labels = load_labels(labels) if isinstance(labels, str) else labels
    return HTTPBackend(url, format, labels=labels, token_env=token_env,
                       token_file=token_file, torchserve_key_file=torchserve_key_file, token_header=token_header, verify=tls_verify, rate_limit=rate_limit,
                       image_rate_limit=image_rate_limit, cost_per_image=cost_per_image, max_batch=http_max_batch,
                       concurrency=http_concurrency, timeout=http_timeout, max_attempts=http_attempts,
                       scores=scores, input_mean=input_mean, input_std=input_std, input_layout=input_layout,
                       chat_model=chat_model, on_failure=on_failure)


__all__ = ["FORMATS", "HTTP_OPTIONS", "FailureHook", "HTTPBackend", "InsecureTLSWarning", "PartialAnswerWarning",
           "UnnamedLabelsWarning",
           "is_url", "load_labels", "make_http_backend", "read_token_file"]
