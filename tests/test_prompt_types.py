"""Every prompt type with every parameterization, JPEG, and property tests of composition (hypothesis)."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blackbox_vp.mappings import FrequencyMapping
from blackbox_vp.parameterizations import PARAMETERIZATIONS, LowFrequencyDCT, RandomSubspace, dct_basis
from blackbox_vp.prompt_file import load_prompt, save_prompt
from blackbox_vp.prompts import (
    PROMPTS,
    FixedPatchPrompt,
    FullFramePrompt,
    PaddingPrompt,
    RandomPatchPrompt,
    images_to_tensor,
)
from blackbox_vp.quantize import jpeg

CANVAS = (32, 32)
WIDTH, PATCH = 5, 8
PROMPT_OPTIONS = {
    "padding": [{"width": WIDTH, "placement": "shrink"}, {"width": WIDTH, "placement": "overlay"}],
    "full-frame": [{"width": WIDTH, "placement": "shrink"}, {"width": WIDTH, "placement": "overlay"}],
    "fixed-patch": [{"patch": PATCH}],
    "random-patch": [{"patch": PATCH, "seed": 3}],
}
PARAMETERIZATION_OPTIONS = {"full": {}, "grid": {"grid": 3}, "dct": {"k": 3},
                            "subspace": {"dim": 12, "seed": 1, "grid": 4}}
VARIANTS = [(kind, options) for kind, variants in PROMPT_OPTIONS.items() for options in variants]
EVERY = [pytest.param(kind, options, name, id=f"{kind}-{options.get('placement', 'overlay')}-{name}")
         for kind, options in VARIANTS for name in PARAMETERIZATION_OPTIONS]


def make(kind: str, options: dict, parameterization: str = "grid", jpeg_quality: int | None = None):
    sized = PARAMETERIZATIONS.get(parameterization)(CANVAS, **PARAMETERIZATION_OPTIONS[parameterization])
    return PROMPTS.get(kind)(CANVAS, parameterization=sized, jpeg_quality=jpeg_quality, **options)


def placed(prompt, images: np.ndarray) -> np.ndarray:
    """The user's images where they sit on the canvas, -1 where there is no image."""
    canvas = np.full((len(images), *CANVAS, 3), -1, dtype=np.int16)
    offset = (CANVAS[0] - prompt.inner_size[0]) // 2
    canvas[:, offset : offset + prompt.inner_size[0], offset : offset + prompt.inner_size[1]] = images
    return canvas


def prompt_region(prompt, images: np.ndarray) -> np.ndarray:
    """(N, H, W) True where the prompt may change pixels, worked out from the prompt's configuration."""
    region = np.zeros((len(images), *CANVAS), dtype=bool)
    if isinstance(prompt, FullFramePrompt) and prompt.placement == "overlay":
        region[:] = True
    elif isinstance(prompt, PaddingPrompt | FullFramePrompt):
        region[:] = True
        region[:, WIDTH:-WIDTH, WIDTH:-WIDTH] = False
    elif isinstance(prompt, FixedPatchPrompt):
        region[:, :PATCH, :PATCH] = True
    else:
        corners = prompt.positions(images_to_tensor(images))
        for i, (y, x) in enumerate(corners):
            region[i, y : y + PATCH, x : x + PATCH] = True
    return region


