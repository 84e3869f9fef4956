"""Tasks: the user's labelled images, resized to the prompt's inner size, and seeded splits.

Built in: ``digits`` (scikit-learn's 1797 handwritten digits), ``squares`` (the counting task of
Elsayed et al. 2018, *Adversarial Reprogramming*), and any image folder ``ROOT/<class>/<image>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from blackbox_vp.registry import Registry

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


@dataclass
class Dataset:
    """Images (uint8, N x h x w x 3), integer labels (N,) and the class names."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> Dataset:
        return Dataset(self.name, self.images[indices], self.labels[indices], self.classes)


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset


TASKS: Registry[Dataset] = Registry("data set")


def _resize(images: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """Resize uint8 (N, h, w, 3) images to ``size`` = (height, width) with PIL."""
    if images.shape[1:3] == tuple(size):
        return images
    out = np.empty((len(images), size[0], size[1], 3), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = np.asarray(Image.fromarray(image).resize((size[1], size[0]), resample))
    return out


@TASKS.register("digits", "scikit-learn's 1797 handwritten digits (8x8, 10 classes), dark ink on white")
def load_digits(size: tuple[int, int], seed: int = 0) -> Dataset:
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    grey = (255 - digits.images * (255 / 16)).round().astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    return Dataset("digits", _resize(rgb, size, Image.BILINEAR), digits.target.astype(np.int64),
                   [str(d) for d in range(10)])


@TASKS.register("squares", "count 1-10 white squares on a 6x6 grid (Elsayed et al. 2018), generated")
def load_squares(size: tuple[int, int], seed: int = 0, count: int = 1800) -> Dataset:
    """36x36 black canvas, a 6x6 grid of 6-px cells; k in 1..10 cells get a white 4x4 square; label k-1."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    canvas = np.zeros((count, 36, 36), dtype=np.uint8)
    for i, label in enumerate(labels):
        for cell in rng.choice(36, size=label + 1, replace=False):
            row, col = divmod(int(cell), 6)
            canvas[i, row * 6 + 1 : row * 6 + 5, col * 6 + 1 : col * 6 + 5] = 255
    rgb = np.repeat(canvas[..., None], 3, axis=-1)
    return Dataset("squares", _resize(rgb, size, Image.NEAREST), labels.astype(np.int64),
                   [str(k) for k in range(1, 11)])


def load_folder(root: str | Path, size: tuple[int, int]) -> Dataset:
    """Images in ``root/<class>/<image>``; classes sorted by name. Unreadable files name themselves."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist or is not a directory")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise ValueError(f"data folder {root} has no class subfolders; expected {root}/<class>/<image>")
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"class folder {class_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for path in files:
            try:
                with Image.open(path) as image:
                    rgb = image.convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
            except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
                raise ValueError(f"cannot read image {path}: {error}. Remove or replace the file.") from error
            images.append(np.asarray(rgb))
            labels.append(label)
    return Dataset(root.name, np.stack(images), np.asarray(labels, dtype=np.int64), [p.name for p in class_dirs])


def load_task(name: str, size: tuple[int, int], seed: int = 0) -> Dataset:
    """A registered task by name, or an image folder if ``name`` is a directory path."""
    if name in TASKS:
        return TASKS.get(name)(size=size, seed=seed)
    if Path(name).exists():
        return load_folder(name, size)
    raise ValueError(f"unknown data {name!r}: not one of {', '.join(TASKS.names())} and not an existing folder "
                     "ROOT/<class>/<image>")


def split(dataset: Dataset, train: int, val: int, test: int, seed: int, shots: int | None = None) -> Splits:
    """Deterministic, class-stratified train/val/test split from ``seed``.

    ``test`` and ``val`` images are drawn first, in proportion to each class; ``train`` takes up to
    ``train`` of the rest, or exactly ``shots`` per class (k-shot) when ``shots`` is set.
    """
    if min(train, val, test) < 0:
        raise ValueError(f"split sizes must be >= 0, got train={train} val={val} test={test}")
    if val + test + (shots or 0) * len(dataset.classes) > len(dataset) or val + test >= len(dataset):
        raise ValueError(f"{dataset.name} has {len(dataset)} images: too few for val={val} + test={test} "
                         "plus training images; lower --val or --test")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(dataset))
    # Stratify by sorting the shuffled order by class rank within class: round-robin over classes.
    rank = np.empty(len(dataset), dtype=np.int64)
    for label in np.unique(dataset.labels):
        members = order[dataset.labels[order] == label]
        rank[members] = np.arange(len(members)) * len(dataset) // max(len(members), 1)
    order = order[np.argsort(rank[order], kind="stable")]
    test_idx, val_idx, rest = order[:test], order[test : test + val], order[test + val :]
    if shots is None:
        train_idx = rest[:train]
    else:
        train_idx = np.concatenate([rest[dataset.labels[rest] == c][:shots] for c in range(len(dataset.classes))])
    return Splits(dataset.subset(train_idx), dataset.subset(val_idx), dataset.subset(test_idx))
