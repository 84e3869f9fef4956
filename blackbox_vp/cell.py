"""One cell of an experiment run to its end, in whichever process runs it (this one, a worker, a Ray task)."""

from __future__ import annotations

import os
from pathlib import Path

from backends.errors import ConfigurationError
from blackbox_vp.config import RunConfig


def run_cell(config: RunConfig, threads: int) -> dict:
    """Run one cell (in this process or a worker), or resume it from its checkpoint."""
    if config.out is None:
        raise ConfigurationError("a cell needs a run directory (config.out)")
    import torch

    from blackbox_vp.run import optimize, resume
    from blackbox_vp.run_directory import RunDirectory

    # building a local backend sets torch's threads again, from OMP_NUM_THREADS (else every core): set both
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    out = Path(config.out)
    try:
        if RunDirectory(out).holds_run():
            result = resume(out, quiet=True, device=config.device)
        else:
            result = optimize(config)
    finally:  # a cell run in this process (--jobs 1) or in a reused worker leaves the environment as it was
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before
    return {"test_accuracy": result.test_accuracy, "val_accuracy": result.val_accuracy,
            "queries_used": result.queries_used, "seconds": result.seconds}
