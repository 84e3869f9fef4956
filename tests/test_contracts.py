"""The contract suites of :mod:`blackbox_vp.testing` run on every entry of ours, and each optimizer's outputs
on a fixed problem are pinned (after nevergrad's recorded recommendations).

Re-record the pinned outputs after a deliberate change of an optimizer:
``BBVP_RECORD=1 python -m pytest tests/test_contracts.py -k recorded`` (then review the diff of
``tests/recorded/optimizers.json``).
"""

import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_http_client import bbvp_server

from backends import BACKENDS, CachingBackend, CountingBackend, LabelOnlyBackend, TopKBackend
from backends.http import FORMATS, HTTPBackend
from backends.toy import ToyBackend
from backends.toy_torch import toy_torch_backend
from blackbox_vp.data import TASKS
from blackbox_vp.losses import LOSSES
from blackbox_vp.mappings import MAPPINGS
from blackbox_vp.optimizers import OPTIMIZERS, make_optimizer, search_names
from blackbox_vp.parameterizations import PARAMETERIZATIONS
from blackbox_vp.prompts import PROMPTS
from blackbox_vp.testing import (
    BackendContract,
    FormatContract,
    LossContract,
    MappingContract,
    OptimizerContract,
    ParameterizationContract,
    PromptContract,
    TaskContract,
)
from blackbox_vp.testing.optimizers import DIMENSION, run_steps

SEARCHES = [*search_names(), "ng:TwoPointsDE"]  # ng:<...> through two of its names
RECORDED = Path(__file__).parent / "recorded" / "optimizers.json"
RECORDED_STEPS = 5


def sphere_options(name: str) -> dict:
    """The options under which ``name`` descends the unit-scale sphere. BlackVIP's lr0 = 10 diverges on
    ||x - t||^2 (tests/test_optimizers.py uses the same), and a diverging search amplifies the last bit in
    which two CPUs' exp and log differ into the recorded outputs."""
    return {"lr": 0.1, "lr_min": 0.001} if name == "rge" else {}


@pytest.fixture(params=SEARCHES)
def optimizer_name(request):
    return request.param


class TestEveryOptimizer(OptimizerContract):
    @pytest.fixture(autouse=True)
    def _name(self, optimizer_name):
        self.name = optimizer_name
        self.sphere_options = sphere_options(optimizer_name)


def test_the_searches_cover_every_registered_optimizer():
    assert set(SEARCHES) | {"ng:<...>", "whitebox", "shadow"} >= set(OPTIMIZERS.names())


def recorded_outputs() -> dict[str, list[float]]:
    """Each search's recommendation after 5 steps on the shifted sphere from 0, seed 0."""
    outputs = {}
    for name in SEARCHES:
        optimizer = make_optimizer(name, np.zeros(DIMENSION), seed=0, **sphere_options(name))
        run_steps(optimizer, RECORDED_STEPS)
        outputs[name] = [round(float(value), 12) for value in optimizer.recommend()]
    return outputs


def test_recorded_outputs_of_every_optimizer_are_reproduced():
    outputs = recorded_outputs()
    if os.environ.get("BBVP_RECORD"):
        RECORDED.write_text(json.dumps(outputs, indent=1) + "\n", encoding="utf-8")
    recorded = json.loads(RECORDED.read_text(encoding="utf-8"))
    assert set(recorded) == set(outputs), "an optimizer without recorded outputs: re-record (see the docstring)"
    for name in outputs:
        np.testing.assert_allclose(outputs[name], recorded[name], rtol=1e-9, atol=1e-12, err_msg=name)


class TestToyBackend(BackendContract):
    def make_backend(self):
        return ToyBackend()


class TestToyTorchBackend(BackendContract):
    def make_backend(self):
        return toy_torch_backend()


class TestCountingWrapper(BackendContract):
    def make_backend(self):
        return CountingBackend(ToyBackend(max_batch=4), budget=10_000)


class TestCachingWrapper(BackendContract):
    def make_backend(self):
        return CachingBackend(ToyBackend(max_batch=4))


