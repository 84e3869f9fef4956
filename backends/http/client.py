"""A backend behind an HTTP URL: one shared httpx client, bounded concurrency, retries, rate limit, cost.

:class:`HTTPBackend` keeps a plain synchronous :meth:`query`; underneath, an asyncio loop on a daemon
thread owns one ``httpx.AsyncClient`` and sends the requests of one call concurrently (at most
``concurrency`` at a time). Images are encoded on one worker thread while earlier requests are in
flight (PIL and zlib release the GIL), so encoding overlaps the network wait instead of preceding it;
one worker keeps the requests in the call's order. The only network boundary is that client's
transport, which tests replace with ``httpx.MockTransport``.

Images per request follow :class:`RequestSizer`: the first request carries one image, and later ones
grow while answers come back well within the timeout, up to the hard cap (``max_batch``).

Secrets: the token comes from an environment variable (``token_env``) or a file only its owner can
read (``token_file``, mode 0600), never from the URL or the command line. It goes into one request
header and nowhere else: error messages, log records and failure events mask it, and a URL with a
password in it is refused. TLS certificates are verified unless ``verify=False`` says otherwise, which
warns (:class:`InsecureTLSWarning`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import os
import re
import ssl
import stat
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import numpy as np
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

import backends.http.protocols  # noqa: F401  (its modules register the formats)
from backends.base import Backend, check_images, check_scores, pixel_size
from backends.errors import (
    BackendError,
    CodecError,
    ConfigurationError,
    RetryableError,
    ScoresError,
)
from backends.http.codecs import FORMATS, Call, CodecOptions, FloatInput, ModelInfo
from backends.http.scores import check_kind, detect, to_probabilities

T = TypeVar("T")
log = logging.getLogger(__name__)
URL_SCHEMES = ("http://", "https://")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

FailureHook = Callable[[dict[str, Any]], None]
"""Called with one event per failed attempt (see :meth:`HTTPBackend._failed`); never sees the token."""


def check_url(url: str) -> None:
    """Refuse a backend URL that is not http(s) or that carries credentials."""
    parts = urlsplit(url)
    if parts.password is not None or "@" in parts.netloc:
        raise ConfigurationError("the backend URL holds credentials (user:password@host); take them out and pass the "
                                 "token through an environment variable (--token-env) or a token file (--token-file)")
    if not is_url(url):
        raise ConfigurationError(f"backend URL {url!r} must start with http:// or https://")


def is_url(name: str) -> bool:
    """Whether a ``--backend`` value is a URL rather than a registered backend name."""
    return name.startswith(URL_SCHEMES)


class InsecureTLSWarning(UserWarning):
    """TLS certificate verification was turned off (``verify=False``)."""

class PartialAnswerWarning(UserWarning):
    """The server's answers name only some of the labels."""


class UnnamedLabelsWarning(UserWarning):
    """The server publishes no label names and none were given: they are the output positions."""


RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
RETRY_TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
EXCERPT_CHARS = 200
STATUS_HINTS = {
    401: "the server wants credentials: put the token in an environment variable and name it with --token-env",
    403: "the token was refused: check the one in the --token-env variable and its permissions",
    404: "check the URL and --format",
    405: "check the URL and --format",
    413: "the request was too large: lower the images per request (--http-max-batch)",
    422: "the server did not accept the request body: check --format",
}


BATCH_LIMIT = re.compile(r"batch[- _]?size must be <= (\d+)", re.IGNORECASE)  # Triton's 400


def batch_limit(error: BackendError) -> int | None:
    """The images per request a 400 answer says the server takes at most, if it says so."""
    found = BATCH_LIMIT.search(str(error)) if error.status == 400 else None
    return int(found.group(1)) if found and int(found.group(1)) > 0 else None


def _retryable(error: BaseException) -> bool:
    return isinstance(error, (RetryableError, *RETRY_TRANSPORT_ERRORS)) and not _certificate_refused(error)


