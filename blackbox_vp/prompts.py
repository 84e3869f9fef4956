"""Visual prompts: learnable pixels composed with the user's images into what the model sees.

A prompt owns the shapes and bounds: optimizers see an unconstrained flat vector ``theta``; the
prompt's parameterization expands it to a (3, h, w) pattern (the canvas, or the patch of a patch
prompt), squashed into [0, 255] with ``127.5 * (1 + tanh(x))`` (BAR, Tsai et al. 2020, eq. 1 uses
the same tanh bound) and composed. ``theta = 0`` is the no-prompt baseline: a uniform mid-grey
prompt (or, for an additive full-frame prompt over the image, no change at all).

Placement: with ``"shrink"`` the user's images arrive resized to ``inner_size`` (the data loader
resizes them) and sit in the middle of the canvas; with ``"overlay"`` they fill the canvas and the
prompt lies over them. Patch prompts always overlay.

Every composed image is rounded to 8-bit RGB, and optionally JPEG-compressed, before it is scored,
on both the black-box path (:meth:`Prompt.apply`) and the white-box path
(:meth:`Prompt.apply_differentiable`, straight-through gradients): both score the same pixels.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.nn.functional as F

from backends.errors import ConfigurationError
from backends.registry import Registry
from blackbox_vp.parameterizations import PARAMETERIZATIONS, Parameterization
from blackbox_vp.quantize import (
    check_jpeg_quality,
    jpeg,
    jpeg_straight_through,
    quantize,
    to_uint8_nhwc,
)

GREY = 127.5
PLACEMENTS = ("shrink", "overlay")


class Prompt(ABC):
    """Composes images with a pattern on a canvas of ``canvas_size``; user images are ``inner_size``.

    Subclasses set the pattern's size; the parameterization is resized to it (default: an 8 x 8 grid).
    ``jpeg_quality`` (None: off) JPEG-compresses every composed image after 8-bit rounding.
    """

    name: str

    def __init__(self, canvas_size: tuple[int, int], inner_size: tuple[int, int], pattern_size: tuple[int, int],
                 parameterization: Parameterization | None, jpeg_quality: int | None):
        check_jpeg_quality(jpeg_quality)
        self.canvas_size = (int(canvas_size[0]), int(canvas_size[1]))
        self.inner_size = (int(inner_size[0]), int(inner_size[1]))
        self.parameterization = (parameterization or PARAMETERIZATIONS.get("grid")(pattern_size)).resized(pattern_size)
        self.jpeg_quality = jpeg_quality

    @property
    def dimension(self) -> int:
        return self.parameterization.dimension

    def initial(self) -> np.ndarray:
        """The starting point: zeros, the no-prompt baseline."""
        return np.zeros(self.dimension)

    def pattern(self, theta: torch.Tensor) -> torch.Tensor:
        """Pixel values in [0, 255] of the prompt, (3, h, w) (or (P, 3, h, w) for P vectors)."""
        return GREY * (1.0 + torch.tanh(self.parameterization.expand(theta)))

    @abstractmethod
    def compose(self, theta: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Float pixels (N, 3, H, W) in [0, 255], differentiable in ``theta``, not yet quantized.

        ``theta`` is one vector (d,); ``images`` are float (N, 3, h, w) in [0, 255] at ``inner_size``.
        """

    def config(self) -> dict:
        """Everything needed to rebuild the prompt (without its parameters): its constructor's keywords."""
        return {"type": self.name, "canvas_size": list(self.canvas_size),
                "parameterization": self.parameterization.config(), "jpeg_quality": self.jpeg_quality}

    # Black-box path -------------------------------------------------------------------------------
    @torch.no_grad()
    def apply(self, thetas: np.ndarray, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, h, w, 3) prompted with each of ``thetas`` (P, d) -> uint8 (P * N, H, W, 3).

        Candidate-major order: rows [p * N, (p + 1) * N) carry candidate p. Quantized to 8 bits (and
        JPEG-decoded pixels if ``jpeg_quality`` is set) as an API receives them.
        """
        thetas = np.atleast_2d(thetas)
        n = len(images)
        out = np.empty((len(thetas) * n, *self.canvas_size, 3), dtype=np.uint8)
        paste = self._paster(images) if isinstance(images, np.ndarray) and images.dtype == np.uint8 else None
        x = None
        for p, theta in enumerate(thetas):
            block = out[p * n : (p + 1) * n]
            theta = torch.as_tensor(theta, dtype=torch.float32)
            if paste is None or not paste(theta, block):
                if x is None:
                    x = images_to_tensor(images)
                block[...] = to_uint8_nhwc(self.compose(theta, x))
            if self.jpeg_quality is not None:
                block[...] = jpeg(block, self.jpeg_quality)
        return out

    def _paster(self, images: np.ndarray):
        """A faster way to :meth:`apply` one candidate, or None where the prompt has none.

        Where every composed pixel is either the user's pixel or the prompt's whatever the image, the
        prompt's pixels are composed and rounded once per candidate, and both are copied as uint8
        into the output, instead of composing every image in float. The pixels are the same as
        :meth:`compose`'s, rounded; the callable returns False (use :meth:`compose`) when the
        pattern is not finite, where the float path's pixels are not defined.
        """
        return None

    # White-box path -------------------------------------------------------------------------------
    def apply_differentiable(self, theta: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Float images (N, 3, H, W) in [0, 1] for a torch model: the pixels :meth:`apply` sends.

        Rounding and JPEG are straight-through: exact in the forward pass, the identity backward.
        """
        pixels = quantize(self.compose(theta, images))
        if self.jpeg_quality is not None:
            pixels = jpeg_straight_through(pixels, self.jpeg_quality)
        return pixels / 255.0


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, h, w, 3) -> float (N, 3, h, w) in [0, 255]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()


