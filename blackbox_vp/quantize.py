"""Quantization to what an API receives: 8-bit RGB (and, optionally, JPEG)."""

from __future__ import annotations

import torch


def quantize(pixels: torch.Tensor) -> torch.Tensor:
    """Round float pixels in [0, 255] to integers, with a straight-through gradient (Bengio et al. 2013).

    The forward value equals ``pixels.round().clamp(0, 255)``, exactly the uint8 image sent to a
    black-box; the backward pass treats the rounding as the identity so the white-box path scores
    the same pixels and still gets gradients.
    """
    rounded = pixels.clamp(0, 255).round()
    return pixels + (rounded - pixels).detach()


def to_uint8_nhwc(pixels: torch.Tensor) -> "numpy.ndarray":  # noqa: F821
    """(N, 3, H, W) float pixels in [0, 255] -> (N, H, W, 3) uint8 numpy array, rounded."""
    return pixels.detach().clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