def _certificate_refused(error: BaseException) -> bool:
    """Whether ``error`` comes from a TLS certificate that failed verification (retrying cannot help)."""
    seen: BaseException | None = error
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _check_token(token: str, where: str) -> str:
    """The token without surrounding whitespace; refused (without showing it) if it cannot go in a header."""
    token = token.strip()
    if not token:
        raise ConfigurationError(f"{where} is empty; put the API token there")
    if not all("!" <= char <= "~" for char in token):
        raise ConfigurationError(f"the token in {where} holds a space, a control or a non-ASCII character, which a token "
                         "cannot hold; check what was stored there")
    return token


def read_token_file(path: str | Path) -> str:
    """The token in ``path``: one line, in a regular file that only its owner may read or write (mode 0600 or
    0400; checked on POSIX systems). Errors name the file, never its contents."""
    path = Path(path)
    where = f"token file {path} (--token-file)"
    try:
        with open(path, "rb") as file:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ConfigurationError(f"{where} is not a regular file")
            if os.name == "posix":
                if info.st_mode & 0o077:
                    raise ConfigurationError(f"{where} may be read or written by other users (mode "
                                     f"{stat.S_IMODE(info.st_mode):04o}); make it private with `chmod 600 {path}`")
                if info.st_uid != os.getuid():
                    raise ConfigurationError(f"{where} belongs to another user; keep your own copy, with `chmod 600`")
            raw = file.read(65537)
    except FileNotFoundError:
        raise ConfigurationError(f"{where} does not exist") from None
    except IsADirectoryError:
        raise ConfigurationError(f"{where} is not a regular file") from None
    except PermissionError:
        raise ConfigurationError(f"{where} cannot be read by this user") from None
    if len(raw) > 65536:
        raise ConfigurationError(f"{where} is over 64 KiB: it should hold only the token")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigurationError(f"{where} is not UTF-8 text") from None
    if len(text.strip().splitlines()) > 1:
        raise ConfigurationError(f"{where} holds more than one line; put only the token in it")
    return _check_token(text, where)


def float_input(mean: str | None, std: str | None, layout: str | None) -> FloatInput:
    """``--input-mean``, ``--input-std`` ("R,G,B", on the 0-1 scale) and ``--input-layout``, checked."""
    def channels(text: str | None, option: str) -> tuple[float, float, float] | None:
        if text is None:
            return None
        try:
            values = tuple(float(part) for part in text.split(","))
        except ValueError:
            values = ()
        if len(values) != 3 or not all(math.isfinite(value) for value in values):
            raise ConfigurationError(f"{option} {text!r} must be three numbers R,G,B on the 0-1 scale, e.g. 0.485,0.456,0.406")
        if option == "--input-std" and not all(value > 0 for value in values):
            raise ConfigurationError(f"--input-std {text!r} must be positive")
        return values

    if layout is not None and layout not in ("nchw", "nhwc"):
        raise ConfigurationError(f"--input-layout {layout!r} must be nchw (channels first) or nhwc")
    return FloatInput(channels(mean, "--input-mean"), channels(std, "--input-std"), layout)


def read_torchserve_key(path: str | Path) -> str:
    """The inference key in TorchServe's ``key_file.json`` (written where TorchServe starts, with token
    authorization on, its default since 0.11): ``{"inference": {"key": ...}, "management": ..., "API": ...}``.
    Errors name the file and the field, never the key."""
    path = Path(path)
    where = f"TorchServe key file {path} (--torchserve-key-file)"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"{where} does not exist; TorchServe writes key_file.json in the folder it was started "
                         "from") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigurationError(f"{where} cannot be read as JSON: {type(error).__name__}") from None
    key = data.get("inference", {}).get("key") if isinstance(data, dict) and isinstance(data.get("inference"),
                                                                                            dict) else None
    if not isinstance(key, str):
        raise ConfigurationError(f"{where} has no 'inference' -> 'key' field; is it the key_file.json of TorchServe 0.11 "
                         "or later?")
    return _check_token(key, f"{where}, field inference.key")


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None if absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _estimated_time(response: httpx.Response) -> float | None:
    """Hugging Face's {"error": ..., "estimated_time": seconds} while a model loads."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    value = body.get("estimated_time") if isinstance(body, dict) else None
    return float(value) if isinstance(value, int | float) and math.isfinite(value) and value >= 0 else None


class RateLimiter:
    """Spaces requests so that at most ``requests_per_second`` requests and ``images_per_second`` images go out.

    Each request reserves the next free start time; the gap after it is the larger of
    1 / requests_per_second and images / images_per_second. No bursts.
    """

    def __init__(self, requests_per_second: float | None = None, images_per_second: float | None = None):
        for name, rate in (("rate_limit", requests_per_second), ("image_rate_limit", images_per_second)):
            if rate is not None and not rate > 0:
                raise ConfigurationError(f"{name} must be a positive number per second (or unset), got {rate}")
        self.requests_per_second = requests_per_second
        self.images_per_second = images_per_second
        self._next_start = 0.0

    async def wait(self, images: int) -> None:
        """Wait for this request's turn (runs on one event loop, so the reservation needs no lock)."""
        if self.requests_per_second is None and self.images_per_second is None:
            return
        now = time.monotonic()
        start = max(now, self._next_start)
        gap = max(1.0 / self.requests_per_second if self.requests_per_second else 0.0,
                  images / self.images_per_second if self.images_per_second else 0.0)
        self._next_start = start + gap
        await asyncio.sleep(start - now)


