"""Tasks: the user's labelled images, resized to the prompt's inner size, and seeded splits.

Built in: ``digits`` (scikit-learn's 1797 handwritten digits), ``squares`` (the counting task of
Elsayed et al. 2018, *Adversarial Reprogramming*), ``edges`` (ours: which edge a bar lies on, a task
where the prompt's border matters), and any image folder ``ROOT/<class>/<image>``.

An image folder is read before any query is sent, and what it holds is either refused with an
error naming the file or converted in a documented way that ``Dataset.conversions`` counts (see
:func:`load_folder`).
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from backends.errors import ConfigurationError
from backends.registry import Registry

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
MAX_PIXELS = 89_478_485
"""Largest image (width x height) a data folder may hold: a guard against decompression bombs, read
from the file's header before any pixel is decoded (Pillow's default limit, about 9459 x 9459)."""

log = logging.getLogger(__name__)


@dataclass
class Dataset:
    """Images (uint8, N x h x w x 3), integer labels (N,) and the class names.

    ``conversions`` counts what loading changed or skipped, by kind (image folders only; see
    :func:`load_folder`), e.g. ``{"alpha composited on white": 3}``.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    conversions: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> Dataset:
        return Dataset(self.name, self.images[indices], self.labels[indices], self.classes, self.conversions)


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset


TASKS: Registry[Callable[..., Dataset]] = Registry("data", given=("size", "seed"))


