"""A tiny torch model, the surrogate of tests: white-box like EfficientNet-Lite, in milliseconds."""

from __future__ import annotations

import torch
from torch import nn

from backends.torch_classifier import TorchClassifierBackend


def toy_torch_backend(device: str = "cpu", num_labels: int = 16, seed: int = 0) -> TorchClassifierBackend:
    """A fixed random convolution net (seeded) on 32x32 inputs with labels ``toy-torch-0`` ...: labels of its
    own, so a run that uses it as the surrogate of the ``toy`` backend needs the label adapter."""
    generator = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                          nn.Linear(128, num_labels))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return TorchClassifierBackend(model, [f"toy-torch-{i}" for i in range(num_labels)], (32, 32), max_batch=256,
                                  device=device, channels_last=False)
