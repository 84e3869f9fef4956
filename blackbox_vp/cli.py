"""The `bbvp` command line: optimize, evaluate, predict, demo, list."""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from dataclasses import fields
from pathlib import Path

from blackbox_vp.config import RunConfig

DEMO_OUT = "bbvp-demo"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless its help line already explains it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return text if "default:" in text or action.default is None else super()._get_help_string(action)


def _field_type(annotation: object) -> type:
    """int for 'int | None', str for 'str | None', and so on."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {}, {})  # dataclass annotations are strings under `from __future__`
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def add_run_options(parser: argparse.ArgumentParser, defaults: RunConfig) -> None:
    """One --flag per RunConfig field, with its help line and default."""
    for f in fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        kind = _field_type(f.type)
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=default, help=f.metadata["help"])
        else:
            parser.add_argument(flag, type=kind, default=default, help=f.metadata["help"],
                                metavar=f.name.upper())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bbvp", description="Adapt an image model you can only query to your task with a learned pixel prompt.",
        formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    formatter = HelpFormatter

    optimize = sub.add_parser("optimize", help="learn a prompt and output mapping under a query budget",
                              formatter_class=formatter)
    add_run_options(optimize, RunConfig())

    demo = sub.add_parser("demo", help="the main job on the built-in default (reference model, digits), "
                          "a few minutes on a CPU", formatter_class=formatter)
    add_run_options(demo, demo_config())

    evaluate = sub.add_parser("evaluate", help="score a saved prompt.json on a data set's test split",
                              formatter_class=formatter)
    evaluate.add_argument("--prompt", required=True, type=Path, help="prompt.json written by `bbvp optimize`")
    for name in ("backend", "data", "train", "val", "test", "seed", "device"):
        f = next(f for f in fields(RunConfig) if f.name == name)
        evaluate.add_argument("--" + name, type=_field_type(f.type), default=f.default, help=f.metadata["help"])

    predict = sub.add_parser("predict", help="print a backend's top labels for image files",
                             formatter_class=formatter)
    predict.add_argument("images", nargs="+", type=Path, help="image files (png, jpg, ...)")
    predict.add_argument("--backend", default="reference", help="registered backend name")
    predict.add_argument("--top", type=int, default=5, help="how many labels to print per image")
    predict.add_argument("--device", default="cpu", help="torch device of a local backend")

    listing = sub.add_parser("list", help="list what is registered", formatter_class=formatter)
    listing.add_argument("what", choices=sorted(_registries()), help="which registry to list")
    return parser


def demo_config() -> RunConfig:
    """Sized to finish in a few minutes on a 2-core CPU."""
    return RunConfig(budget=3000, batch_size=16, grid=4, val=100, test=300, out=DEMO_OUT)


def _registries() -> dict:
    from backends import BACKENDS
    from blackbox_vp.data import TASKS
    from blackbox_vp.losses import LOSSES
    from blackbox_vp.mappings import MAPPINGS
    from blackbox_vp.optimizers import OPTIMIZERS
    from blackbox_vp.parameterizations import PARAMETERIZATIONS
    from blackbox_vp.prompts import PROMPTS

    return {"backends": BACKENDS, "data": TASKS, "losses": LOSSES, "mappings": MAPPINGS,
            "optimizers": OPTIMIZERS, "parameterizations": PARAMETERIZATIONS, "prompts": PROMPTS}


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(**{f.name: getattr(args, f.name) for f in fields(RunConfig)})


def print_result(result, out: str | None) -> None:
    print(f"test accuracy {result.test_accuracy:.4f} (no prompt: {result.baseline_test_accuracy:.4f}), "
          f"validation {result.val_accuracy:.4f}, images used {result.queries_used} of {result.budget} "
          f"(+{result.test_queries} for the test), {result.seconds:.0f} s")
    if out:
        print(f"outputs in {Path(out).resolve()}: result.json, prompt.json, prompt.png")


def run_optimize(args: argparse.Namespace) -> int:
    from blackbox_vp.run import optimize

    config = config_from_args(args)
    result = optimize(config)
    print_result(result, config.out)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from backends import make_backend
    from blackbox_vp.data import load_task, split
    from blackbox_vp.prompt_file import load_prompt
    from blackbox_vp.run import default_split_sizes
    from blackbox_vp.scoring import evaluate

    prompt, theta, mapping, metadata = load_prompt(args.prompt)
    config = RunConfig(data=args.data, train=args.train, val=args.val, test=args.test)
    dataset = load_task(args.data, prompt.inner_size, seed=args.seed)
    splits = split(dataset, *default_split_sizes(len(dataset), config), seed=args.seed)
    backend = make_backend(args.backend, device=args.device)
    accuracy = evaluate(backend, prompt, theta, mapping, splits.test)
    print(json.dumps({"prompt": str(args.prompt), "test_accuracy": accuracy, "test_images": len(splits.test),
                      "reported_test_accuracy": metadata.get("test_accuracy")}))
    return 0


def run_predict(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from backends import make_backend

    backend = make_backend(args.backend, device=args.device)
    height, width = backend.image_size
    for path in args.images:
        try:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR))
        except OSError as error:
            raise ValueError(f"cannot read image {path}: {error}") from error
        scores = backend.query(pixels[None])[0]
        print(path)
        for index in np.argsort(-scores)[: args.top]:
            print(f"  {scores[index]:.4f}  {backend.labels[index]}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    for name, description in _registries()[args.what].describe():
        print(f"{name:20s} {description}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"optimize": run_optimize, "demo": run_optimize, "evaluate": run_evaluate,
                "predict": run_predict, "list": run_list}
    try:
        return handlers[args.command](args)
    except (ValueError, FileNotFoundError) as error:
        print(f"bbvp {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bbvp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
