"""Local Hugging Face ``transformers`` models as backends (the optional extra ``hf``).

Two kinds of model, each loaded from a local directory the user already has (``save_pretrained``
output: ``config.json``, the weights and ``preprocessor_config.json``; nothing is downloaded):

- :func:`hf_image_classifier`: any image-classification model (ViT, DeiT, BEiT, ConvNeXt, ...);
  the labels are ``config.id2label``.
- :class:`HFZeroShotBackend`: a zero-shot image-text model (CLIP and kin) given the user's class
  names; the labels are those names, so the ``identity`` output mapping applies.

Both are :class:`~backends.torch_classifier.TorchClassifierBackend` objects, so they are white-box
too: :meth:`logits` takes float images in [0, 1] and lets gradients through, and either can serve as
the reference or as a surrogate. Preprocessing follows the saved ``preprocessor_config.json``
(resize, center crop, rescale, normalize), done in torch so that it is differentiable; torchvision is
not needed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from backends.base import pixel_size
from backends.errors import ConfigurationError
from backends.torch_classifier import TorchClassifierBackend

PREPROCESSOR_FILE = "preprocessor_config.json"
_RESAMPLE_MODES = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bicubic"}  # PIL codes


@dataclass(frozen=True)
class ImagePreprocessing:
    """What a saved Hugging Face image processor does to an image, for float images in [0, 1].

    ``resize`` is either ("exact", (H, W)) or ("shortest_edge", S); ``crop`` is the center crop (H, W)
    or None. ``mean``/``std`` apply to images in [0, 1] (the processor's rescale factor folded in).
    """

    resize: tuple[str, Any] | None  # ("exact", (H, W)) or ("shortest_edge", S)
    crop: tuple[int, int] | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    mode: str = "bilinear"

    @property
    def image_size(self) -> tuple[int, int] | None:
        """The (H, W) the model receives for a square input, or None if the processor does not fix it."""
        if self.crop is not None:
            return self.crop
        if self.resize is None:
            return None
        kind, value = self.resize
        return pixel_size(value) if kind == "exact" else (int(value), int(value))

    @classmethod
    def from_dict(cls, config: dict) -> ImagePreprocessing:
        resize: tuple[str, Any] | None = None
        crop = None
        size = config.get("size")
        crop_size = config.get("crop_size")
        if config.get("do_resize", True) and size is not None:
            if isinstance(size, int):
                size = {"height": size, "width": size}
            if "height" in size and "width" in size:
                resize = ("exact", (int(size["height"]), int(size["width"])))
            elif "shortest_edge" in size:
                edge = int(size["shortest_edge"])
                crop_pct = config.get("crop_pct")
                if crop_pct is not None and edge < 384 and crop_size is None:  # ConvNeXt: resize, then crop to edge
                    resize = ("shortest_edge", int(edge / crop_pct))
                    crop = (edge, edge)
                else:
                    resize = ("shortest_edge", edge)
            else:
                raise ConfigurationError(f"unsupported 'size' in {PREPROCESSOR_FILE}: {size}")
        if config.get("do_center_crop", False) and crop_size is not None:
            if isinstance(crop_size, int):
                crop_size = {"height": crop_size, "width": crop_size}
            crop = (int(crop_size["height"]), int(crop_size["width"]))
        # The processor computes (u8 * rescale_factor - mean) / std, with u8 = 255 x; fold the scale in.
        scale = 255.0 * float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 255.0
        if config.get("do_normalize", True):
            mean = _three(config.get("image_mean", 0.5))
            std = _three(config.get("image_std", 0.5))
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        return cls(resize=resize, crop=crop, mean=_three([m / scale for m in mean]), std=_three([s / scale for s in std]),
                   mode=_RESAMPLE_MODES.get(int(config.get("resample", 2)), "bilinear"))

    @classmethod
    def from_directory(cls, path: str | Path) -> ImagePreprocessing:
        file = Path(path) / PREPROCESSOR_FILE
        if not file.is_file():
            raise FileNotFoundError(
                f"{file} not found: save the model's image processor next to it "
                f"(AutoImageProcessor.from_pretrained(...).save_pretrained('{path}'))")
        return cls.from_dict(json.loads(file.read_text(encoding="utf-8")))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Float images (N, 3, H, W) in [0, 1] -> the model's normalized input, differentiably."""
        if self.resize is not None:
            height, width = images.shape[-2:]
            kind, value = self.resize
            if kind == "exact":
                target = pixel_size(value)
            else:  # the short side becomes ``value``, the long side scales with it (truncated, as HF does)
                short, long = (height, width) if height <= width else (width, height)
                scaled = int(value * long / short)
                target = (value, scaled) if height <= width else (scaled, value)
            if tuple(images.shape[-2:]) != target:
                images = F.interpolate(images, size=target, mode=self.mode,
                                       **({} if self.mode == "nearest" else {"align_corners": False, "antialias": True}))
        if self.crop is not None:
            images = center_crop(images, self.crop)
        mean = images.new_tensor(self.mean).view(1, 3, 1, 1)
        std = images.new_tensor(self.std).view(1, 3, 1, 1)
        return (images - mean) / std


def _three(value) -> tuple[float, float, float]:
    values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != 3:
        raise ConfigurationError(f"expected 3 channel values in {PREPROCESSOR_FILE}, got {value}")
    return values[0], values[1], values[2]


def center_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop the center (H, W); pads with zeros where the image is smaller, as HF's center_crop does."""
    height, width = images.shape[-2:]
    crop_h, crop_w = size
    if height < crop_h or width < crop_w:
        pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        height, width = images.shape[-2:]
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return images[..., top : top + crop_h, left : left + crop_w]


class HFBackend(TorchClassifierBackend):
    """A torch classifier whose preprocessing is a saved Hugging Face image processor's."""

    def __init__(self, model: torch.nn.Module, labels: Sequence[str], preprocessing: ImagePreprocessing,
                 image_size: tuple[int, int], max_batch: int = 16, device: str = "cpu"):
        super().__init__(model, labels, image_size, mean=0.0, std=1.0, max_batch=max_batch, device=device)
        self.preprocessing = preprocessing

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for float images (N, 3, H, W) in [0, 1], preprocessed as the saved processor does."""
        return self.model(self.preprocessing(images))


class _ClassifierLogits(torch.nn.Module):
    """``transformers`` classifiers return an output object; the backend wants the logits tensor."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.hf_model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.hf_model(pixel_values=pixel_values).logits


def _model_image_size(config) -> tuple[int, int] | None:
    size = getattr(config, "image_size", None)
    if size is None and hasattr(config, "vision_config"):
        size = getattr(config.vision_config, "image_size", None)
    if size is None:
        return None
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _input_size(preprocessing: ImagePreprocessing, config, path) -> tuple[int, int]:
    size = preprocessing.image_size or _model_image_size(config)
    if size is None:
        raise ConfigurationError(f"{path}: neither {PREPROCESSOR_FILE} nor config.json gives an input size")
    return size


def _check_directory(path: str | Path) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a saved transformers model (no config.json); pass the directory "
                                "that save_pretrained wrote")
    return path


