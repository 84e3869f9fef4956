import numpy as np
import pytest
import torch

from blackbox_vp.mappings import FrequencyMapping
from blackbox_vp.parameterizations import CoarseGrid, FullResolution
from blackbox_vp.prompt_file import load_prompt, save_prompt
from blackbox_vp.prompts import PaddingPrompt
from blackbox_vp.quantize import quantize


def test_padding_keeps_the_image_region_untouched(rng):
    prompt = PaddingPrompt((64, 64), width=9)
    images = rng.integers(0, 256, (3, 46, 46, 3), dtype=np.uint8)
    theta = rng.normal(size=(2, prompt.dimension))
    out = prompt.apply(theta, images)
    assert out.shape == (6, 64, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:3, 9:55, 9:55], images)
    np.testing.assert_array_equal(out[3:, 9:55, 9:55], images)
    assert not np.array_equal(out[0, :9], out[3, :9])  # the border follows theta


def test_zero_theta_is_a_grey_border():
    prompt = PaddingPrompt((64, 64), width=9)
    out = prompt.apply(prompt.initial(), np.zeros((1, 46, 46, 3), dtype=np.uint8))
    assert set(np.unique(out[0, :9])) == {128}  # 127.5 rounds half to even -> 128


def test_prompt_wider_than_the_image_is_refused():
    with pytest.raises(ValueError, match="--width 32 is too wide for the model.s 64x64 input.*use --width 31 or less"):
        PaddingPrompt((64, 64), width=32)


def test_grid_and_full_dimensions():
    assert CoarseGrid((64, 64), grid=4).dimension == 48
    assert FullResolution((64, 64)).dimension == 3 * 64 * 64
    pattern = CoarseGrid((64, 64), grid=4).expand(torch.ones(2, 48))
    assert pattern.shape == (2, 3, 64, 64) and torch.allclose(pattern, torch.ones_like(pattern))


def test_straight_through_quantize_rounds_forward_and_passes_gradient():
    x = torch.tensor([0.4, 10.6, 254.7, 300.0], requires_grad=True)
    y = quantize(x)
    assert y.tolist() == [0.0, 11.0, 255.0, 255.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_differentiable_path_scores_the_same_pixels_as_the_black_box_path(rng):
    prompt = PaddingPrompt((64, 64), width=9)
    images = rng.integers(0, 256, (2, 46, 46, 3), dtype=np.uint8)
    theta = rng.normal(size=prompt.dimension)
    black = prompt.apply(theta, images)
    white = prompt.apply_differentiable(torch.tensor(theta, dtype=torch.float32),
                                        torch.tensor(images).permute(0, 3, 1, 2).float())
    np.testing.assert_array_equal((white * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy(), black)


def test_prompt_file_round_trip(tmp_path, rng):
    prompt = PaddingPrompt((64, 64), width=7, parameterization=CoarseGrid((64, 64), grid=3))
    theta = rng.normal(size=prompt.dimension)
    save_prompt(tmp_path / "p.json", prompt, theta, FrequencyMapping([3, 1, 2]), {"test_accuracy": 0.5})
    loaded, theta2, mapping, metadata = load_prompt(tmp_path / "p.json")
    np.testing.assert_array_equal(theta, theta2)
    assert loaded.config() == prompt.config() and mapping.source_labels == [3, 1, 2]
    images = rng.integers(0, 256, (1, 50, 50, 3), dtype=np.uint8)
    np.testing.assert_array_equal(loaded.apply(theta2, images), prompt.apply(theta, images))
    assert metadata == {"test_accuracy": 0.5}


def test_loading_a_foreign_file_names_it(tmp_path):
    path = tmp_path / "other.json"
    path.write_text('{"format": "x"}')
    with pytest.raises(ValueError, match="other.json"):
        load_prompt(path)
