"""blackbox-vp: adapt an image model you can only query to your task with a learned pixel prompt.

    from blackbox_vp import RunConfig, optimize, resume
    result = optimize(RunConfig(backend="reference", data="digits", budget=5000, out="runs/x"))
    result = resume("runs/x")  # after a crash or Ctrl-C
    classes, probabilities = load_classifier("runs/x/prompt.json").predict(images, backend)  # use it

Every error it raises on purpose derives from :class:`BlackboxVPError` (the tree: :mod:`backends.errors`).
Names are imported on first use, so ``import blackbox_vp`` stays light.
"""

from importlib import import_module

__version__ = "0.1.0"
_EXPORTS = {"RunConfig": "blackbox_vp.config", "RunResult": "blackbox_vp.run", "RunInterrupted": "blackbox_vp.run",
            "optimize": "blackbox_vp.run", "resume": "blackbox_vp.run", "load_classifier": "blackbox_vp.classifier",
            **{name: "backends.errors" for name in ("BlackboxVPError", "ConfigurationError", "BackendError", "CodecError",
                                                   "ScoresError", "RetryableError", "BudgetExhausted",
                                                   "RunDirectoryError", "DirectoryInUse")}}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'blackbox_vp' has no attribute {name!r}")
