"""Save and load a learned prompt: parameters, prompt configuration and fitted output mapping.

One JSON file, readable and exact (floats round-trip through JSON's shortest repr), so that
``bbvp evaluate --prompt FILE`` reproduces the reported accuracy. The prompt's configuration holds
its constructor's keywords (placement, JPEG quality, seeds included); the parameterization is built
for the canvas and the prompt resizes it to its pattern, as when it was made.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from backends.errors import ConfigurationError
from blackbox_vp.mappings import OutputMapping, mapping_from_state
from blackbox_vp.parameterizations import PARAMETERIZATIONS
from blackbox_vp.prompts import PROMPTS, Prompt

FORMAT = "blackbox-vp/prompt/1"


def save_prompt(path: Path, prompt: Prompt, theta: np.ndarray, mapping: OutputMapping, metadata: dict) -> None:
    document = {"format": FORMAT, "prompt": prompt.config(), "mapping": mapping.state(),
                "metadata": metadata, "theta": [float(v) for v in theta]}
    path.write_text(json.dumps(document), encoding="utf-8")


def load_prompt(path: Path) -> tuple[Prompt, np.ndarray, OutputMapping, dict]:
    """(prompt, theta, mapping, metadata) from a file written by :func:`save_prompt`."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigurationError(f"cannot read prompt file {path}: {error}") from error
    if document.get("format") != FORMAT:
        raise ConfigurationError(f"{path} is not a blackbox-vp prompt file (format {document.get('format')!r}, "
                         f"expected {FORMAT!r})")
    config = dict(document["prompt"])
    canvas_size = tuple(config.pop("canvas_size"))
    parameterization_config = dict(config.pop("parameterization"))
    parameterization = PARAMETERIZATIONS.get(parameterization_config.pop("type"))(canvas_size, **parameterization_config)
    prompt = PROMPTS.get(config.pop("type"))(canvas_size, parameterization=parameterization, **config)
    theta = np.asarray(document["theta"], dtype=np.float64)
    if len(theta) != prompt.dimension:
        raise ConfigurationError(f"{path}: theta has {len(theta)} values, the prompt needs {prompt.dimension}")
    return prompt, theta, mapping_from_state(document["mapping"]), document.get("metadata", {})