def as_uint8(white: torch.Tensor) -> np.ndarray:
    return (white * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_every_registered_prompt_and_parameterization_is_covered():
    assert set(PROMPT_OPTIONS) == set(PROMPTS.names())
    assert set(PARAMETERIZATION_OPTIONS) == set(PARAMETERIZATIONS.names())


@pytest.mark.parametrize("kind, options, name", EVERY)
def test_every_type_and_parameterization_composes_uint8_that_both_paths_agree_on(kind, options, name, rng):
    prompt = make(kind, options, name)
    images = rng.integers(0, 256, (3, *prompt.inner_size, 3), dtype=np.uint8)
    thetas = rng.normal(size=(2, prompt.dimension))
    out = prompt.apply(thetas, images)
    assert out.shape == (6, *CANVAS, 3) and out.dtype == np.uint8
    assert prompt.dimension == len(prompt.initial()) == prompt.parameterization.dimension
    np.testing.assert_array_equal(prompt.apply(prompt.initial(), images), prompt.apply(prompt.initial(), images))
    for p, theta in enumerate(thetas):
        white = prompt.apply_differentiable(torch.tensor(theta, dtype=torch.float32), images_to_tensor(images))
        assert white.shape == (3, 3, *CANVAS)
        np.testing.assert_array_equal(as_uint8(white), out[3 * p : 3 * (p + 1)])
    region = prompt_region(prompt, images)
    outside = placed(prompt, images)
    np.testing.assert_array_equal(out[:3][~region], outside[~region])
    assert not np.array_equal(out[:3][region], out[3:][region])  # the prompt follows theta


def test_the_initial_prompt_is_grey_or_the_bare_image(rng):
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    padding = make("padding", {"width": WIDTH, "placement": "overlay"})
    border = prompt_region(padding, images)
    assert set(np.unique(padding.apply(padding.initial(), images)[border])) == {128}
    frame = make("full-frame", {"width": WIDTH, "placement": "shrink"})
    small = images[:, : frame.inner_size[0], : frame.inner_size[1]]
    shrunk = make("padding", {"width": WIDTH, "placement": "shrink"})
    np.testing.assert_array_equal(frame.apply(frame.initial(), small), shrunk.apply(shrunk.initial(), small))
    additive = make("full-frame", {"width": WIDTH, "placement": "overlay"})
    np.testing.assert_array_equal(additive.apply(additive.initial(), images), images)
    patch = make("fixed-patch", {"patch": PATCH})
    np.testing.assert_array_equal(patch.apply(patch.initial(), images)[:, :PATCH, :PATCH], 128)


def test_placement_sets_the_size_of_the_users_image():
    assert make("padding", {"width": WIDTH, "placement": "shrink"}).inner_size == (22, 22)
    assert make("padding", {"width": WIDTH, "placement": "overlay"}).inner_size == CANVAS
    assert make("random-patch", {"patch": PATCH}).inner_size == CANVAS
    with pytest.raises(ValueError, match="shrink, overlay"):
        PaddingPrompt(CANVAS, width=WIDTH, placement="stretch")
    with pytest.raises(ValueError, match="--patch 33 is larger than the model's 32x32 input; use --patch 32 or less"):
        FixedPatchPrompt(CANVAS, patch=33)


def test_a_patch_prompt_sizes_its_parameterization_to_the_patch():
    prompt = make("fixed-patch", {"patch": PATCH}, "full")
    assert prompt.parameterization.size == (PATCH, PATCH) and prompt.dimension == 3 * PATCH * PATCH
    with pytest.raises(ValueError, match="between 1 and 8"):
        FixedPatchPrompt(CANVAS, patch=PATCH, parameterization=LowFrequencyDCT(CANVAS, k=9))


def test_random_patch_positions_depend_on_the_image_and_seed_not_on_the_batch(rng):
    prompt = RandomPatchPrompt(CANVAS, patch=PATCH, seed=3)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    corners = prompt.positions(images_to_tensor(images))
    assert len(set(corners)) > 1
    assert all(0 <= y <= 32 - PATCH and 0 <= x <= 32 - PATCH for y, x in corners)
    assert prompt.positions(images_to_tensor(images[::-1])) == corners[::-1]
    assert prompt.positions(images_to_tensor(images[2:3])) == corners[2:3]
    assert RandomPatchPrompt(CANVAS, patch=PATCH, seed=4).positions(images_to_tensor(images)) != corners
    theta = rng.normal(size=prompt.dimension)
    np.testing.assert_array_equal(prompt.apply(theta, images[::-1]), prompt.apply(theta, images)[::-1])


def test_dct_basis_is_orthonormal_and_the_pattern_has_unit_variance():
    for n in (1, 7, 32):
        basis = dct_basis(n)
        torch.testing.assert_close(basis @ basis.T, torch.eye(n, dtype=torch.float64))
    dct = LowFrequencyDCT((32, 24), k=4)
    assert dct.dimension == 48
    columns = dct.expand(torch.eye(dct.dimension))  # the pattern of each unit vector
    assert columns.shape == (48, 3, 32, 24)
    torch.testing.assert_close(columns.pow(2).sum() / (3 * 32 * 24), torch.tensor(1.0))
    dc = torch.zeros(48)
    dc[0] = 1.0
    torch.testing.assert_close(dct.expand(dc)[0], torch.full((32, 24), 1 / 4))  # sqrt(HW) / k * 1 / sqrt(HW)
    with pytest.raises(ValueError, match="between 1 and 24"):
        LowFrequencyDCT((32, 24), k=25)


def test_subspace_is_reproducible_from_its_seed():
    a, b = RandomSubspace(CANVAS, dim=10, seed=5), RandomSubspace(CANVAS, dim=10, seed=5)
    c = RandomSubspace(CANVAS, dim=10, seed=6)
    theta = torch.randn(2, 10)
    assert a.expand(theta).shape == (2, 3, *CANVAS)
    torch.testing.assert_close(a.expand(theta), b.expand(theta), rtol=0, atol=0)
    assert not torch.allclose(a.expand(theta), c.expand(theta))
    torch.testing.assert_close(a.resized((8, 8)).projection, a.projection, rtol=0, atol=0)
    assert a.config() == {"type": "subspace", "dim": 10, "seed": 5, "grid": 16}
    with pytest.raises(ValueError, match="between 1 and 768"):
        RandomSubspace(CANVAS, dim=769)


def test_jpeg_changes_pixels_keeps_the_shape_and_is_deterministic(rng):
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    compressed = jpeg(images, 50)
    assert compressed.shape == images.shape and compressed.dtype == np.uint8
    assert not np.array_equal(compressed, images)
    np.testing.assert_array_equal(jpeg(images, 50), compressed)
    prompt = make("padding", {"width": WIDTH, "placement": "overlay"}, jpeg_quality=50)
    plain = make("padding", {"width": WIDTH, "placement": "overlay"})
    theta = rng.normal(size=prompt.dimension)
    np.testing.assert_array_equal(prompt.apply(theta, images), jpeg(plain.apply(theta, images), 50))
    with pytest.raises(ValueError, match="between 1 and 100"):
        make("padding", {"width": WIDTH}, jpeg_quality=0)


def test_jpeg_is_straight_through_on_the_white_box_path(rng):
    prompt = make("full-frame", {"width": WIDTH, "placement": "overlay"}, jpeg_quality=40)
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    theta = torch.tensor(rng.normal(size=prompt.dimension), dtype=torch.float32, requires_grad=True)
    white = prompt.apply_differentiable(theta, images_to_tensor(images))
    np.testing.assert_array_equal(as_uint8(white), prompt.apply(theta.detach().numpy(), images))
    white.sum().backward()
    assert theta.grad is not None and theta.grad.abs().sum() > 0


# Properties -------------------------------------------------------------------------------------------
variants = st.sampled_from(VARIANTS)
parameterizations = st.sampled_from(sorted(PARAMETERIZATION_OPTIONS))


@settings(max_examples=40, deadline=None)
@given(variant=variants, name=parameterizations, seed=st.integers(0, 2**32 - 1),
       scale=st.floats(0, 1e4, allow_nan=False))
def test_composition_stays_in_range_and_leaves_the_image_outside_the_prompt(variant, name, seed, scale):
    kind, options = variant
    prompt = make(kind, options, name)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (2, *prompt.inner_size, 3), dtype=np.uint8)
    theta = scale * rng.standard_normal(prompt.dimension)
    composed = prompt.compose(torch.tensor(theta, dtype=torch.float32), images_to_tensor(images))
    assert composed.min() >= 0 and composed.max() <= 255
    out = prompt.apply(theta, images)
    region = prompt_region(prompt, images)
    np.testing.assert_array_equal(out[~region], placed(prompt, images)[~region])


@settings(max_examples=25, deadline=None)
@given(variant=variants, name=parameterizations, seed=st.integers(0, 2**32 - 1),
       jpeg_quality=st.none() | st.integers(1, 100))
def test_parameters_round_trip_through_save_and_load(variant, name, seed, jpeg_quality):
    kind, options = variant
    prompt = make(kind, options, name, jpeg_quality)
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(prompt.dimension) * rng.choice([1e-300, 1e-3, 1.0, 1e3])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "prompt.json"
        save_prompt(path, prompt, theta, FrequencyMapping([0, 1]), {"seed": seed})
        loaded, theta2, _, metadata = load_prompt(path)
    np.testing.assert_array_equal(theta2, theta)
    assert loaded.config() == prompt.config() and metadata == {"seed": seed}
    images = rng.integers(0, 256, (1, *prompt.inner_size, 3), dtype=np.uint8)
    np.testing.assert_array_equal(loaded.apply(theta2, images), prompt.apply(theta, images))
