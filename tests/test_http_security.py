"""Secrets and hostile input: where the token may come from, that it shows up nowhere, TLS verification,
and a reference server that answers malformed requests with a 4xx JSON error, never a traceback."""

import base64
import inspect
import io
import ipaddress
import json
import logging
import os
import traceback

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loopback import Fault, ScriptedServer, always, running
from PIL import Image
from starlette.testclient import TestClient

from backends.base import Backend, BackendError
from backends.http import HTTPBackend, make_http_backend
from backends.http.client import InsecureTLSWarning, read_token_file
from backends.http.codecs import encode_png, png_base64
from backends.http.server import create_app, serve, serve_command
from backends.toy import ToyBackend

SECRET = "sk-LEAKCHECK-7f3a9c"
TOY = ToyBackend(num_labels=5, image_size=(8, 8))
IMAGES = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
ENV = "BBVP_SECURITY_TEST_TOKEN"


# --- where the token comes from -------------------------------------------------------------------

def token_file(tmp_path, content: str | bytes = SECRET + "\n", mode: int = 0o600):
    path = tmp_path / "token"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    path.chmod(mode)
    return path


def sent_header(**options) -> str:
    """The Authorization header the backend sends (to a mock server)."""
    seen = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"labels": TOY.labels, "image_size": [8, 8]})

    HTTPBackend("https://model.test", "bbvp", transport=httpx.MockTransport(handle), **options).close()
    return seen[0]


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_token_file_must_be_private_and_hold_one_line(tmp_path):
    assert read_token_file(token_file(tmp_path)) == SECRET  # 0600, trailing newline dropped
    assert read_token_file(token_file(tmp_path, mode=0o400)) == SECRET
    assert sent_header(token_file=token_file(tmp_path)) == f"Bearer {SECRET}"
    for mode in (0o644, 0o640, 0o604, 0o660, 0o666):
        path = token_file(tmp_path, mode=mode)
        with pytest.raises(ValueError, match=rf"token file {path} .* may be read or written by other users "
                                             rf"\(mode {mode:04o}\); make it private with `chmod 600 {path}`"):
            read_token_file(path)
    bad = {
        "": r"is empty", "  \n": r"is empty", f"{SECRET}\nsecond": r"more than one line",
        b"\xff\xfe": r"is not UTF-8 text", "x" * 70000: r"over 64 KiB", f"{SECRET}\x07": r"a control",
        f"{SECRET}é": r"control or a non-ASCII", f"{SECRET} more": r"holds a space",
    }
    for content, match in bad.items():
        with pytest.raises(ValueError, match=match) as error:
            read_token_file(token_file(tmp_path, content))
        assert SECRET not in str(error.value) and "x" * 20 not in str(error.value)
    with pytest.raises(ValueError, match=r"does not exist"):
        read_token_file(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"is not a regular file"):
        read_token_file(tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="needs root to give the file to another user")
def test_a_token_file_of_another_user_is_refused(tmp_path):
    path = token_file(tmp_path)
    os.chown(path, 65534, 65534)
    with pytest.raises(ValueError, match="belongs to another user"):
        read_token_file(path)


def test_the_token_comes_from_one_named_place_only(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, f"  {SECRET}\n")
    assert sent_header(token_env=ENV) == f"Bearer {SECRET}"
    assert sent_header() is None  # nothing named, nothing sent, whatever the environment holds
    with pytest.raises(ValueError, match=r"give the token in one place: an environment variable .*, a file .* or "
                                         r"TorchServe's key file"):
        sent_header(token_env=ENV, token_file=token_file(tmp_path))
    monkeypatch.setenv(ENV, f"{SECRET}\r\nX-Injected: 1")  # would smuggle a header in
    with pytest.raises(ValueError, match=rf"the token in environment variable {ENV} .* a control") as error:
        sent_header(token_env=ENV)
    assert SECRET not in str(error.value)
    with pytest.raises(ValueError, match=r"holds credentials .*--token-env.*--token-file") as error:
        HTTPBackend(f"https://user:{SECRET}@model.test", transport=httpx.MockTransport(lambda r: None))
    assert SECRET not in str(error.value)
    signature = inspect.signature(make_http_backend)
    assert {"token_env", "token_file"} <= set(signature.parameters) and "token" not in signature.parameters


# --- the token never shows ------------------------------------------------------------------------

