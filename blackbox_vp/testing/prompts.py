"""What every prompt type must do with any parameterization (:data:`blackbox_vp.prompts.PROMPTS`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from blackbox_vp.mappings import FrequencyMapping
from blackbox_vp.parameterizations import PARAMETERIZATIONS
from blackbox_vp.prompt_file import load_prompt, save_prompt
from blackbox_vp.prompts import PROMPTS, Prompt, images_to_tensor

CANVAS = (32, 32)


class PromptContract:
    """Set ``name``, a registered prompt type, and ``options`` (its sizes must fit a 32 x 32 canvas);
    ``parameterization`` and ``parameterization_options`` say what it is parameterized by."""

    name: str
    options: dict = {}  # noqa: RUF012 (read, never changed)
    parameterization = "grid"
    parameterization_options: dict = {"grid": 3}  # noqa: RUF012

    def make(self, jpeg_quality: int | None = None) -> Prompt:
        sized = PARAMETERIZATIONS.get(self.parameterization)(CANVAS, **self.parameterization_options)
        return PROMPTS.get(self.name)(CANVAS, parameterization=sized, jpeg_quality=jpeg_quality, **self.options)

    def images(self, prompt: Prompt, count: int = 3) -> np.ndarray:
        return np.random.default_rng(0).integers(0, 256, (count, *prompt.inner_size, 3), dtype=np.uint8)

    def test_the_uint8_and_differentiable_paths_agree_and_follow_theta(self):
        prompt = self.make()
        images = self.images(prompt)
        thetas = np.random.default_rng(1).normal(size=(2, prompt.dimension))
        out = prompt.apply(thetas, images)
        assert out.shape == (6, *CANVAS, 3) and out.dtype == np.uint8
        assert prompt.dimension == len(prompt.initial()) == prompt.parameterization.dimension
        for p, theta in enumerate(thetas):
            white = prompt.apply_differentiable(torch.tensor(theta, dtype=torch.float32), images_to_tensor(images))
            pixels = (white * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            np.testing.assert_array_equal(pixels, out[3 * p : 3 * (p + 1)])
        assert not np.array_equal(out[:3], out[3:])

    def test_the_same_theta_gives_the_same_pixels(self):
        prompt = self.make()
        images = self.images(prompt)
        np.testing.assert_array_equal(prompt.apply(prompt.initial(), images), prompt.apply(prompt.initial(), images))

    def test_save_and_load_give_the_same_pixels(self, tmp_path: Path):
        prompt = self.make(jpeg_quality=75)
        theta = np.random.default_rng(2).normal(size=prompt.dimension)
        save_prompt(tmp_path / "p.json", prompt, theta, FrequencyMapping([3, 1, 2]), {"test_accuracy": 0.25})
        loaded, loaded_theta, _, metadata = load_prompt(tmp_path / "p.json")
        assert type(loaded) is type(prompt) and loaded.config() == prompt.config()
        assert metadata == {"test_accuracy": 0.25}
        images = self.images(prompt, 2)
        np.testing.assert_array_equal(loaded.apply(loaded_theta, images), prompt.apply(theta, images))
