"""What a run leaves in its directory for people and scripts: result.json, prompt.json and pictures.

``result.json`` is written when the run ends (``"status": "finished"``) and when Ctrl-C stops it
(``"interrupted"``, without test results). ``prompt.json`` is what ``bbvp evaluate --prompt`` reads.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

from blackbox_vp.data import Dataset
from blackbox_vp.mappings import OutputMapping
from blackbox_vp.prompt_file import save_prompt
from blackbox_vp.prompts import Prompt
from blackbox_vp.run_directory import CURVE, EXAMPLES, PROMPT, PROMPT_PICTURE, RunDirectory


def versions() -> dict[str, str]:
    """Versions of Python and of the packages a result depends on."""
    found = {"python": platform.python_version()}
    for package in ("blackbox-vp", "torch", "numpy", "nevergrad"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def machine(device: str) -> dict[str, object]:
    """Where the run ran: platform, processor, CPU count and the torch device's name."""
    import torch

    name = torch.cuda.get_device_name(device) if device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "device": device, "device_name": name}


def write_run(directory: RunDirectory, summary: dict, prompt: Prompt, theta: np.ndarray, mapping: OutputMapping,
              test: Dataset, predicted: np.ndarray, losses: list[tuple[int, float]]) -> None:
    """Everything a finished run writes; ``predicted`` are the classes of the first test images."""
    from blackbox_vp.plots import plot_curve, plot_examples

    save_prompt(directory.file(PROMPT), prompt, theta, mapping,
                {"val_accuracy": summary["val_accuracy"], "test_accuracy": summary["test_accuracy"],
                 "data": summary["data"], "backend": summary["backend"], "classes": test.classes})
    save_prompt_picture(directory.file(PROMPT_PICTURE), prompt, theta, test.images[:4])
    shown = test.images[: len(predicted)]
    plot_examples(directory.file(EXAMPLES), prompt.apply(theta, shown), [test.classes[c] for c in test.labels[: len(shown)]],
                  [test.classes[c] for c in predicted])
    plot_curve(directory.file(CURVE), losses, summary["history"], summary["baseline_val_accuracy"])
    directory.write_result(summary)


def save_prompt_picture(path: Path, prompt: Prompt, theta: np.ndarray, images: np.ndarray) -> None:
    """The learned prompt on up to four sample images, side by side."""
    prompted = prompt.apply(theta, images)
    Image.fromarray(np.concatenate(list(prompted), axis=1)).save(path)
