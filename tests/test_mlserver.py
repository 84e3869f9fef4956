"""Against Seldon's MLServer: the toy model as a custom runtime (tests/mlserver_toy_runtime.py) over OIP V2.

One MLServer process, bound to 127.0.0.1, serves three models: "toy-bytes" (base64 PNGs in a BYTES
tensor, probabilities out), "toy-uint8" (a UINT8 [-1, 64, 64, 3] tensor in) and "toy-logits" (BYTES
in, logits out, which ``--scores auto`` must tell and softmax). MLServer publishes no label names
(its metadata ``parameters`` carry only a content type), so the runs pass the toy's labels.

pip cannot install MLServer 1.7.1 with the kserve extra (it pins fastapi<0.116, whose starlette<0.47
kserve 0.21 refuses), and the two cannot be imported into one process. Install the ``mlserver``
extra in an environment without kserve, or point BBVP_MLSERVER_PYTHON at the Python of one that has
mlserver (the server needs only mlserver and pillow; the repository root goes on its PYTHONPATH) to
run this test from any other environment, the kserve one included.
"""

import functools
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from loopback import assert_same_run, free_ports, server_run_config, stop

from backends.base import BackendError
from backends.http import HTTPBackend, UnnamedLabelsWarning
from backends.http.scores import to_probabilities
from backends.toy import ToyBackend
from blackbox_vp import optimize

ROOT = Path(__file__).resolve().parent.parent
SERVER_PYTHON = os.environ.get("BBVP_MLSERVER_PYTHON")
if SERVER_PYTHON is not None:  # made absolute as given (not resolved: a venv's python must keep its own path),
    SERVER_PYTHON = os.path.abspath(SERVER_PYTHON)  # since the server starts in a temporary folder
if SERVER_PYTHON is None:
    # looked up, not imported: MLServer runs only in the server process, and importing it here after kserve (or
    # kserve after it) fails, both registering the OIP gRPC messages ("duplicate symbol 'inference.ServerLiveRequest'")
    if importlib.util.find_spec("mlserver") is None:
        pytest.skip("MLServer is not installed (pip install -e '.[mlserver]' in an environment without the kserve "
                    "extra, or set BBVP_MLSERVER_PYTHON to a Python that has mlserver)", allow_module_level=True)
    SERVER_PYTHON = sys.executable

LOGIT_SHIFT = 3.0  # the runtime's (tests/mlserver_toy_runtime.py); the runtime module imports mlserver
BYTES_INPUT = {"name": "image", "datatype": "BYTES", "shape": [-1], "parameters": {"content_type": "base64"}}
UINT8_INPUT = {"name": "pixels", "datatype": "UINT8", "shape": [-1, 64, 64, 3]}
OUTPUT = {"name": "scores", "datatype": "FP32", "shape": [-1, 20]}
MODELS = {"toy-bytes": (BYTES_INPUT, "probabilities"), "toy-uint8": (UINT8_INPUT, "probabilities"),
          "toy-logits": (BYTES_INPUT, "logits")}


class Float32Toy(ToyBackend):
    """The toy model as the client sees it through MLServer: scores rounded to FP32."""

    def _query_batch(self, images: np.ndarray) -> np.ndarray:
        return super()._query_batch(images).astype(np.float32).astype(np.float64)


class Float32LogitsToy(ToyBackend):
    """The "toy-logits" model as the client sees it: FP32 logits, softmaxed by the client's own function."""

    def _query_batch(self, images: np.ndarray) -> np.ndarray:
        logits = (np.log(super()._query_batch(images)) + LOGIT_SHIFT).astype(np.float32).astype(np.float64)
        return to_probabilities(logits, "logits")


@functools.cache
def local_run(logits: bool):
    return optimize(server_run_config(), backend=Float32LogitsToy() if logits else Float32Toy())


