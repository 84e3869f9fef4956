"""Against a real TorchServe (0.12, from PyPI), started here on loopback with token authorization on.

The served model is backends.toy.ToyBackend behind tests/torchserve_toy_handler.py, archived by
torch-model-archiver twice: "toy-all" answers every label, "toy-top5" the top 5 as TorchServe's stock
image classifier does. TorchServe runs from a tmp folder (its key_file.json, logs and pid file land
there), on free ports of 127.0.0.1 only, and is stopped with ``torchserve --stop`` after the tests,
its process group killed if anything of it is left.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

pytest.importorskip("ts", reason="TorchServe is not installed (pip install -e '.[torchserve]')")
pytest.importorskip("model_archiver", reason="torch-model-archiver is not installed (pip install -e '.[torchserve]')")
pytest.importorskip("yaml", reason="TorchServe reads model-config files with pyyaml, which is not installed")
if shutil.which("java") is None:
    pytest.skip("TorchServe's frontend needs Java 17+ (java is not on PATH)", allow_module_level=True)

from loopback import assert_same_run, free_ports, server_run_config  # noqa: E402

from backends.base import BackendError  # noqa: E402
from backends.http import HTTPBackend, PartialAnswerWarning  # noqa: E402
from backends.toy import ToyBackend  # noqa: E402
from blackbox_vp import optimize  # noqa: E402

HANDLER = Path(__file__).with_name("torchserve_toy_handler.py")
REPO = HANDLER.parent.parent
LABELS = ToyBackend().labels
MODELS = {"toy-all": len(LABELS), "toy-top5": 5}  # model name: how many labels its handler answers


def tool(name: str) -> str:
    """A console script of this interpreter's environment (where pip put it), else from PATH."""
    path = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if path is None:
        pytest.skip(f"{name} is not on PATH")
    return path


def archive(folder: Path, name: str, topk: int) -> Path:
    """toy NAME.mar in folder/store: the handler, index_to_name.json and a model-config naming topk."""
    (folder / "store").mkdir(exist_ok=True)
    config = folder / f"{name}.yaml"
    seen = folder / f"{name}.seen"
    seen.touch()
    config.write_text(f"minWorkers: 1\nmaxWorkers: 1\nbatchSize: 1\nresponseTimeout: 60\nhandler:\n"
                      f"  repo: {json.dumps(str(REPO))}\n  topk: {topk}\n  seen: {json.dumps(str(seen))}\n")
    subprocess.run([tool("torch-model-archiver"), "--model-name", name, "--version", "1.0", "--handler", str(HANDLER),
                    "--extra-files", str(folder / "index_to_name.json"), "--config-file", str(config),
                    "--export-path", str(folder / "store")], check=True, capture_output=True, timeout=60)
    return seen


def wait_ready(server: subprocess.Popen, folder: Path, base: str, management: str, log: Path,
               timeout: float = 60) -> None:
    """Until /ping (which needs the inference key too) says Healthy and every model's worker is READY.

    /ping alone is not enough: it says Healthy while the workers are still starting (status UNLOADING)
    and also while one that cannot load its model is retried, requests waiting in the queue until the
    client's timeout. A worker that died loading its model fails this at once, with the log.
    """
    deadline = time.monotonic() + timeout
    while True:
        assert server.poll() is None, f"TorchServe exited {server.returncode}: {log.read_text()[-3000:]}"
        text = log.read_text(errors="replace")
        assert "Load model failed" not in text, f"a TorchServe worker could not load its model: {text[-3000:]}"
        try:
            keys = json.loads((folder / "key_file.json").read_text())
            ping = httpx.get(f"{base}/ping", headers={"Authorization": f"Bearer {keys['inference']['key']}"},
                             timeout=2)
            if ping.status_code == 200 and ping.json().get("status") == "Healthy":
                workers = [worker["status"] for name in MODELS for worker in httpx.get(
                    f"{management}/models/{name}", headers={"Authorization": f"Bearer {keys['management']['key']}"},
                    timeout=2).raise_for_status().json()[0]["workers"]]
                if len(workers) == len(MODELS) and set(workers) == {"READY"}:
                    return
        except (OSError, ValueError, KeyError, httpx.HTTPError):
            pass  # not written yet, half written, not listening or not registered yet
        assert time.monotonic() < deadline, f"TorchServe not ready within {timeout} s: {text[-3000:]}"
        time.sleep(0.25)