class TestTopKWrapper(BackendContract):
    def make_backend(self):
        return TopKBackend(ToyBackend(), k=3)


class TestLabelOnlyWrapper(BackendContract):
    def make_backend(self):
        return LabelOnlyBackend(ToyBackend())


class TestHTTPBackendOverMockTransport(BackendContract):
    def make_backend(self):
        return HTTPBackend("http://model.test", "bbvp", transport=httpx.MockTransport(bbvp_server(max_batch=4)),
                           backoff=0.0)


def test_the_backend_suites_cover_every_local_registered_backend():
    covered = {"toy", "toy-torch"}  # the EfficientNet-Lite entries load real weights: tests/test_backends.py
    assert covered | {"reference", "surrogate", "surrogate-lite2", "reference-top5"} == {
        name for name in BACKENDS.names() if not name.endswith("<...>")}


@pytest.fixture(params=LOSSES.names())
def loss_name(request):
    return request.param


class TestEveryLoss(LossContract):
    @pytest.fixture(autouse=True)
    def _name(self, loss_name):
        self.name = loss_name


@pytest.fixture(params=TASKS.names())
def task_name(request):
    return request.param


class TestEveryTask(TaskContract):
    @pytest.fixture(autouse=True)
    def _name(self, task_name):
        self.name = task_name


MAPPING_OPTIONS = {"multilabel": {"labels_per_class": 3}, "linear": {"l2": 0.1}}


@pytest.fixture(params=MAPPINGS.names())
def mapping_name(request):
    return request.param


class TestEveryMapping(MappingContract):
    @pytest.fixture(autouse=True)
    def _name(self, mapping_name):
        self.name = mapping_name
        self.options = MAPPING_OPTIONS.get(mapping_name, {})
        self.classes_are_labels = mapping_name == "identity"  # the backend's labels are the classes


PARAMETERIZATION_OPTIONS = {"full": {}, "grid": {"grid": 3}, "dct": {"k": 3}, "subspace": {"dim": 12, "seed": 1, "grid": 4}}
PROMPT_OPTIONS = {"padding": {"width": 5}, "full-frame": {"width": 5, "placement": "overlay"},
                  "fixed-patch": {"patch": 8}, "random-patch": {"patch": 8, "seed": 3}}


def test_the_prompt_suites_cover_every_registered_prompt_and_parameterization():
    assert set(PROMPT_OPTIONS) == set(PROMPTS.names())
    assert set(PARAMETERIZATION_OPTIONS) == set(PARAMETERIZATIONS.names())


@pytest.fixture(params=PARAMETERIZATIONS.names())
def parameterization_name(request):
    return request.param


class TestEveryParameterization(ParameterizationContract):
    @pytest.fixture(autouse=True)
    def _name(self, parameterization_name):
        self.name = parameterization_name
        self.options = PARAMETERIZATION_OPTIONS[parameterization_name]


@pytest.fixture(params=[(prompt, parameterization) for prompt in PROMPTS.names()
                        for parameterization in PARAMETERIZATIONS.names()], ids="-".join)
def prompt_and_parameterization(request):
    return request.param


class TestEveryPromptWithEveryParameterization(PromptContract):
    @pytest.fixture(autouse=True)
    def _name(self, prompt_and_parameterization):
        self.name, self.parameterization = prompt_and_parameterization
        self.options = PROMPT_OPTIONS[self.name]
        self.parameterization_options = PARAMETERIZATION_OPTIONS[self.parameterization]


FORMAT_PATHS = {"bbvp": "", "oip-v2": "", "kserve-v1": "", "torchserve": "/predictions/toy",
                "hf-image-classification": "/hf/models/toy", "hf-zero-shot": "/hf/models/toy", "openai-chat": "/openai"}


@pytest.fixture(params=FORMATS.names())
def format_name(request):
    return request.param


class TestEveryFormatAgainstOurServer(FormatContract):
    @pytest.fixture(autouse=True)
    def _name(self, format_name):
        self.name, self.path = format_name, FORMAT_PATHS[format_name]
        self.top = 5 if format_name == "torchserve" else None
