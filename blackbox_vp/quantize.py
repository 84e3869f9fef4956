"""Quantization to what an API receives: 8-bit RGB and, optionally, JPEG."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from backends.errors import ConfigurationError

JPEG_SUBSAMPLING = "4:2:0"  # Pillow's default chroma subsampling, fixed so that results do not depend on it


def quantize(pixels: torch.Tensor) -> torch.Tensor:
    """Round float pixels in [0, 255] to integers, with a straight-through gradient (Bengio et al. 2013).

    The forward value equals ``pixels.round().clamp(0, 255)``, exactly the uint8 image sent to a
    black-box; the backward pass treats the rounding as the identity so the white-box path scores
    the same pixels and still gets gradients.
    """
    rounded = pixels.clamp(0, 255).round()
    return pixels + (rounded - pixels).detach()


def to_uint8_nhwc(pixels: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) float pixels in [0, 255] -> (N, H, W, 3) uint8 numpy array, rounded."""
    return pixels.detach().clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def check_jpeg_quality(quality: int | None) -> None:
    if quality is not None and not 1 <= quality <= 100:
        raise ConfigurationError(f"JPEG quality must be between 1 and 100 (or None for no JPEG), got {quality}")


def jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """uint8 (N, H, W, 3) -> the same images JPEG-encoded at ``quality`` by Pillow and decoded again.

    What a model behind an API sees of an image sent as JPEG; deterministic for a given Pillow.
    """
    check_jpeg_quality(quality)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING)
        buffer.seek(0)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


def jpeg_straight_through(pixels: torch.Tensor, quality: int) -> torch.Tensor:
    """Float (N, 3, H, W) 8-bit pixels -> their JPEG-decoded values, with an identity gradient.

    The forward value is :func:`jpeg` of the rounded pixels, so the white-box path scores the pixels
    the black-box path sends; the backward pass ignores the compression (straight-through).
    """
    decoded = torch.from_numpy(jpeg(to_uint8_nhwc(pixels), quality)).permute(0, 3, 1, 2).to(pixels)
    return pixels + (decoded - pixels).detach()
