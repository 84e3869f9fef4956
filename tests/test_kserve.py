"""Against a server nobody here wrote: KServe's ModelServer serves the toy model over OIP V2.

The server runs in a subprocess (tests/kserve_toy_server.py). KServe binds all interfaces; this test
only ever connects to 127.0.0.1.
"""

import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

kserve = pytest.importorskip("kserve")

from loopback import assert_same_run, free_ports, server_run_config, stop  # noqa: E402

from backends.http import HTTPBackend, UnnamedLabelsWarning  # noqa: E402
from backends.toy import ToyBackend  # noqa: E402
from blackbox_vp import optimize  # noqa: E402

SERVER = Path(__file__).with_name("kserve_toy_server.py")


class Float32Toy(ToyBackend):
    """The toy model as the client sees it through KServe: scores rounded to FP32, labels "0".."19"."""

    def __init__(self):
        super().__init__()
        self.labels = [str(i) for i in range(len(self.labels))]

    def _query_batch(self, images: np.ndarray) -> np.ndarray:
        return super()._query_batch(images).astype(np.float32).astype(np.float64)


def test_a_run_against_kserve_modelserver_equals_the_local_run_and_is_counted(tmp_path):
    port, count_file = free_ports()[0], tmp_path / "served"
    log = (tmp_path / "server.log").open("wb")  # a file, not a pipe: KServe logs every request
    server = subprocess.Popen([sys.executable, str(SERVER), str(port), str(count_file)],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"KServe server exited: {(tmp_path / 'server.log').read_text()[-2000:]}"
            try:
                if httpx.get(f"{base}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "KServe server not ready within 60 s"
            time.sleep(0.2)
        with pytest.warns(UnnamedLabelsWarning, match="publishes no label names, only 20 scores"):
            model = HTTPBackend(f"{base}/v2/models/toy", "oip-v2", image_size=(64, 64))
        try:
            # KServe's metadata has no label or size parameters: labels "0".."K-1", the size given here
            assert model.labels == [str(i) for i in range(20)] and model.image_size == (64, 64)
            result = optimize(server_run_config(), backend=model)
        finally:
            model.close()
        assert result.queries_used <= 1500
        assert int(count_file.read_text()) == result.queries_used + result.test_queries
    finally:
        stop(server)
        log.close()
    expected = optimize(server_run_config(), backend=Float32Toy())
    assert_same_run(result, expected)
