"""What a run bought: its learned prompt and output mapping in front of a backend, a classifier of *your*
classes (``prompt.json``, :mod:`blackbox_vp.prompt_file`).

    from blackbox_vp import load_classifier
    classifier = load_classifier("runs/x/prompt.json")
    classes, probabilities = classifier.predict(images, backend)  # images: (N, H, W, 3) uint8, any size

Images are resized into the prompt's inner region as the run's data were, prompted, scored by the backend
in queries of at most ``CHUNK`` images, and mapped to the run's classes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from backends import Backend, BackendWrapper
from backends.base import check_images, pixel_size
from backends.errors import ConfigurationError
from blackbox_vp.data import IMAGE_SUFFIXES, MAX_PIXELS, read_rgb, resize_images
from blackbox_vp.mappings import OutputMapping
from blackbox_vp.prompt_file import load_prompt
from blackbox_vp.prompts import Prompt

CHUNK = 256  # images per query


@dataclass
class PromptedClassifier:
    """A learned prompt (``theta``) and output mapping; ``classes`` are the run's, ``metadata`` its record."""

    prompt: Prompt
    theta: np.ndarray
    mapping: OutputMapping
    classes: list[str]
    metadata: dict = field(default_factory=dict)

    def probabilities(self, images: np.ndarray, backend: Backend) -> np.ndarray:
        """(N, classes) probabilities of uint8 (N, H, W, 3) images; resized to the prompt's inner size if needed."""
        images = self.fit(np.asarray(images, dtype=np.uint8))
        rows = []
        for start in range(0, len(images), CHUNK):
            scores = backend.query(self.prompt.apply(self.theta, images[start : start + CHUNK]))
            rows.append(self.mapping.probabilities(torch.from_numpy(scores)).numpy())
        return np.concatenate(rows) if rows else np.zeros((0, len(self.classes)))

    def predict(self, images: np.ndarray, backend: Backend) -> tuple[np.ndarray, np.ndarray]:
        """Each image's class index and that class's probability."""
        probabilities = self.probabilities(images, backend)
        chosen = probabilities.argmax(axis=1)
        return chosen, probabilities[np.arange(len(chosen)), chosen]

    def fit(self, images: np.ndarray) -> np.ndarray:
        """``images`` at the prompt's inner size (bilinear, as folders of images are read)."""
        from PIL import Image

        if images.ndim != 4 or images.shape[-1] != 3:
            raise ConfigurationError(f"images must be (N, H, W, 3) uint8 RGB, got shape {images.shape}")
        size = pixel_size(self.prompt.inner_size)
        return images if tuple(images.shape[1:3]) == size else resize_images(images, size, Image.Resampling.BILINEAR)


class PromptedBackend(BackendWrapper):
    """The adapted classifier as a backend (what ``bbvp serve --prompt`` serves): images at the prompt's inner
    size in, probabilities over *your* classes out; each query is prompted and sent to ``upstream``."""

    def __init__(self, classifier: PromptedClassifier, upstream: Backend):
        super().__init__(upstream)
        self.classifier = classifier
        self.labels = list(classifier.classes)
        self.image_size = pixel_size(classifier.prompt.inner_size)
        self.max_batch = CHUNK

    def query(self, images: np.ndarray) -> np.ndarray:
        return self.classifier.probabilities(check_images(images), self.inner)

    def _query_batch(self, images: np.ndarray) -> np.ndarray:
        return self.query(images)


def load_classifier(path: str | Path) -> PromptedClassifier:
    """The classifier in a ``prompt.json`` written by ``bbvp optimize``; errors name the file."""
    prompt, theta, mapping, metadata = load_prompt(Path(path))
    classes = metadata.get("classes")
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        raise ConfigurationError(f"{path} names no classes (metadata.classes); it was not written by `bbvp optimize`")
    return PromptedClassifier(prompt, theta, mapping, classes, metadata)


def image_files(paths: Sequence[Path]) -> Iterator[Path]:
    """The files given, and the image files under the folders given (sorted, recursively)."""
    for path in paths:
        if path.is_dir():
            yield from sorted(file for file in path.rglob("*") if file.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield path


def read_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """One image file as RGB at ``size``; a ValueError naming the file when it cannot be read."""
    try:
        return read_rgb(path, size, MAX_PIXELS, Counter())
    except (OSError, ValueError) as error:
        raise ConfigurationError(f"cannot read image {path}: {error}") from None