def hf_image_classifier(path: str | Path, device: str = "cpu", max_batch: int = 16) -> HFBackend:
    """A local ``transformers`` image-classification model (ViT and kin) as a white-box backend.

    Labels are ``config.id2label`` in output order; preprocessing is ``preprocessor_config.json``'s.
    """
    from transformers import AutoModelForImageClassification

    path = _check_directory(path)
    preprocessing = ImagePreprocessing.from_directory(path)
    model = AutoModelForImageClassification.from_pretrained(str(path), local_files_only=True).float()
    config = model.config
    labels = [str(config.id2label[i]) for i in range(config.num_labels)]
    return HFBackend(_ClassifierLogits(model), labels, preprocessing, _input_size(preprocessing, config, path),
                     max_batch=max_batch, device=device)


def _features(output) -> torch.Tensor:
    """``get_*_features`` return a tensor in transformers 4 and an output object in 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class _ZeroShotLogits(torch.nn.Module):
    """Scaled cosine similarities between images and fixed, precomputed text embeddings."""

    def __init__(self, model: torch.nn.Module, text_embeddings: torch.Tensor):
        super().__init__()
        self.hf_model: Any = model  # a transformers model: its methods are not in torch's stubs
        self.register_buffer("text_embeddings", text_embeddings)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        image = _features(self.hf_model.get_image_features(pixel_values=pixel_values))
        image = image / image.norm(dim=-1, keepdim=True)
        logits = self.hf_model.logit_scale.exp() * image @ self.text_embeddings.to(image.dtype).T
        bias = getattr(self.hf_model, "logit_bias", None)  # SigLIP
        return logits if bias is None else logits + bias


class HFZeroShotBackend(HFBackend):
    """A local zero-shot image-text model (CLIP and kin) over the user's class names.

    Each class name is put in ``template`` ("a photo of a {}"), embedded once by the text encoder;
    an image's scores are the softmax over classes of the model's scaled image-text cosine
    similarities. ``labels`` are ``class_names`` in the given order, so the output mapping is the
    identity (``--mapping identity``). The model directory needs its tokenizer files too.
    """

    def __init__(self, path: str | Path, class_names: Sequence[str], template: str = "a photo of a {}",
                 device: str = "cpu", max_batch: int = 16):
        from transformers import AutoModel, AutoTokenizer

        class_names = [str(name) for name in class_names]
        if len(class_names) < 2:
            raise ConfigurationError(f"a zero-shot backend needs at least 2 class names, got {class_names}")
        if len(set(class_names)) != len(class_names):
            raise ConfigurationError(f"class names must be distinct, got {class_names}")
        if "{}" not in template:
            raise ConfigurationError(f"the template must contain '{{}}' where the class name goes, got {template!r}")
        path = _check_directory(path)
        preprocessing = ImagePreprocessing.from_directory(path)
        model = AutoModel.from_pretrained(str(path), local_files_only=True).float().eval()
        for method in ("get_text_features", "get_image_features"):
            if not hasattr(model, method):
                raise ConfigurationError(f"{path}: {type(model).__name__} is not an image-text model (no {method})")
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.class_names = class_names
        self.template = template
        self.prompts = [template.format(name) for name in class_names]
        text = tokenizer(self.prompts, padding=True, return_tensors="pt")
        with torch.no_grad():
            embeddings = _features(model.get_text_features(**text))
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        super().__init__(_ZeroShotLogits(model, embeddings), class_names, preprocessing,
                         _input_size(preprocessing, model.config, path), max_batch=max_batch, device=device)