def rounded_hwc(pixels: torch.Tensor) -> np.ndarray | None:
    """Float (3, h, w) pixels -> uint8 (h, w, 3), as :func:`to_uint8_nhwc` rounds them; None if one is not finite.

    In numpy (clipping and rounding half to even are exact there as in torch): a few small torch
    operations per candidate each wait for torch's thread pool, which is slow on a busy machine.
    """
    values = pixels.detach().cpu().numpy()
    if not np.isfinite(values).all():
        return None
    return np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8).transpose(1, 2, 0)


PROMPTS: Registry[type[Prompt]] = Registry("prompt", given=("canvas_size", "parameterization"))


class FramedPrompt(Prompt):
    """An image region inside a border of ``width`` pixels: the shared base of padding and full-frame.

    ``placement="shrink"``: the image is ``width`` pixels smaller on each side and padded (with grey)
    to the canvas; ``"overlay"``: the image fills the canvas.
    """

    def __init__(self, canvas_size: tuple[int, int], width: int, placement: str,
                 parameterization: Parameterization | None, jpeg_quality: int | None):
        height, wide = canvas_size
        if width < 1:
            raise ConfigurationError(f"--width {width} must be at least 1 pixel")
        if 2 * width >= min(height, wide):
            raise ConfigurationError(f"--width {width} is too wide for the model's {height}x{wide} input: a border leaves "
                                     f"no image; use --width {(min(height, wide) - 1) // 2} or less")
        if placement not in PLACEMENTS:
            raise ConfigurationError(f"unknown placement {placement!r}; choose one of: {', '.join(PLACEMENTS)}")
        inner_size = (height - 2 * width, wide - 2 * width) if placement == "shrink" else (height, wide)
        super().__init__(canvas_size, inner_size, canvas_size, parameterization, jpeg_quality)
        self.width = width
        self.placement = placement
        border = torch.ones(1, height, wide)
        border[:, width : height - width, width : wide - width] = 0.0
        self.border = border

    @property
    def separable(self) -> bool:
        """Whether each composed pixel is either the image's (inside the border) or the prompt's (on it)."""
        return True

    def _paster(self, images: np.ndarray):
        if not self.separable or images.shape[1:] != (*self.inner_size, 3):
            return None
        (h, w), b = self.canvas_size, self.width
        interior = images if self.placement == "shrink" else images[:, b : h - b, b : w - b]
        probe = torch.zeros(1, 3, *self.inner_size)  # any image gives the same border pixels

        def paste(theta: torch.Tensor, block: np.ndarray) -> bool:
            ring = rounded_hwc(self._frame(theta, probe))
            if ring is None:
                return False
            block[:, :b] = ring[:b]
            block[:, h - b :] = ring[h - b :]
            block[:, b : h - b, :b] = ring[b : h - b, :b]
            block[:, b : h - b, w - b :] = ring[b : h - b, w - b :]
            block[:, b : h - b, b : w - b] = interior
            return True

        return paste

    def _frame(self, theta: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
        """(3, H, W) float pixels equal to the composed ones on the border (and not finite where they are not)."""
        return self.compose(theta, probe)[0]

    def canvas(self, images: torch.Tensor) -> torch.Tensor:
        """The images on the canvas: grey-padded around (shrink) or as they are (overlay)."""
        if self.placement == "overlay":
            return images
        w = self.width
        return F.pad(images, (w, w, w, w), value=GREY)

    def config(self) -> dict:
        return {**super().config(), "width": self.width, "placement": self.placement}


@PROMPTS.register("padding", "a learnable border around the shrunken image, or over its border with "
                  "--placement overlay (Bahng et al. 2022); --width pixels")
class PaddingPrompt(FramedPrompt):
    """The border pixels are the pattern (Bahng et al. 2022, *Exploring visual prompts*, sec. 3)."""


    def __init__(self, canvas_size: tuple[int, int] = (224, 224), *, width: int = 32, placement: str = "shrink",
                 parameterization: Parameterization | None = None, jpeg_quality: int | None = None):
        super().__init__(canvas_size, width, placement, parameterization, jpeg_quality)

    def _frame(self, theta: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
        return self.pattern(theta)  # compose's border: canvas * 0 + pattern * 1, exactly the pattern

    def compose(self, theta: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        border = self.border.to(images)
        return self.canvas(images) * (1.0 - border) + self.pattern(theta) * border


@PROMPTS.register("full-frame", "an additive pattern over the whole canvas where a mask allows: the border "
                  "around the shrunken image, or all of it with --placement overlay (BAR, Tsai et al. 2020)")
class FullFramePrompt(FramedPrompt):
    """``clamp(canvas + M * 255 tanh(W), 0, 255)``: BAR's prompt (Tsai et al. 2020, eq. 1, ``P = tanh(W * M)``).

    The mask M is zero on the image region with ``placement="shrink"`` (BAR) and one everywhere with
    ``"overlay"``, where the pattern is a signed perturbation of the whole image. The padding is
    mid-grey, so ``theta = 0`` is the grey border of the padding prompt (shrink) or the bare image
    (overlay). ``width`` is the border of the shrunken image; ``"overlay"`` does not use it.
    """


    def __init__(self, canvas_size: tuple[int, int] = (224, 224), *, width: int = 32, placement: str = "shrink",
                 parameterization: Parameterization | None = None, jpeg_quality: int | None = None):
        super().__init__(canvas_size, width, placement, parameterization, jpeg_quality)
        self.mask = self.border if placement == "shrink" else torch.ones(1, *self.canvas_size)

    @property
    def separable(self) -> bool:
        return self.placement == "shrink"  # overlay adds the pattern to every pixel of the image

    def delta(self, theta: torch.Tensor) -> torch.Tensor:
        """The additive pattern, 255 tanh(x) in [-255, 255]: any pixel can reach any value."""
        return 2.0 * self.pattern(theta) - 255.0

    def compose(self, theta: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return (self.canvas(images) + self.mask.to(images) * self.delta(theta)).clamp(0.0, 255.0)


class PatchPrompt(Prompt):
    """A square pattern of ``patch`` pixels pasted over the full-size image (Bahng et al. 2022, sec. 3)."""

    def __init__(self, canvas_size: tuple[int, int], patch: int, parameterization: Parameterization | None,
                 jpeg_quality: int | None):
        if patch < 1:
            raise ConfigurationError(f"--patch {patch} must be at least 1 pixel")
        if patch > min(canvas_size):
            raise ConfigurationError(f"--patch {patch} is larger than the model's {canvas_size[0]}x{canvas_size[1]} "
                                     f"input; use --patch {min(canvas_size)} or less")
        super().__init__(canvas_size, canvas_size, (patch, patch), parameterization, jpeg_quality)
        self.patch = patch

    @abstractmethod
    def positions(self, images: torch.Tensor) -> list[tuple[int, int]]:
        """The patch's top-left corner (row, column) on each image."""

    def _paster(self, images: np.ndarray):
        if images.shape[1:] != (*self.canvas_size, 3):
            return None
        corners, p = self.positions(images_to_tensor(images)), self.patch  # they depend on the images only

        def paste(theta: torch.Tensor, block: np.ndarray) -> bool:
            tile = rounded_hwc(self.pattern(theta))
            if tile is None:
                return False
            block[...] = images
            for i, (y, x) in enumerate(corners):
                block[i, y : y + p, x : x + p] = tile
            return True

        return paste

    def compose(self, theta: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        pattern, p = self.pattern(theta), self.patch
        out = images.clone()
        for i, (y, x) in enumerate(self.positions(images)):
            out[i, :, y : y + p, x : x + p] = pattern
        return out

    def config(self) -> dict:
        return {**super().config(), "patch": self.patch}


@PROMPTS.register("fixed-patch", "a learnable square in the top-left corner over the full-size image "
                  "(Bahng et al. 2022); --patch pixels")
class FixedPatchPrompt(PatchPrompt):

    def __init__(self, canvas_size: tuple[int, int] = (224, 224), *, patch: int = 48,
                 parameterization: Parameterization | None = None, jpeg_quality: int | None = None):
        super().__init__(canvas_size, patch, parameterization, jpeg_quality)

    def positions(self, images: torch.Tensor) -> list[tuple[int, int]]:
        return [(0, 0)] * len(images)


@PROMPTS.register("random-patch", "a learnable square at a position drawn per image over the full-size image "
                  "(Bahng et al. 2022); --patch pixels, positions seeded by --seed")
class RandomPatchPrompt(PatchPrompt):
    """The patch's position is drawn per image from a hash of ``seed`` and the image's 8-bit pixels.

    Bahng et al. draw it afresh each time; here it is a deterministic function of the image content,
    so the same image always gets the same pixels whatever batch or call it comes in (the black-box
    and white-box paths, repeated scoring, caching and ``bbvp evaluate`` all agree).
    """


    def __init__(self, canvas_size: tuple[int, int] = (224, 224), *, patch: int = 48, seed: int = 0,
                 parameterization: Parameterization | None = None, jpeg_quality: int | None = None):
        super().__init__(canvas_size, patch, parameterization, jpeg_quality)
        self.seed = seed

    def positions(self, images: torch.Tensor) -> list[tuple[int, int]]:
        rows, columns = self.canvas_size[0] - self.patch + 1, self.canvas_size[1] - self.patch + 1
        pixels = images.detach().clamp(0, 255).round().to(torch.uint8).cpu().numpy()
        corners = []
        for image in pixels:
            digest = hashlib.blake2b(f"{self.seed}:".encode() + image.tobytes(), digest_size=8).digest()
            draw = int.from_bytes(digest, "little")
            corners.append((draw % rows, draw // rows % columns))
        return corners

    def config(self) -> dict:
        return {**super().config(), "seed": self.seed}
