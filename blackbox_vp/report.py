"""What a run leaves in its output directory: result.json, prompt.json and prompt.png."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from blackbox_vp.data import Splits
from blackbox_vp.mappings import OutputMapping
from blackbox_vp.prompt_file import save_prompt
from blackbox_vp.prompts import Prompt


def _json_safe(value: object) -> object:
    """NaN and infinities become null: result.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_run(out: Path, result, prompt: Prompt, mapping: OutputMapping, splits: Splits) -> None:
    """Write result.json, prompt.json (for ``bbvp evaluate``) and prompt.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(_json_safe(result.summary()), indent=2) + "\n", encoding="utf-8")
    save_prompt(out / "prompt.json", prompt, result.theta, mapping,
                {"val_accuracy": result.val_accuracy, "test_accuracy": result.test_accuracy,
                 "data": result.data, "backend": result.backend, "classes": splits.test.classes})
    save_prompt_picture(out / "prompt.png", prompt, result.theta, splits.test.images[:4])


def save_prompt_picture(path: Path, prompt: Prompt, theta: np.ndarray, images: np.ndarray) -> None:
    """The learned prompt on up to four sample images, side by side."""
    prompted = prompt.apply(theta, images)
    Image.fromarray(np.concatenate(list(prompted), axis=1)).save(path)
