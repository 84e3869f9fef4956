"""The fast paths of Prompt.apply and TorchClassifierBackend.query: exactly the float paths' pixels and scores."""

import os

import numpy as np
import pytest
import torch

from backends.torch_classifier import TorchClassifierBackend, set_cpu_threads
from blackbox_vp.parameterizations import PARAMETERIZATIONS
from blackbox_vp.prompts import PROMPTS, images_to_tensor
from blackbox_vp.quantize import jpeg, to_uint8_nhwc

CANVAS = (32, 32)
VARIANTS = [("padding", {"width": 5, "placement": "shrink"}), ("padding", {"width": 5, "placement": "overlay"}),
            ("full-frame", {"width": 5, "placement": "shrink"}), ("full-frame", {"width": 5, "placement": "overlay"}),
            ("fixed-patch", {"patch": 8}), ("random-patch", {"patch": 8, "seed": 3})]
PARAMETERIZATIONS_USED = {"full": {}, "grid": {"grid": 3}, "dct": {"k": 3}, "subspace": {"dim": 12, "seed": 1}}


def float_path(prompt, thetas: np.ndarray, images: np.ndarray) -> np.ndarray:
    """What Prompt.apply computed before its fast path: every image composed in float, then rounded."""
    x = images_to_tensor(images)
    blocks = []
    for theta in np.atleast_2d(thetas):
        pixels = to_uint8_nhwc(prompt.compose(torch.as_tensor(theta, dtype=torch.float32), x))
        blocks.append(jpeg(pixels, prompt.jpeg_quality) if prompt.jpeg_quality is not None else pixels)
    return np.concatenate(blocks)


@pytest.mark.parametrize("kind, options", VARIANTS, ids=[f"{k}-{o.get('placement', '')}" for k, o in VARIANTS])
@pytest.mark.parametrize("parameterization", list(PARAMETERIZATIONS_USED))
@pytest.mark.parametrize("jpeg_quality", [None, 80])
def test_apply_gives_the_float_paths_pixels(kind, options, parameterization, jpeg_quality, rng):
    sized = PARAMETERIZATIONS.get(parameterization)(CANVAS, **PARAMETERIZATIONS_USED[parameterization])
    prompt = PROMPTS.get(kind)(CANVAS, parameterization=sized, jpeg_quality=jpeg_quality, **options)
    images = rng.integers(0, 256, (4, *prompt.inner_size, 3), dtype=np.uint8)
    thetas = np.concatenate([rng.normal(size=(2, prompt.dimension)) * scale for scale in (0.0, 1.0, 30.0, 1e6)])
    np.testing.assert_array_equal(prompt.apply(thetas, images), float_path(prompt, thetas, images))
    np.testing.assert_array_equal(prompt.apply(thetas[1], images[:0]), float_path(prompt, thetas[1], images[:0]))


def test_a_pattern_that_is_not_finite_takes_the_float_path(rng):
    prompt = PROMPTS.get("padding")(CANVAS, width=5)
    images = rng.integers(0, 256, (2, *prompt.inner_size, 3), dtype=np.uint8)
    theta = np.full(prompt.dimension, np.nan)
    np.testing.assert_array_equal(prompt.apply(theta, images), float_path(prompt, theta, images))


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("mean, std", [(0.5, 0.5), (0.485, 0.229), (0.0, 1.0)])
def test_query_scores_what_logits_scores(mean, std, rng):
    backend = TorchClassifierBackend(Tiny(), [str(i) for i in range(5)], (24, 24), mean=mean, std=std)
    images = rng.integers(0, 256, (6, 24, 24, 3), dtype=np.uint8)
    assert backend._normalized(images) is not None  # the numpy path is taken
    with torch.inference_mode():
        expected = backend.logits(torch.tensor(images).permute(0, 3, 1, 2).float().div_(255.0)).softmax(dim=1)
    np.testing.assert_array_equal(backend.query(images), expected.double().numpy())


def test_bf16_autocast_scores_close_to_fp32(rng):
    fp32 = TorchClassifierBackend(Tiny(), [str(i) for i in range(5)], (24, 24))
    bf16 = TorchClassifierBackend(Tiny(), [str(i) for i in range(5)], (24, 24), precision="bf16")
    images = rng.integers(0, 256, (4, 24, 24, 3), dtype=np.uint8)
    np.testing.assert_allclose(bf16.query(images), fp32.query(images), atol=0.02)
    with pytest.raises(ValueError, match="unknown precision"):
        TorchClassifierBackend(Tiny(), ["a"], (24, 24), precision="fp8")


def test_omp_num_threads_sets_the_cpu_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        set_cpu_threads()
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
        set_cpu_threads()
        assert torch.get_num_threads() == (os.cpu_count() or 1)
    finally:
        torch.set_num_threads(before)
