"""Pictures of a run: the learning curve and a grid of prompted test images (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_curve(path: Path, losses: list[tuple[int, float]], history: list[dict], baseline_val: float | None) -> None:
    """Validation accuracy (with the no-prompt baseline as a line, if it was validated) and step loss versus
    images used."""
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, layout="constrained")
    top.plot([h["images"] for h in history], [h["val_accuracy"] for h in history], "o-", label="prompt")
    if baseline_val is not None:
        top.axhline(baseline_val, color="grey", linestyle="--", label="no prompt")
    top.set_ylabel("validation accuracy")
    top.legend(loc="lower right")
    if losses:
        images, values = zip(*losses, strict=True)
        bottom.plot(images, values, linewidth=1)
    bottom.set_ylabel("training loss (step mean)")
    bottom.set_xlabel("images used")
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_examples(path: Path, images: np.ndarray, true: list[str], predicted: list[str], columns: int = 4) -> None:
    """Prompted images (uint8, N x H x W x 3) in a grid, each titled "true X / pred Y" (red when wrong)."""
    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.4 * rows), squeeze=False)
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.92, wspace=0.1, hspace=0.25)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < len(images):
            axis.imshow(images[index])
            color = "black" if true[index] == predicted[index] else "red"
            axis.set_title(f"true {true[index]} / pred {predicted[index]}", fontsize=9, color=color)
    figure.savefig(path, dpi=100)
    plt.close(figure)