def stop(server: subprocess.Popen, folder: Path, env: dict[str, str]) -> None:
    """``torchserve --stop`` (it reads the pid file in our TMPDIR), then make sure nothing of it is left:
    the launcher, the Java frontend and its Python workers all share the launcher's process group."""
    try:
        subprocess.run([tool("torchserve"), "--stop", "--foreground"], cwd=folder, env=env, capture_output=True,
                       timeout=90)
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    finally:
        deadline = time.monotonic() + 10
        left = True
        while left and time.monotonic() < deadline:
            try:
                os.killpg(server.pid, 0)
                time.sleep(0.2)
            except ProcessLookupError:
                left = False
        if left:
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
    assert not left, "TorchServe left processes running after torchserve --stop; they were killed"


@pytest.fixture(scope="module")
def torchserve(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torchserve")
    (folder / "tmp").mkdir()
    (folder / "index_to_name.json").write_text(json.dumps({str(i): label for i, label in enumerate(LABELS)}))
    seen = {name: archive(folder, name, topk) for name, topk in MODELS.items()}
    inference, management, metrics, grpc_inference, grpc_management = free_ports(5)
    (folder / "config.properties").write_text(
        f"inference_address=http://127.0.0.1:{inference}\nmanagement_address=http://127.0.0.1:{management}\n"
        f"metrics_address=http://127.0.0.1:{metrics}\ngrpc_inference_address=127.0.0.1\n"
        f"grpc_management_address=127.0.0.1\ngrpc_inference_port={grpc_inference}\n"
        f"grpc_management_port={grpc_management}\nmodel_store={folder / 'store'}\n"
        f"load_models={','.join(name + '.mar' for name in MODELS)}\ndefault_workers_per_model=1\n"
        "disable_system_metrics=true\n")
    # TMPDIR: the launcher's pid file (tempfile.gettempdir()/.model_server.pid) is then ours alone, not one
    # shared with any other TorchServe on the machine; TEMP: Java's tmpdir (unpacked models, worker sockets)
    env = {**os.environ, "TMPDIR": str(folder / "tmp"), "TEMP": str(folder / "tmp")}
    log_path = folder / "torchserve.log"
    base = f"http://127.0.0.1:{inference}"
    started = time.monotonic()
    with log_path.open("wb") as log:  # a file, not a pipe: TorchServe logs every request
        server = subprocess.Popen([tool("torchserve"), "--start", "--foreground", "--ncs", "--ts-config",
                                   str(folder / "config.properties")], cwd=folder, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_ready(server, folder, base, f"http://127.0.0.1:{management}", log_path)
            yield SimpleNamespace(base=base, key_file=folder / "key_file.json", seen=seen,
                                  startup=time.monotonic() - started)
        finally:
            stop(server, folder, env)


def images_seen(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_a_run_against_torchserve_with_every_label_equals_the_local_run_and_is_counted(torchserve):
    before = len(images_seen(torchserve.seen["toy-all"]))
    model = HTTPBackend(f"{torchserve.base}/predictions/toy-all", "torchserve", labels=LABELS, image_size=(64, 64),
                        torchserve_key_file=torchserve.key_file)
    try:
        result = optimize(server_run_config(), backend=model)
        failures = model.failures
    finally:
        model.close()
    seen = images_seen(torchserve.seen["toy-all"])[before:]
    assert failures == 0 and result.queries_used <= 1500
    assert len(seen) == result.queries_used + result.test_queries
    assert set(seen) == {"body image/png"}  # the raw PNG body arrives as TorchServe's parameter "body"
    expected = optimize(server_run_config(), backend=ToyBackend())
    assert_same_run(result, expected)


def test_torchserves_top5_answers_are_warned_about_once_and_the_run_finishes(torchserve):
    before = len(images_seen(torchserve.seen["toy-top5"]))
    model = HTTPBackend(f"{torchserve.base}/predictions/toy-top5", "torchserve", labels=LABELS, image_size=(64, 64),
                        torchserve_key_file=torchserve.key_file)
    try:
        with pytest.warns(PartialAnswerWarning, match="answers with only 5 of its 20 labels") as caught:
            result = optimize(server_run_config(), backend=model)
    finally:
        model.close()
    assert sum(issubclass(w.category, PartialAnswerWarning) for w in caught) == 1
    assert 0 < result.queries_used <= 1500 and 0 <= result.test_accuracy <= 1
    assert len(images_seen(torchserve.seen["toy-top5"])) - before == result.queries_used + result.test_queries


def test_without_the_key_torchserve_answers_400_and_the_key_file_option_is_named(torchserve):
    before = len(images_seen(torchserve.seen["toy-all"]))
    model = HTTPBackend(f"{torchserve.base}/predictions/toy-all", "torchserve", labels=LABELS, image_size=(64, 64))
    try:
        with pytest.raises(BackendError, match=r"answered 400 .*InvalidKeyException.*--torchserve-key-file"):
            optimize(server_run_config(), backend=model)
        assert model.requests == 1  # a 400 is not retried
    finally:
        model.close()
    assert len(images_seen(torchserve.seen["toy-all"])) == before  # nothing was scored
