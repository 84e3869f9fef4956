"""One run's directory (``--out``): the names of its files, their atomic writes, its lock, and the check
that a resume continues the same run. The run loop, the CLI and experiments all go through it.

What is in it::

    config.toml     the settings, written at the start (a resume may change only RESUME_CHANGES)
    journal.jsonl   every event, appended before the query it announces (blackbox_vp.journal)
    checkpoint      the RunState, replaced atomically after every step (blackbox_vp.checkpoint)
    run.lock        held while a process works there (blackbox_vp.directory_lock)
    result.json     the result, replaced atomically: "status" is "finished" or "interrupted"
    prompt.json     the learned prompt and output mapping (blackbox_vp.prompt_file)
    prompt.png, examples.png, curve.png   pictures of the prompt, test examples and the learning curve
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from backends.errors import ConfigurationError
from blackbox_vp.config import RunConfig, read_config, write_config
from blackbox_vp.directory_lock import RUN_LOCK, hold_directory
from blackbox_vp.disk import replace_atomically, writing

CONFIG, JOURNAL, CHECKPOINT = "config.toml", "journal.jsonl", "checkpoint"
RESULT, PROMPT, PROMPT_PICTURE, EXAMPLES, CURVE = "result.json", "prompt.json", "prompt.png", "examples.png", "curve.png"
OUTPUTS = (RESULT, PROMPT, PROMPT_PICTURE, EXAMPLES, CURVE, JOURNAL, CONFIG, CHECKPOINT)  # what a finished run holds

# The settings a resume may change: they do not change what the run computes.
RESUME_CHANGES = ("quiet", "jsonl", "device", "http_max_batch", "http_concurrency", "http_timeout", "http_attempts",
                  "rate_limit", "image_rate_limit", "token_env", "token_file", "torchserve_key_file", "token_header",
                  "tls_verify", "cache")


@dataclass(frozen=True)
class RunDirectory:
    """The directory of one run, by its path."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def journal(self) -> Path:
        return self.path / JOURNAL

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def result(self) -> Path:
        return self.path / RESULT

    def file(self, name: str) -> Path:
        """One of the outputs by name (``PROMPT``, ``CURVE``, ...)."""
        return self.path / name

    def holds_run(self) -> bool:
        """Whether a run has checkpointed here (it can be resumed, or it finished)."""
        return self.checkpoint.exists()

    def is_finished(self) -> bool:
        return self.result.exists() and self.read_result().get("status") == "finished"

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Create the directory if needed and hold its lock: one process at a time in a run."""
        with hold_directory(self.path, RUN_LOCK):
            yield

    def settings(self) -> dict[str, Any]:
        """The settings in config.toml; a FileNotFoundError that says what to give instead if there is none."""
        if not self.config.is_file():
            raise FileNotFoundError(f"--resume {self.path}: no {CONFIG} there; give the --out directory of a "
                                    "`bbvp optimize` run")
        return read_config(self.config)

    def write_settings(self, config: RunConfig) -> None:
        with writing(self.config, "settings"):
            write_config(self.config, config)

    def read_result(self) -> dict[str, Any]:
        return json.loads(self.result.read_text(encoding="utf-8"))

    def write_result(self, summary: dict) -> None:
        """result.json, replaced atomically."""
        from blackbox_vp.journal import json_safe

        replace_atomically(self.result, (json.dumps(json_safe(summary), indent=2) + "\n").encode("utf-8"), "result")

    def refuse_changed_settings(self, given: dict[str, object]) -> None:
        """A resume keeps the run's settings: refuse any of ``given`` that differs from config.toml, but for
        ``RESUME_CHANGES``."""
        saved = RunConfig(**self.settings())
        known = {f.name for f in fields(RunConfig)}
        for name, value in given.items():
            if name not in known:
                raise ConfigurationError(f"{name!r} is not a setting of a run")
            if name not in RESUME_CHANGES and value != getattr(saved, name):
                raise ConfigurationError(f"--{name.replace('_', '-')} cannot change when resuming: the run in "
                                         f"{self.path} keeps the settings of its {CONFIG}; only "
                                         f"{', '.join('--' + n for n in RESUME_CHANGES)} may")

    def check_same_run(self, checkpointed: dict, config: RunConfig) -> None:
        """The checkpoint was made with the settings now in config.toml (but for the ones a resume may change)."""
        current = config.to_dict()
        changed = [name for name, value in checkpointed.items()
                   if name not in (*RESUME_CHANGES, "out") and current.get(name) != value]
        if changed:
            listing = ", ".join(f"{name} = {checkpointed[name]!r} (now {current.get(name)!r})" for name in changed)
            raise ConfigurationError(f"{self.config} was changed after the run started: {listing}; put the values "
                                     "back to resume, or start a new run with another --out")