def write_repository(root: Path, http_port: int, grpc_port: int) -> None:
    """settings.json and one folder per model with its model-settings.json, under ``root``."""
    # parallel_workers 0: the models run in the server's own process (1.7.1's inference workers crash-loop
    # under uvloop here); no metrics server; gRPC cannot be turned off, so it gets a free loopback port too
    settings = {"host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port, "parallel_workers": 0,
                "metrics_endpoint": None, "metrics_dir": str(root / ".metrics"),
                "environments_dir": str(root / ".envs"), "debug": False}
    (root / "settings.json").write_text(json.dumps(settings))
    for name, (tensor, scores) in MODELS.items():
        (root / name).mkdir()
        model = {"name": name, "implementation": "mlserver_toy_runtime.ToyRuntime", "inputs": [tensor],
                 "outputs": [OUTPUT], "parameters": {"extra": {"count_file": str(root / f"{name}.served"),
                                                               "scores": scores}}}
        (root / name / "model-settings.json").write_text(json.dumps(model))


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory):
    """The base URL of an MLServer serving MODELS, and the folder holding their count files."""
    root = tmp_path_factory.mktemp("mlserver")
    port = free_ports()[0]
    write_repository(root, port, free_ports()[0])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), "OMP_NUM_THREADS": "1"}
    log_path = root / "server.log"
    log = log_path.open("wb")  # a file, not a pipe: a failed predict logs its traceback
    command = [SERVER_PYTHON, "-c", "from mlserver.cli.main import main; main()", "start", str(root)]
    try:
        server = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    except BaseException:  # no server: its log must not stay open (an unclosed file fails a later test)
        log.close()
        raise
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, f"MLServer exited: {log_path.read_text()[-3000:]}"
            try:
                if all(httpx.get(f"{base}/v2/models/{name}/ready", timeout=2).status_code == 200 for name in MODELS):
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"MLServer not ready within 90 s: {log_path.read_text()[-3000:]}"
            time.sleep(0.3)
        yield base, root
    finally:
        stop(server)
        log.close()


def test_mlserver_metadata_is_what_the_client_reads(mlserver):
    """MLServer echoes the model-settings' tensors (a content type only where one was given) and publishes no
    labels; it has no GET /v2/models, so a server URL is resolved through POST /v2/repository/index."""
    base, _ = mlserver
    meta = httpx.get(f"{base}/v2/models/toy-bytes", timeout=10).json()
    assert meta["inputs"] == [BYTES_INPUT] and meta["outputs"] == [OUTPUT]
    assert "labels" not in (meta.get("parameters") or {})
    assert httpx.get(f"{base}/v2/models/toy-uint8", timeout=10).json()["inputs"] == [UINT8_INPUT]
    assert httpx.get(f"{base}/v2/models", timeout=10).status_code == 404
    with pytest.raises(BackendError, match=r"serves 3 models \(.*toy-bytes.*\); give the model's own URL"):
        HTTPBackend(base, "oip-v2", labels=ToyBackend().labels, image_size=(64, 64))


@pytest.mark.parametrize("name", MODELS)
def test_a_run_against_mlserver_equals_the_local_run_and_is_counted(mlserver, name):
    base, root = mlserver
    url = f"{base}/v2/models/{name}"
    with pytest.warns(UnnamedLabelsWarning, match="publishes no label names, only 20 scores"):
        HTTPBackend(url, "oip-v2", image_size=(64, 64)).close()
    labels = ToyBackend().labels
    model = HTTPBackend(url, "oip-v2", labels=labels, image_size=(64, 64))
    try:
        assert model.labels == labels and model.image_size == (64, 64) and model.codec.datatype == MODELS[name][0][
            "datatype"]
        result = optimize(server_run_config(), backend=model)
        assert model.score_kind == MODELS[name][1]  # told by --scores auto from the first answer
    finally:
        model.close()
    assert result.queries_used <= 1500
    assert int((root / f"{name}.served").read_text()) == result.queries_used + result.test_queries
    expected = local_run(logits=name == "toy-logits")
    assert_same_run(result, expected)