def resize_images(images: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """Resize uint8 (N, h, w, 3) images to ``size`` = (height, width) with PIL."""
    if images.shape[1:3] == tuple(size):
        return images
    out = np.empty((len(images), size[0], size[1], 3), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = np.asarray(Image.fromarray(image).resize((size[1], size[0]), resample))
    return out


@TASKS.register("digits", "scikit-learn's 1797 handwritten digits (8x8, 10 classes), white ink on black, as in "
                "the design notes' calibration")
def load_digits(size: tuple[int, int], seed: int = 0) -> Dataset:
    """The 8x8 digits as white ink on black, upsampled with nearest-neighbour pixels (160x160 inside the
    default 32-pixel border), grey to RGB: the rendering of the design notes' calibration (section 3)."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    grey = (digits.images * (255 / 16)).round().astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    return Dataset("digits", resize_images(rgb, size, Image.Resampling.NEAREST), digits.target.astype(np.int64),
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
    return Dataset("squares", resize_images(rgb, size, Image.Resampling.NEAREST), labels.astype(np.int64),
                   [str(k) for k in range(1, 11)])


EDGES = ("top", "bottom", "left", "right")


@TASKS.register("edges", "which edge of the image a bar touches (4 classes), among bars inside it; generated, "
                "a task where the prompt's border matters (ours)")
def load_edges(size: tuple[int, int], seed: int = 0, count: int = 1800) -> Dataset:
    """40x40 black canvas: one bar 2 px thick and 6-14 px long lies along an edge (the class), and six more of
    either orientation lie inside, 4 px or more from the edges; each of a random bright colour; upsampled (nearest).

    Designed so that the answer lies where the image meets the prompt: the bars inside give an ImageNet
    model's pooled features the same mix of horizontal and vertical bars whatever the class, so what tells
    the classes apart is only where one bar is, which such features keep faintly; a border trained
    white-box can mark each edge. Calibration: experiments/results/edges-calibration-cpu.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % len(EDGES)
    rng.shuffle(labels)
    canvas = np.zeros((count, 40, 40, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        for _ in range(6):
            length = int(rng.integers(6, 15))
            row, col = rng.integers(4, 36 - length, size=2)
            colour = rng.integers(128, 256, size=3)
            if rng.random() < 0.5:
                canvas[i, row : row + 2, col : col + length] = colour
            else:
                canvas[i, row : row + length, col : col + 2] = colour
        length = int(rng.integers(6, 15))
        offset = int(rng.integers(0, 40 - length + 1))
        along, colour = slice(offset, offset + length), rng.integers(128, 256, size=3)
        edge = {"top": (slice(0, 2), along), "bottom": (slice(38, 40), along),
                "left": (along, slice(0, 2)), "right": (along, slice(38, 40))}[EDGES[label]]
        canvas[i][edge] = colour
    return Dataset("edges", resize_images(canvas, size, Image.Resampling.NEAREST), labels.astype(np.int64), list(EDGES))


# What load_folder converts, by kind: the keys of Dataset.conversions.
GREY = "grey or black-and-white -> RGB (channel repeated)"
PALETTE = "palette -> RGB"
CMYK = "CMYK -> RGB (plain formula, no colour profile)"
OTHER_MODE = "other colour space -> RGB (Pillow's conversion)"
DEEP = "16-bit -> 8-bit (scaled, value / 257)"
ALPHA = "transparency composited on white"
ROTATED = "rotated by its EXIF orientation"
FRAMES = "first frame only (animated or multi-page)"
SKIPPED = "skipped: no image suffix"
HIDDEN = "skipped: hidden (name starts with '.')"
ONE_IMAGE = "warned: classes with a single image"


class _Refused(ValueError):
    """An image that load_folder will not read; the message says why, the caller adds the file."""


def read_rgb(path: Path, size: tuple[int, int], max_pixels: int, counts: Counter[str]) -> np.ndarray:
    """The image at ``path`` as 8-bit RGB resized to ``size``; counts its conversions; raises for unreadable files."""
    if path.stat().st_size == 0:
        raise _Refused("the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # The size check below is the guard; Pillow's warning would only repeat it (or abort a test run).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as error:  # over twice Pillow's limit: refused by Pillow itself
        raise _Refused(f"{error} (over the limit of {max_pixels:,} pixels)") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise _Refused(f"it is {width} x {height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
                           "(a guard against decompression bombs); shrink it, or pass max_pixels")
        if getattr(image, "n_frames", 1) > 1:
            counts[FRAMES] += 1
        image.load()
        oriented: Image.Image = image
        if image.getexif().get(0x0112, 1) in range(2, 9):  # the EXIF Orientation tag: 1 is upright
            oriented = ImageOps.exif_transpose(image)
            counts[ROTATED] += 1
        return np.asarray(_to_rgb(oriented, counts).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def _to_rgb(image: Image.Image, counts: Counter[str]) -> Image.Image:
    """8-bit RGB from any Pillow mode: deep images scaled, transparency composited on white."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode.startswith("I") or mode == "F":
        values = np.asarray(image)
        if mode == "F" or values.dtype.kind == "f":
            raise _Refused(f"it holds floating-point pixels (mode {mode}); save it as an 8- or 16-bit image")
        counts[DEEP] += 1
        grey = ((np.clip(values.astype(np.int64), 0, 65535) + 128) // 257).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=-1))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        counts[ALPHA] += 1
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    counts[{"L": GREY, "1": GREY, "P": PALETTE, "CMYK": CMYK}.get(mode, OTHER_MODE)] += 1
    return image.convert("RGB")


def load_folder(root: str | Path, size: tuple[int, int], max_pixels: int = MAX_PIXELS) -> Dataset:
    """Images in ``root/<class>/<image>``, resized to ``size`` = (height, width); classes sorted by name.

    Refused with a ``ValueError`` naming the file: empty, truncated, corrupt or unidentifiable files
    with an image suffix, floating-point images, and images over ``max_pixels`` (read from the header,
    before decoding). Refused naming the folder: a root without class folders, a class folder without
    images. Converted, and counted in ``Dataset.conversions``: grey, black-and-white, palette, CMYK and
    other colour spaces to RGB (Pillow's conversion, no colour profile); 16-bit images to 8 bits
    (value / 257); transparency (RGBA, LA, palette or colour-key) composited on white; EXIF
    orientation applied; only the first frame of an animation or multi-page file. Skipped, and
    counted: files without an image suffix (``IMAGE_SUFFIXES``, any case) and hidden files and folders
    (a name starting with '.', such as ``.DS_Store`` or macOS's ``._photo.jpg``). A class with a single
    image is loaded, with a logged warning (the split cannot put it both in training and in test).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist or is not a directory")
    counts: Counter[str] = Counter()
    class_dirs = []
    for path in sorted(root.iterdir()):
        if path.name.startswith("."):
            counts[HIDDEN] += 1
        elif path.is_dir():
            class_dirs.append(path)
    if not class_dirs:
        raise ConfigurationError(f"data folder {root} has no class subfolders; expected {root}/<class>/<image>")
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = []
        for path in sorted(class_dir.iterdir()):
            if path.name.startswith("."):
                counts[HIDDEN] += 1
            elif path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                counts[SKIPPED] += 1
            else:
                files.append(path)
        if not files:
            raise ConfigurationError(f"class folder {class_dir} holds no images (files ending in "
                             f"{', '.join(sorted(IMAGE_SUFFIXES))}); add some or remove the folder")
        if len(files) == 1:
            counts[ONE_IMAGE] += 1
            log.warning("class %r in %s has a single image: it cannot be both learned from and tested on",
                        class_dir.name, root)
        for path in files:
            try:
                images.append(read_rgb(path, size, max_pixels, counts))
            except _Refused as error:
                raise ConfigurationError(f"cannot use image {path}: {error}. Remove or replace the file.") from None
            except Exception as error:  # Pillow raises many types for damaged files; any of them names the file
                raise ConfigurationError(f"cannot read image {path}: {type(error).__name__}: {error}. "
                                 "Remove or replace the file.") from error
            labels.append(label)
    conversions = dict(sorted(counts.items()))
    if conversions:
        log.info("data folder %s: %s", root, "; ".join(f"{kind}: {n}" for kind, n in conversions.items()))
    return Dataset(root.name, np.stack(images), np.asarray(labels, dtype=np.int64), [p.name for p in class_dirs],
                   conversions)


def _folder_task(root: str, size: tuple[int, int], seed: int = 0) -> Dataset:
    return load_folder(root, size)


TASKS.set_fallback("an existing folder ROOT/<class>/<image> (your own images)", lambda name: Path(name).exists(),
                   _folder_task)


def load_task(name: str, size: tuple[int, int], seed: int = 0) -> Dataset:
    """A registered task by name, or an image folder if ``name`` is a directory path."""
    return TASKS.get(name)(size=size, seed=seed)


def task_classes(name: str) -> list[str]:
    """A task's class names, in label order, without reading a folder's images (a zero-shot backend asks for them)."""
    root = Path(name)
    if name not in TASKS.names() and root.is_dir():
        return [path.name for path in sorted(root.iterdir()) if path.is_dir() and not path.name.startswith(".")]
    return list(load_task(name, (8, 8)).classes)  # raises the error that names the task


def split(dataset: Dataset, train: int, val: int, test: int, seed: int, shots: int | None = None) -> Splits:
    """Deterministic, class-stratified train/val/test split from ``seed``.

    ``test`` and ``val`` images are drawn first, in proportion to each class; ``train`` takes up to
    ``train`` of the rest, or exactly ``shots`` per class (k-shot) when ``shots`` is set.
    """
    if min(train, val, test) < 0:
        raise ConfigurationError(f"split sizes must be >= 0, got train={train} val={val} test={test}")
    if val + test + (shots or 0) * len(dataset.classes) > len(dataset) or val + test >= len(dataset):
        raise ConfigurationError(f"{dataset.name} has {len(dataset)} images: too few for val={val} + test={test} "
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