class RequestSizer:
    """How many images the next inference request carries (``limit``), adapted to how fast answers come.

    It starts at 1. After each answered request it becomes the smallest of: twice what it was, the hard
    ``cap``, and the most images a request can carry while its projected time stays under ``share`` of
    ``timeout``, projected at the largest seconds per image (request seconds / images) among the last
    ``RECENT`` answers; never below 1. A timed-out attempt halves it.
    """

    RECENT = 8

    def __init__(self, cap: int, timeout: float, share: float = 0.25):
        self.cap = cap
        self.target = share * timeout
        self.limit = 1
        self.answers = 0
        self._seconds_per_image: deque[float] = deque(maxlen=self.RECENT)

    def answered(self, images: int, seconds: float) -> None:
        """A request of ``images`` images was answered after ``seconds``."""
        self.answers += 1
        self._seconds_per_image.append(seconds / images)
        slowest = max(self._seconds_per_image)
        fits = int(self.target / slowest) if slowest > 0 else self.cap
        self.limit = max(1, min(2 * self.limit, self.cap, fits))

    def timed_out(self) -> None:
        """An attempt timed out waiting for its answer."""
        self.limit = max(1, self.limit // 2)


def _waited_for_answer(error: BaseException) -> bool:
    """Whether ``error`` is a timeout after the request went out (not while connecting or waiting for a
    connection: then nothing was sent), so the server may have scored, and billed, its images."""
    return isinstance(error, httpx.TimeoutException) and not isinstance(error, (httpx.ConnectTimeout,
                                                                                httpx.PoolTimeout))


class _LoopThread:
    """An asyncio event loop on a daemon thread; :meth:`run` hands it a coroutine and waits for the result."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt in the caller: stop the requests too
            raise

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class HTTPBackend(Backend):
    """A model served over HTTP in one of the wire formats of :data:`backends.http.codecs.FORMATS`.

    Labels come from the server's metadata where the format has it (``bbvp``, ``oip-v2`` with label
    parameters), else from ``labels``; an ``oip-v2`` server that only publishes its output shape
    [N, K] gets labels "0".."K-1". ``image_size`` and ``max_batch`` likewise come from the metadata,
    else from the arguments (default 224 x 224 and no limit; one image per request for formats
    without batches). ``max_batch`` is the hard cap on images per request; below it, ``sizer``
    (:class:`RequestSizer`) sets each request's size: the first carries one image, so a misconfigured
    server costs one image, and later ones grow while answers come back within a quarter of ``timeout``.

    Failed requests are retried (connection errors, timeouts, 408/425/429/500/502/503/504) up to
    ``max_attempts`` in all, waiting what Retry-After or Hugging Face's ``estimated_time`` says (at
    most ``max_retry_after`` seconds), else a jittered exponential backoff (``backoff`` seconds
    doubling per attempt, at most ``max_backoff``). A token is read from the environment variable
    ``token_env`` and sent as ``Authorization: Bearer`` (or raw in ``token_header``); it is never
    printed, logged or stored anywhere else; ``token_file`` names a file holding it instead (mode 0600,
    see :func:`read_token_file`), ``torchserve_key_file`` TorchServe's ``key_file.json`` (its inference key). ``verify``: TLS certificate checks on (True, the default), off (False:
    warns :class:`InsecureTLSWarning`), or a CA bundle file to check against.

    Every failed attempt (retried or final) is logged on the ``backends.http.client`` logger and, when
    given, passed to ``on_failure`` as an event dict (see :meth:`_failed`). ``stats()`` reports
    requests, retries, failed attempts, images sent (retries included), images in attempts that timed
    out waiting for the answer (possibly scored and billed), images answered and their cost.
    """

    reports_traffic = True

    def __init__(self, url: str, format: str = "bbvp", *, labels: Sequence[str] | None = None,
                 image_size: tuple[int, int] | None = None, max_batch: int | None = None,
                 concurrency: int = 4, timeout: float = 60.0, max_attempts: int = 6,
                 backoff: float = 0.5, max_backoff: float = 30.0, max_retry_after: float = 60.0,
                 rate_limit: float | None = None, image_rate_limit: float | None = None,
                 cost_per_image: float = 0.0, token_env: str | None = None, token_file: str | Path | None = None,
                 torchserve_key_file: str | Path | None = None, token_header: str = "Authorization",
                 verify: bool | str | Path = True, scores: str = "auto", input_mean: str | None = None,
                 input_std: str | None = None, input_layout: str | None = None, chat_model: str | None = None,
                 on_failure: FailureHook | None = None, transport: httpx.AsyncBaseTransport | None = None):
        check_url(url)
        for name, value in (("concurrency", concurrency), ("max_attempts", max_attempts), ("max_batch", max_batch)):
            if value is not None and value < 1:
                raise ConfigurationError(f"{name} must be at least 1, got {value}")
        if not (timeout > 0 and backoff >= 0 and max_backoff >= 0 and max_retry_after >= 0 and cost_per_image >= 0):
            raise ConfigurationError("timeout must be > 0; backoff, max_backoff, max_retry_after and cost_per_image >= 0")
        self.url = url.rstrip("/")
        self.format = format
        options = CodecOptions(float_input=float_input(input_mean, input_std, input_layout), chat_model=chat_model)
        self.codec = FORMATS.get(format)(self.url, options)
        self.score_kind: str | None = scores
        if check_kind(scores) == "auto":  # the first answer tells, where the format passes on the model's outputs
            self.score_kind = None if self.codec.model_outputs else "probabilities"
        self.max_attempts = max_attempts
        self.cost_per_image = cost_per_image
        self.requests = 0  # HTTP requests sent, retries and metadata included
        self.retries = 0
        self.failures = 0  # failed attempts, retried or not
        self.images_sent = 0  # images in inference requests sent, retries included: what went over the wire
        self.images_timed_out = 0  # images in attempts that timed out after going out: possibly scored and billed
        self.images_answered = 0  # images in answered requests: what the server scored for us
        self.partial_answers: int | None = None  # labels named in answers that name only some (once said)
        self.on_failure = on_failure
        self._backoff = wait_random_exponential(multiplier=backoff, max=max_backoff)
        self._max_retry_after = max_retry_after
        self._limiter = RateLimiter(rate_limit, image_rate_limit)
        self._concurrency = concurrency
        self._semaphore = asyncio.Semaphore(concurrency)
        self._token = self._read_token(token_env, token_file, torchserve_key_file)
        tls = self._tls(verify)
        self._loop = _LoopThread(name=f"bbvp-http {self.url}")
        self._encoder = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="bbvp-encode")
        self._client = httpx.AsyncClient(
            headers=self._auth_headers(token_header), transport=transport, follow_redirects=False, verify=tls,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency))
        try:
            self._configure(self._discover(), labels, image_size, max_batch, timeout)
        except BaseException:
            self.close()
            raise

    def _auth_headers(self, token_header: str) -> dict[str, str]:
        """The token's header (none without a token); warns where it would cross the network unencrypted."""
        if self._token is None:
            return {}
        parts = urlsplit(self.url)
        if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
            log.warning("the API token goes to %s over plain http, readable on the way; use https", self.url)
        is_bearer = token_header.lower() == "authorization"
        return {token_header: f"Bearer {self._token}" if is_bearer else self._token}

    @staticmethod
    def _read_token(token_env: str | None, token_file: str | Path | None,
                    torchserve_key_file: str | Path | None) -> str | None:
        if sum(source is not None for source in (token_env, token_file, torchserve_key_file)) > 1:
            raise ConfigurationError("give the token in one place: an environment variable (--token-env), a file "
                             "(--token-file) or TorchServe's key file (--torchserve-key-file)")
        if token_file is not None:
            return read_token_file(token_file)
        if torchserve_key_file is not None:
            return read_torchserve_key(torchserve_key_file)
        if token_env is None:
            return None
        if not os.environ.get(token_env, "").strip():
            raise ConfigurationError(f"environment variable {token_env} (--token-env) is empty or not set; "
                             "put the API token there")
        return _check_token(os.environ[token_env], f"environment variable {token_env} (--token-env)")

    def _tls(self, verify: bool | str | Path) -> bool | ssl.SSLContext:
        """httpx's ``verify``: True, False (warned) or an SSL context trusting the CA bundle file ``verify``."""
        if verify is True:
            return True
        if verify is False:
            message = (f"TLS certificate verification is off for {self.url}: anyone on the way can read and change "
                       "the images, the scores and the token")
            warnings.warn(message, InsecureTLSWarning, stacklevel=3)
            log.warning(message)
            return False
        if isinstance(verify, str | Path):
            try:
                return ssl.create_default_context(cafile=str(verify))
            except (OSError, ssl.SSLError) as error:
                raise ConfigurationError(f"cannot use CA bundle {verify} to verify TLS certificates: {error}") from error
        raise TypeError(f"verify must be True, False or a CA bundle path, got {type(verify).__name__}")

    def _mask(self, text: str) -> str:
        """``text`` with the token (if any) replaced by [token]."""
        return text.replace(self._token, "[token]") if self._token else text

    def _discover(self) -> ModelInfo:
        """Run the codec's metadata requests (from the calling thread); a 404 reaches the codec as None."""
        def fetch(call: Call) -> Any:
            return self._loop.run(self._request(call, count=0, missing_ok=True))

        try:
            return self.codec.discover(fetch)
        except CodecError as error:
            raise BackendError(self._mask(f"{self.format} server at {self.url}: {error}")) from None

    def _configure(self, info: ModelInfo, labels: Sequence[str] | None, image_size: tuple[int, int] | None,
                   max_batch: int | None, timeout: float) -> None:
        """Settle labels, image size and batch limit from the server's metadata and the arguments; the request
        sizer keeps each request's projected time within its share of ``timeout`` (the seconds to each answer)."""
        where = f"{self.format} server at {self.url}"
        if info.labels is not None and labels is not None and list(labels) != info.labels:
            first = next((i for i, (a, b) in enumerate(zip(labels, info.labels)) if a != b), None)
            raise ConfigurationError(f"the labels given ({len(labels)}) do not match the {len(info.labels)} that {where} "
                             f"publishes" + (f" (first difference at index {first})" if first is not None else "")
                             + "; drop the labels file or fix it")
        chosen = info.labels or (list(labels) if labels is not None else None)
        if chosen is None and info.num_labels is not None:
            chosen = [str(i) for i in range(info.num_labels)]
            message = (f"{where} publishes no label names, only {info.num_labels} scores: they are named "
                       f"'0'..'{info.num_labels - 1}'. No local surrogate can be matched to such labels (the guided "
                       "search's prior is off, the shadow's adapter starts from zero); pass --labels FILE with the "
                       "model's label names, in its output order")
            warnings.warn(message, UnnamedLabelsWarning, stacklevel=3)
            log.warning(message)
        if chosen is None:
            raise ConfigurationError(f"{where} publishes no label names; pass a labels file (one label per line)"
                             + (" holding the candidate labels" if self.format in ("hf-zero-shot", "openai-chat")
                                else ""))
        if info.num_labels is not None and len(chosen) != info.num_labels:
            raise ConfigurationError(f"{len(chosen)} labels given, but {where} scores {info.num_labels}")
        if self.codec.keyed and len(set(chosen)) != len(chosen):
            repeated = sorted({label for label in chosen if chosen.count(label) > 1})
            log.warning("%s: the labels %s appear more than once, as in the standard ImageNet list; an answer that "
                        "names its labels cannot say which is meant, so the score goes to the first of each and the "
                        "others count as left out; give them distinct names (as 'crane bird' and 'crane') in both "
                        "the server's and the --labels file to tell them apart", where, ", ".join(map(repr, repeated)))
        if info.image_size is not None and image_size is not None and tuple(image_size) != info.image_size:
            raise ConfigurationError(f"image_size {tuple(image_size)} given, but {where} takes {info.image_size}")
        self.labels = chosen
        self.image_size = info.image_size or (pixel_size(image_size) if image_size is not None else (224, 224))
        limits = [limit for limit in (info.max_batch, max_batch, None if self.codec.batched else 1) if limit]
        self.max_batch = min(limits) if limits else sys.maxsize
        self.sizer = RequestSizer(self.max_batch, timeout)

    def query(self, images: np.ndarray) -> np.ndarray:
        """Score ``images`` (uint8, N x H x W x 3) in requests of ``sizer.limit`` images, sent concurrently."""
        images = check_images(images)
        if len(images) == 0:
            return np.zeros((0, self.num_labels))
        return np.concatenate(self._loop.run(self._score_all(images)), axis=0)

    def _query_batch(self, images: np.ndarray) -> np.ndarray:
        return self.query(images)

    async def _score_all(self, images: np.ndarray) -> list[np.ndarray]:
        """The scores of ``images`` in call order, in parts of one request each.

        ``concurrency`` senders each cut the next ``sizer.limit`` images off the call, send them and
        repeat, so every request takes the limit as the answers so far left it. Until the first answer
        of this backend, one request goes alone.
        """
        parts: dict[int, np.ndarray] = {}
        cursor = 0

        async def sender() -> None:
            nonlocal cursor
            while cursor < len(images):
                start = cursor
                cursor = min(len(images), start + self.sizer.limit)
                parts[start] = await self._score(images[start:cursor])

        if self.sizer.answers == 0:
            cursor = min(len(images), self.sizer.limit)
            parts[0] = await self._score(images[:cursor])
        tasks = [asyncio.ensure_future(sender()) for _ in range(self._concurrency)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [parts[start] for start in sorted(parts)]

    async def _score(self, chunk: np.ndarray) -> np.ndarray:
        """Encode ``chunk`` on the encoder thread (in call order), send it, decode and check the scores. A
        request refused for its batch size (Triton's 400 "batch-size must be <= N") lowers the cap to N and
        goes out again in parts: nothing was scored, so nothing is lost."""
        count = len(chunk)
        call = await asyncio.get_running_loop().run_in_executor(self._encoder, self.codec.encode, chunk, self.labels)
        try:
            payload = await self._request(call, count)
        except BackendError as error:
            limit = batch_limit(error)
            if limit is None or limit >= count:
                raise
            self.max_batch = self.sizer.cap = min(self.max_batch, limit)
            self.sizer.limit = min(self.sizer.limit, limit)
            log.warning("%s takes at most %d images per request: lowered to that, and the %d images go again in "
                        "parts", call.url, limit, count)
            return np.concatenate([await self._score(chunk[start : start + limit]) for start in range(0, count, limit)])
        try:
            scores = self._probabilities(self.codec.decode(payload, count, self.labels), call.url)
            self._say_if_partial(call.url)
            return check_scores(scores, count, self.num_labels, source=f"{self.format} server at {call.url}")
        except BackendError as error:
            if isinstance(error, CodecError):
                message = f"{self.format} answer from {call.url} does not fit the format: {error}"
            elif isinstance(error, ScoresError):
                message = f"{self.format} server at {call.url}: {error}"
            else:
                message = str(error)
            # Status 200: an answer came, but not one to use; sending it again would not help.
            failure = BackendError(self._mask(message), status=200)
            self._failed(call, count, None, failure, retry=False)
            raise failure from None

    def _say_if_partial(self, url: str) -> None:
        """Once: an answer that names only k of the K labels, and what that costs."""
        reported = self.codec.reported
        if reported is None or reported >= self.num_labels or self.partial_answers:
            return
        self.partial_answers = reported
        message = (f"{url} answers with only {reported} of its {self.num_labels} labels; the others get an even "
                   "share of what is left (see 'Partial answers' in the README). The output mapping then sees far "
                   "less: on digits behind TorchServe's stock top-5 answer a run reached 0.356 against 0.875 with "
                   f"every label. If you run the server, have it answer all {self.num_labels} (TorchServe: topk in "
                   "the handler)")
        warnings.warn(message, PartialAnswerWarning, stacklevel=2)
        log.warning(message)

    def _probabilities(self, scores: np.ndarray, url: str) -> np.ndarray:
        """The answer's scores as probabilities, of the kind ``--scores`` names; under 'auto' the first answer's
        kind holds for the backend's life (see :mod:`backends.http.scores`)."""
        if not np.all(np.isfinite(scores)):
            raise ScoresError("it returned NaN or infinite scores")
        if self.score_kind is None and len(scores):
            self.score_kind = detect(scores)
            if self.score_kind != "probabilities":
                log.warning("%s answers with scores that are not probabilities (a value below 0 or above 1): they "
                            "are taken as logits and turned into probabilities by a softmax; --scores sets the kind",
                            url)
        return to_probabilities(scores, self.score_kind or "probabilities")

    async def _request(self, call: Call, count: int, missing_ok: bool = False) -> Any:
        """Send ``call`` with retries; the parsed JSON answer (None for a 404 when ``missing_ok``).

        Every exception that leaves is a :class:`BackendError` whose message names the URL and the
        status or error, with the token masked; the chained cause is dropped, as it may hold request
        headers.
        """
        retrying = AsyncRetrying(stop=stop_after_attempt(self.max_attempts), wait=self._wait,
                                 retry=retry_if_exception(_retryable),
                                 before_sleep=self._count_retry, reraise=True)
        attempts = 0

        async def attempt() -> Any:
            nonlocal attempts
            attempts += 1
            started = time.monotonic()
            try:
                return await self._send(call, count, missing_ok)
            except Exception as error:
                if count and _waited_for_answer(error):
                    self.images_timed_out += count
                    self.sizer.timed_out()
                retry = _retryable(error) and attempts < self.max_attempts
                self._failed(call, count, attempts, error, retry, seconds=time.monotonic() - started)
                raise

        status = None
        try:
            return await retrying(attempt)
        except RetryableError as error:
            message, status = f"{error} (gave up after {self.max_attempts} attempts)", error.status
        except RETRY_TRANSPORT_ERRORS as error:
            if _certificate_refused(error):
                message = (f"cannot verify the TLS certificate of {call.url}: {error}; if the server uses a private "
                           "CA, pass its certificate bundle (verify=PATH), or turn verification off knowingly")
            else:
                message = (f"no answer from {call.url}: {type(error).__name__}: {str(error) or 'no details'} (gave up "
                           f"after {self.max_attempts} attempts); check that the server is up and reachable")
        except httpx.HTTPError as error:
            message = f"cannot send to {call.url}: {type(error).__name__}: {error}"
        except BackendError as error:
            message, status = str(error), error.status
        raise BackendError(self._mask(message), status) from None  # the last HTTP status, None: no answer came

    def _failed(self, call: Call, count: int, attempt: int | None, error: BaseException, retry: bool,
                seconds: float | None = None, status: int | None = None) -> None:
        """Count, log and report one failed attempt: an event dict with ``url``, ``attempt`` (of
        ``max_attempts``; None for an answer refused after it arrived), ``images``, ``status`` (the HTTP
        status, None when no answer came), ``error`` (the message, token masked), ``retry`` (whether it
        will be retried) and ``seconds`` (the attempt's duration, if known). ``on_failure`` runs on the
        client's event-loop thread while the caller waits for :meth:`query`."""
        self.failures += 1
        if status is None:
            status = getattr(error, "status", None)
        described = (str(error) if isinstance(error, BackendError)
                     else f"{type(error).__name__}: {str(error) or 'no details'}")
        event = {"event": "http_failure", "url": call.url, "attempt": attempt, "max_attempts": self.max_attempts,
                 "images": count, "status": status, "error": self._mask(described), "retry": retry,
                 "seconds": None if seconds is None else round(seconds, 3)}
        log.log(logging.INFO if retry else logging.WARNING, "%s attempt %s/%s failed%s: %s", call.url,
                attempt if attempt is not None else "-", self.max_attempts, ", retrying" if retry else "",
                event["error"])
        if self.on_failure is not None:
            self.on_failure(event)

    def _count_retry(self, state: RetryCallState) -> None:
        self.retries += 1

    def _wait(self, state: RetryCallState) -> float:
        """Seconds before the next attempt: the server's hint (clamped) or a jittered exponential backoff."""
        error = state.outcome.exception() if state.outcome else None
        hint = error.retry_after if isinstance(error, RetryableError) else None
        return min(hint, self._max_retry_after) if hint is not None else self._backoff(state)

    async def _send(self, call: Call, count: int, missing_ok: bool) -> Any:
        async with self._semaphore:
            await self._limiter.wait(count)
            self.requests += 1
            self.images_sent += count
            started = time.monotonic()
            response = await self._client.request(call.method, call.url, json=call.json, content=call.content,
                                                  headers=call.headers)
            seconds = time.monotonic() - started
        status = response.status_code
        if status in RETRY_STATUSES:
            hint = parse_retry_after(response.headers.get("retry-after"))
            if hint is None and status == 503:
                hint = _estimated_time(response)
            raise RetryableError(f"{call.url} answered {status} {response.reason_phrase}: {self._excerpt(response)}",
                                 status, hint)
        if status == 404 and missing_ok:
            return None
        if not 200 <= status < 300:
            advice = self._hint(status, call, count, response)
            raise BackendError(self._mask(f"{call.url} answered {status} {response.reason_phrase}: "
                                          f"{self._excerpt(response)}" + (f"; {advice}" if advice else "")), status)
        try:
            payload = json.loads(response.content)
        except ValueError as error:
            raise BackendError(f"{call.url} answered {status} with malformed JSON ({len(response.content)} "
                               f"bytes, {error}): {self._excerpt(response)}", status) from None
        self.images_answered += count
        if count:
            self.sizer.answered(count, seconds)
        return payload

    def _hint(self, status: int, call: Call, count: int, response: httpx.Response) -> str:
        """What to do about a failed status: the table's hint, unless this request's situation says more."""
        if 300 <= status < 400:
            return f"redirects are not followed: use the final URL ({response.headers.get('location', '?')})"
        if status == 403 and self._token is None:
            return ("access refused, and no token was given" + (": this metadata path is locked; give the model's own "
                    "URL (for oip-v2: .../v2/models/MODEL)" if not count else "; if the server wants one, put it in "
                    "an environment variable named by --token-env, or in a --token-file"))
        if status == 400 and "InvalidKeyException" in response.text:  # TorchServe's answer to a missing or bad key
            return ("TorchServe refused the key: it turns token authorization on by default; pass its inference key "
                    "with --torchserve-key-file key_file.json (or --token-env)")
        return STATUS_HINTS.get(status, "")

    def _excerpt(self, response: httpx.Response) -> str:
        """The start of a body, on one line, with the token masked (a server may echo it)."""
        text = self._mask(" ".join(response.content[:65536].decode("utf-8", errors="replace").split()))
        text = text[:EXCERPT_CHARS] + ("..." if len(text) > EXCERPT_CHARS else "")
        return repr(text) if text else "(empty body)"

    @property
    def spent(self) -> float:
        """Cost of the images answered so far: images x cost_per_image."""
        return self.images_answered * self.cost_per_image

    def stats(self) -> dict[str, float | str | None]:
        """Requests sent (retries and metadata included), retries, failed attempts, images sent (retries
        included), images timed out (in attempts that timed out waiting for the answer: the server may
        have scored, and billed, them), images answered, their cost, and the kind of scores the server
        sends (None under 'auto' before the first answer)."""
        return {"requests": self.requests, "retries": self.retries, "failures": self.failures,
                "images_sent": self.images_sent, "images_timed_out": self.images_timed_out,
                "images": self.images_answered, "cost": self.spent, "scores": self.score_kind}

    def close(self) -> None:
        """Close the connections and stop the event loop thread. Safe to call twice."""
        if self._loop.loop.is_closed():
            return
        self._loop.run(self._client.aclose())
        self._loop.close()
        self._encoder.shutdown(wait=True)

    def __repr__(self) -> str:
        return f"HTTPBackend({self.url!r}, format={self.format!r})"