def echo(status: int, body: str = "", headers: dict | None = None):
    """A handler that answers the metadata, then ``status`` with ``body`` ("{auth}" becomes the header sent)."""
    def handle(request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("authorization", "")
        if request.method == "GET":
            return httpx.Response(200, json={"labels": TOY.labels, "image_size": [8, 8]})
        text = body.replace("{auth}", auth)
        answer_headers = {name: value.replace("{auth}", auth) for name, value in (headers or {}).items()}
        return httpx.Response(status, text=text, headers=answer_headers)

    return handle


def hf_answer(answer) -> callable:
    return lambda request: httpx.Response(200, json=json.loads(json.dumps(answer).replace("{auth}", SECRET)))


LEAKY_ANSWERS = {
    "401 echoing the header": echo(401, "bad credentials {auth}"),
    "403 echoing the header": echo(403, '{"error": "token {auth} revoked"}'),
    "500 echoing the header, retried": echo(500, "crash while handling {auth}"),
    "429 echoing the header": echo(429, "slow down {auth}", {"Retry-After": "0"}),
    "redirect to a URL with the token": echo(302, "", {"Location": "https://elsewhere/?key={auth}"}),
    "malformed JSON echoing the header": echo(200, '{"scores": "{auth}'),
    "scores that are the token": echo(200, '{"scores": [["{auth}"]]}'),
    "a wrong shape": echo(200, '{"scores": [[0.5]], "note": "{auth}"}'),
}


def leaks(error: BaseException, caplog, events) -> list[str]:
    """Every place the secret shows: the exception (with its whole chain, as a traceback prints it), its
    repr, the log records (any logger, DEBUG and up) and the failure events."""
    places = {"traceback": "".join(traceback.format_exception(error)), "repr": repr(error),
              "log": "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records), "events": json.dumps(events)}
    return [where for where, text in places.items() if SECRET in text]


@pytest.mark.parametrize("handler", LEAKY_ANSWERS.values(), ids=LEAKY_ANSWERS.keys())
def test_the_token_is_in_no_error_log_or_event(monkeypatch, caplog, handler):
    monkeypatch.setenv(ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    events: list[dict] = []
    model = HTTPBackend("https://model.test", "bbvp", token_env=ENV, max_attempts=2, backoff=0.0,
                        on_failure=events.append, transport=httpx.MockTransport(handler))
    try:
        with pytest.raises(BackendError) as error:
            model.query(IMAGES)
        assert leaks(error.value, caplog, events) == []
        assert SECRET not in repr(model) and SECRET not in json.dumps(model.stats())
    finally:
        model.close()
    assert events and caplog.records  # the failure was reported and logged, masked


@pytest.mark.parametrize("answer", [
    [{"label": "{auth}", "score": 0.5}], [{"label": TOY.labels[0], "score": "{auth}"}],
], ids=["label is the token", "score is the token"])
def test_the_token_is_masked_in_codec_errors(monkeypatch, caplog, answer):
    monkeypatch.setenv(ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    events: list[dict] = []
    model = HTTPBackend("https://model.test/m", "hf-image-classification", labels=TOY.labels, image_size=(8, 8),
                        token_env=ENV, on_failure=events.append, transport=httpx.MockTransport(hf_answer(answer)))
    try:
        with pytest.raises(BackendError, match=r"\[token\]") as error:
            model.query(IMAGES[:1])
        assert leaks(error.value, caplog, events) == []
    finally:
        model.close()


def test_the_token_is_masked_in_metadata_errors_and_transport_failures(monkeypatch, caplog):
    monkeypatch.setenv(ENV, SECRET)
    caplog.set_level(logging.DEBUG)
    meta = httpx.MockTransport(lambda r: httpx.Response(200, json={"labels": TOY.labels, "image_size": SECRET}))
    with pytest.raises(BackendError, match=r"'image_size' is '\[token\]'") as error:
        HTTPBackend("https://model.test", "bbvp", token_env=ENV, transport=meta)
    assert leaks(error.value, caplog, []) == []
    with ScriptedServer(TOY, always(Fault("reset"))) as server:  # a real socket: connection resets, then refusals
        events: list[dict] = []
        model = HTTPBackend(server.url, "bbvp", token_env=ENV, max_attempts=2, backoff=0.0, on_failure=events.append)
        try:
            with pytest.raises(BackendError, match="no answer from") as error:
                model.query(IMAGES)
            assert leaks(error.value, caplog, events) == []
        finally:
            model.close()
    with pytest.raises(BackendError, match="no answer from") as error:
        HTTPBackend(server.url, "bbvp", token_env=ENV, max_attempts=2, backoff=0.0)  # the server is gone now
    assert leaks(error.value, caplog, []) == []


def test_a_token_over_plain_http_to_another_host_is_warned(monkeypatch, caplog):
    monkeypatch.setenv(ENV, SECRET)
    meta = httpx.MockTransport(lambda r: httpx.Response(200, json={"labels": TOY.labels, "image_size": [8, 8]}))
    for url, warned in (("http://model.test", True), ("https://model.test", False), ("http://127.0.0.1:9", False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="backends.http.client"):
            HTTPBackend(url, "bbvp", token_env=ENV, transport=meta).close()
        assert ("over plain http" in caplog.text) is warned and SECRET not in caplog.text


# --- TLS ------------------------------------------------------------------------------------------

def self_signed_certificate(folder) -> tuple:
    """A one-day EC key and self-signed certificate for 127.0.0.1, written as PEM files: (key, cert)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(private_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .sign(private_key, hashes.SHA256()))
    key, cert = folder / "key.pem", folder / "cert.pem"
    key.write_bytes(private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key, cert


@pytest.fixture(scope="module")
def https_server(tmp_path_factory):
    """The reference server over TLS on 127.0.0.1 with a fresh self-signed certificate: (URL, cert file)."""
    key, cert = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    with running(create_app(TOY, "toy"), ssl_keyfile=str(key), ssl_certfile=str(cert)) as url:
        yield url, cert


def test_tls_is_verified_by_default_and_a_failure_is_not_retried(https_server):
    url, _ = https_server
    events: list[dict] = []
    with pytest.raises(BackendError, match=rf"cannot verify the TLS certificate of {url}/bbvp/v1/model: .*"
                                           r"CERTIFICATE_VERIFY_FAILED.*CA.*verify=PATH"):
        HTTPBackend(url, "bbvp", on_failure=events.append)
    assert len(events) == 1 and events[0]["retry"] is False


def test_a_ca_bundle_verifies_and_turning_verification_off_warns(https_server):
    url, cert = https_server
    model = HTTPBackend(url, "bbvp", verify=str(cert))  # no warning: pyproject turns warnings into errors
    try:
        np.testing.assert_array_equal(model.query(IMAGES), TOY.query(IMAGES))
    finally:
        model.close()
    with pytest.warns(InsecureTLSWarning, match=rf"TLS certificate verification is off for {url}"):
        model = make_http_backend(url, "bbvp", tls_verify=False)
    try:
        np.testing.assert_array_equal(model.query(IMAGES), TOY.query(IMAGES))
    finally:
        model.close()
    with pytest.raises(ValueError, match=r"cannot use CA bundle .*missing\.pem"):
        HTTPBackend(url, "bbvp", verify="/nonexistent/missing.pem")
    assert inspect.signature(HTTPBackend).parameters["verify"].default is True
    assert inspect.signature(make_http_backend).parameters["tls_verify"].default is True


# --- the reference server -------------------------------------------------------------------------

def test_the_server_binds_loopback_unless_told_otherwise():
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(serve_command).parameters["host"].default == "127.0.0.1"
    # test_http_faults.py::test_a_server_killed_mid_request_and_restarted_is_waited_for starts serve_command
    # without a host and checks that it listens on http://127.0.0.1:PORT.


@pytest.fixture(scope="module")
def app_client():
    with TestClient(create_app(TOY, "toy"), raise_server_exceptions=False) as client:
        yield client


def assert_clean_refusal(response: httpx.Response) -> None:
    """200, or a 4xx whose body is {"error": message} and shows no traceback or source file."""
    assert response.status_code == 200 or 400 <= response.status_code < 500, (response.status_code, response.text)
    if response.status_code != 200:
        assert isinstance(response.json().get("error"), str) and response.json()["error"]
    assert "Traceback" not in response.text and ".py" not in response.text and "File \"" not in response.text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
pngs = st.builds(lambda h, w, seed: png_base64(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)),
                 st.sampled_from([1, 8, 9]), st.sampled_from([1, 8]), st.integers(0, 9))
image_fields = st.one_of(json_values, pngs, st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
                         st.sampled_from(["/etc/passwd", "file:///etc/hosts", "../../etc/passwd", "~/.ssh/id_rsa"]))
shapes = st.one_of(
    st.sampled_from([[1, 8, 8, 3], [2, 8, 8, 3], [0, 8, 8, 3], [1], [2]]),
    st.tuples(st.integers(-1, 3), st.sampled_from([8, 1, 2**40]), st.sampled_from([8, 0, True]),
              st.sampled_from([3, 1])).map(list),
    json_values, st.lists(st.one_of(st.integers(-3, 10), st.sampled_from([8, 3, 2**63, 10**30]), st.booleans()),
                          max_size=5))
uint8_data = st.builds(lambda n, value, nested: [[value] * 192] * n if nested else [value] * (192 * n),
                       st.sampled_from([1, 1, 2, 0]), st.sampled_from([0, 255, 17, 256, -1, 1.5, "7", None, True]),
                       st.booleans())
tensors = st.fixed_dictionaries(
    {"name": st.text(max_size=5), "datatype": st.sampled_from(["BYTES", "UINT8", "UINT8", "FP32", ""]),
     "shape": shapes, "data": st.one_of(json_values, st.lists(image_fields, max_size=3), uint8_data)})
oip_requests = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(tensors, min_size=1, max_size=1), st.lists(tensors, max_size=2), json_values)},
    optional={"id": json_values, "parameters": json_values})
hf_requests = st.fixed_dictionaries({"inputs": image_fields}, optional={"parameters": st.one_of(
    json_values, st.fixed_dictionaries({}, optional={"top_k": json_values, "candidate_labels": st.one_of(
        json_values, st.lists(st.sampled_from(TOY.labels + ["cat", ""]), max_size=4))}))})
requests = st.one_of(
    st.tuples(st.just("/bbvp/v1/predict"), st.one_of(json_values, st.fixed_dictionaries(
        {"images": st.one_of(json_values, st.lists(image_fields, max_size=4))}))),
    st.tuples(st.just("/v2/models/toy/infer"), st.one_of(oip_requests, json_values)),
    st.tuples(st.just("/v2/models/toy/infer"), oip_requests),
    st.tuples(st.just("/hf/models/toy"), st.one_of(json_values, hf_requests)),
)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests)
def test_malformed_json_requests_get_a_4xx_json_error_never_a_traceback(app_client, request):
    path, body = request
    assert_clean_refusal(app_client.post(path, content=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"}))


def encoded(format: str, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (8, 8), 7).save(buffer, format=format)
    return buffer.getvalue()


IMAGE_FILES = [encoded(f, m) for f, m in (("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "I;16"), ("PNG", "1"),
                                          ("JPEG", "CMYK"), ("JPEG", "L"), ("WEBP", "RGB"), ("BMP", "RGB"),
                                          ("GIF", "P"), ("TIFF", "RGB"))]
bodies = st.one_of(st.binary(max_size=200), st.sampled_from(IMAGE_FILES),
                   st.tuples(st.sampled_from(IMAGE_FILES), st.integers(0, 300)).map(lambda pair: pair[0][: pair[1]]))


@settings(max_examples=150, deadline=None, database=None)
@given(path=st.sampled_from(["/bbvp/v1/predict", "/v2/models/toy/infer", "/hf/models/toy", "/v2/models/x/infer",
                             "/hf/models/../../etc/passwd", "/bbvp/v1/model", "/stats", "/nope"]),
       body=bodies, content_type=st.sampled_from(["application/json", "image/png", "", "text/plain"]))
def test_any_bytes_to_any_path_get_a_4xx_json_error_never_a_traceback(app_client, path, body, content_type):
    assert_clean_refusal(app_client.post(path, content=body, headers={"Content-Type": content_type}))


def test_deep_nesting_unknown_paths_and_methods_are_4xx_json(app_client):
    for path, body, status in (("/bbvp/v1/predict", b"[" * 100_000, 400), ("/nope", b"{}", 404),
                               ("/v2/models/toy/infer/../../../etc", b"{}", 404)):
        response = app_client.post(path, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == status
        assert_clean_refusal(response)
    response = app_client.get("/bbvp/v1/predict")
    assert response.status_code == 405 and response.json() == {"error": "Method Not Allowed: GET /bbvp/v1/predict"}


def test_file_paths_in_requests_are_never_opened(app_client, tmp_path):
    picture = tmp_path / "picture.png"
    picture.write_bytes(encode_png(IMAGES[0]))  # a readable image of the right size, by path
    before = app_client.get("/stats").json()["images"]
    for body in ({"images": [str(picture)]}, {"images": [picture.as_uri()]},
                 {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [str(picture)]}]}):
        path = "/bbvp/v1/predict" if "images" in body else "/v2/models/toy/infer"
        response = app_client.post(path, json=body)
        assert response.status_code == 400 and "base64" in response.json()["error"]
    response = app_client.post("/hf/models/toy", content=str(picture).encode(), headers={"Content-Type": "image/png"})
    assert response.status_code == 400 and "not a readable" in response.json()["error"]
    assert app_client.get("/stats").json()["images"] == before


class Broken(Backend):
    labels = TOY.labels
    image_size = (8, 8)

    def _query_batch(self, images):
        raise RuntimeError(f"secret internals at {__file__}")


def test_a_model_failure_is_a_500_json_error_without_the_traceback(caplog):
    with TestClient(create_app(Broken(), "toy"), raise_server_exceptions=False) as client:
        with caplog.at_level(logging.ERROR, logger="backends.http.server"):
            response = client.post("/bbvp/v1/predict", json={"images": [png_base64(IMAGES[0])]})
    assert response.status_code == 500
    assert response.json() == {"error": "internal error in the model server; its log has the details"}
    assert "secret internals" not in response.text and "secret internals" in caplog.text  # logged on the server
