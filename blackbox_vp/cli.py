"""The `bbvp` command line: optimize, evaluate, predict, demo, list."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from dataclasses import fields
from pathlib import Path

from backends.base import pixel_size
from backends.errors import BackendError, BudgetExhausted, ConfigurationError, RunDirectoryError
from backends.http import HTTP_OPTIONS
from blackbox_vp.config import RunConfig, field_type, read_config
from blackbox_vp.experiment import add_experiment_parser, run_experiment_command
from blackbox_vp.run_directory import CONFIG, OUTPUTS, RESUME_CHANGES, RunDirectory

DEMO_OUT = "bbvp-demo"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default ("none" where it has none), unless its help line already explains it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default:" in text or "%(default)" in text or action.required or not action.option_strings:
            return text
        return text + " (default: none)" if action.default is None else (super()._get_help_string(action) or "")


def add_run_options(parser: argparse.ArgumentParser, defaults: RunConfig) -> None:
    """One --flag per RunConfig field, with its help line and default (--flag/--no-flag for switches)."""
    for f in fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        kind = field_type(f.type)
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=f.metadata["help"])
        else:
            parser.add_argument(flag, type=kind, default=default, help=f.metadata["help"],
                                metavar=f.name.upper())


def build_parser(settings: dict | None = None) -> argparse.ArgumentParser:
    """The whole CLI; ``settings`` (from a --config file or a run's config.toml) are optimize's defaults."""
    parser = argparse.ArgumentParser(
        prog="bbvp", description="Adapt an image model you can only query to your task with a learned pixel prompt.",
        formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_optimize_parser(sub, settings)
    add_run_options(sub.add_parser("demo", help="the main job on the built-in default (reference model, digits), "
                                   "the shadow method at 5,000 images, about 18 minutes on a 2-core CPU",
                                   formatter_class=HelpFormatter), demo_config())
    add_evaluate_parser(sub)
    add_predict_parser(sub)
    add_serve_parser(sub)
    listing = sub.add_parser("list", help="list what is registered", formatter_class=HelpFormatter)
    listing.add_argument("what", choices=sorted(_registries()), help="which registry to list")
    add_experiment_parser(sub)
    return parser


Subparsers = argparse._SubParsersAction


def add_optimize_parser(sub: Subparsers, settings: dict | None) -> None:
    optimize = sub.add_parser("optimize", help="learn a prompt and output mapping under a query budget",
                              formatter_class=HelpFormatter)
    optimize.add_argument("--config", type=Path, metavar="FILE",
                          help="TOML file of settings, e.g. a run's config.toml (`name = value`, names as the "
                          "options below with '_' for '-'); options given on the command line override it")
    optimize.add_argument("--resume", type=Path, metavar="DIR",
                          help="continue the run in DIR (its --out) from its last checkpoint with the settings of "
                          "DIR/config.toml; only settings that do not change what it computes may be given with it "
                          "(--quiet, --jsonl, --device and the --http-*, rate-limit, token and TLS options)")
    add_run_options(optimize, dataclasses.replace(RunConfig(), **(settings or {})))


def add_evaluate_parser(sub: Subparsers) -> None:
    evaluate = sub.add_parser("evaluate", help="score a saved prompt.json on a data set's test split",
                              formatter_class=HelpFormatter)
    evaluate.add_argument("--prompt", required=True, type=Path, help="prompt.json written by `bbvp optimize`")
    add_fields(evaluate, ("backend", "data", "train", "val", "test", "seed", "device") + HTTP_OPTIONS)


def add_predict_parser(sub: Subparsers) -> None:
    predict = sub.add_parser("predict", help="classify images with a learned prompt (--prompt), or print a "
                             "backend's own top labels", formatter_class=HelpFormatter)
    predict.add_argument("images", nargs="+", type=Path, help="image files (png, jpg, ...) and folders of them")
    predict.add_argument("--prompt", type=Path, help="prompt.json of a `bbvp optimize` run: print your classes, "
                         "the prompt applied and its output mapping (default: the backend's own labels)")
    predict.add_argument("--backend", default=None, help="backend name or URL (default: the one recorded in "
                         "--prompt, else reference)")
    predict.add_argument("--top", type=int, default=None, help="classes (labels) printed per image (default: 1 "
                         "with --prompt, else 5)")
    predict.add_argument("--budget", type=int, default=None, help="most images sent to the backend; the images "
                         "beyond it are not classified (default: no limit)")
    predict.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    predict.add_argument("--csv", action="store_true", help="CSV on stdout: image, class, probability (rank 1..top)")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.add_argument("--device", default="cpu", help="torch device of a local backend")
    add_fields(predict, HTTP_OPTIONS)


def add_serve_parser(sub: Subparsers) -> None:
    serve = sub.add_parser("serve", help="serve a local backend over HTTP, in every wire format "
                           "--format knows", formatter_class=HelpFormatter)
    serve.add_argument("--backend", default="reference", help="backend to serve: a registered name (`bbvp list "
                       "backends`), or with --prompt also a URL (the upstream the adapted classifier sends to)")
    serve.add_argument("--prompt", default=None, help="prompt.json of a `bbvp optimize` run: serve the adapted "
                       "classifier (your classes as labels, the prompt applied, each request sent to --backend)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on; anything but loopback exposes "
                       "the model without authentication")
    serve.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one (printed at start)")
    serve.add_argument("--name", default=None, help="model name in the URLs (default: the backend name)")
    serve.add_argument("--device", default="cpu", help="torch device of a local backend")
    serve.add_argument("--max-body-mb", type=float, default=64.0, help="largest request body in MiB (413 above)")
    serve.add_argument("--max-batch", type=int, default=None, help="most images per request (default: the backend's)")
    serve.add_argument("--max-pixels", type=int, default=4096 * 4096,
                       help="most pixels per image, read from its header before decoding (decompression bombs)")
    add_fields(serve.add_argument_group("a --backend URL (upstream of --prompt)"), HTTP_OPTIONS)
    faults = serve.add_argument_group("fault injection, for tests and demos (inference requests only)")
    faults.add_argument("--latency", type=float, default=0.0, help="seconds added to every inference request")
    faults.add_argument("--latency-per-image", type=float, default=0.0, help="seconds added per image in a request")
    faults.add_argument("--failure-rate", type=float, default=0.0,
                        help="share of inference requests answered with a status from --failure-codes")
    faults.add_argument("--failure-codes", default="503", help="comma-separated statuses, e.g. 503,500")
    faults.add_argument("--rate-limit-every", type=int, default=0,
                        help="answer every Nth inference request 429 with Retry-After (0: never)")
    faults.add_argument("--retry-after", type=int, default=1, help="seconds in the Retry-After of those 429s")
    faults.add_argument("--truncate-rate", type=float, default=0.0,
                        help="share of answers whose JSON body is cut in half")
    faults.add_argument("--fault-seed", type=int, default=0, help="seed of the fault draws")


def add_fields(parser: argparse._ActionsContainer, names: tuple[str, ...]) -> None:
    """--flags for the named RunConfig fields, with their types, defaults and help lines."""
    for f in fields(RunConfig):
        if f.name in names and field_type(f.type) is bool:  # --x/--no-x, as in add_run_options
            parser.add_argument("--" + f.name.replace("_", "-"), action=argparse.BooleanOptionalAction,
                                default=f.default, help=f.metadata["help"])
        elif f.name in names:
            parser.add_argument("--" + f.name.replace("_", "-"), type=field_type(f.type), default=f.default,
                                help=f.metadata["help"])


def demo_config() -> RunConfig:
    """The default method (shadow) on the reference model and digits at 5,000 images: the seed-0 cell of
    experiments/configs/shadow-digits-cpu.toml, about 18 minutes on a 2-core CPU (its local
    training on the surrogate is most of it). Each demo writes a new directory under bbvp-demo/, so
    running it again loses nothing.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return RunConfig(budget=5000, train=1000, val=100, test=697, out=f"{DEMO_OUT}/{stamp}")


def _registries() -> dict:
    from backends import BACKENDS
    from backends.http import FORMATS
    from blackbox_vp.data import TASKS
    from blackbox_vp.losses import LOSSES
    from blackbox_vp.mappings import MAPPINGS
    from blackbox_vp.optimizers import OPTIMIZERS
    from blackbox_vp.parameterizations import PARAMETERIZATIONS
    from blackbox_vp.prompts import PROMPTS

    return {"backends": BACKENDS, "formats": FORMATS, "data": TASKS, "losses": LOSSES, "mappings": MAPPINGS,
            "optimizers": OPTIMIZERS, "parameterizations": PARAMETERIZATIONS, "prompts": PROMPTS}


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(**{f.name: getattr(args, f.name) for f in fields(RunConfig)})


def with_settings_file(args: argparse.Namespace, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` again with the settings of --config FILE or --resume DIR as defaults."""
    if args.config and args.resume:
        raise ConfigurationError("--config and --resume do not go together: a resumed run keeps the settings of its "
                         f"{CONFIG}; drop --config")
    if args.resume:
        return build_parser(RunDirectory(args.resume).settings()).parse_args(argv)
    if args.config:
        return build_parser(read_config(args.config)).parse_args(argv)
    return args


def print_result(result, config: RunConfig) -> None:
    if config.jsonl:
        from blackbox_vp.journal import json_safe

        print(json.dumps(json_safe({"event": "result", **result.summary()})), flush=True)
        return
    print(f"test accuracy {result.test_accuracy:.4f} (no prompt: {result.baseline_test_accuracy:.4f}), "
          f"validation {result.val_accuracy:.4f}, images used {result.queries_used} of {result.budget} "
          f"(+{result.test_queries} for the test), {result.seconds:.0f} s")
    if config.out:
        print(f"run directory {Path(config.out).resolve()}: {', '.join(OUTPUTS)}")


def run_optimize(args: argparse.Namespace) -> int:
    from blackbox_vp.run import optimize, resume

    config = config_from_args(args)
    directory = getattr(args, "resume", None)
    if directory is None:
        result = optimize(config)
    else:
        given = {f.name: getattr(config, f.name) for f in fields(RunConfig) if f.name != "out"}
        RunDirectory(directory).refuse_changed_settings(given)
        result = resume(directory, **{name: getattr(config, name) for name in RESUME_CHANGES})
        config = dataclasses.replace(config, out=str(directory))
    print_result(result, config)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from backends import make_backend
    from blackbox_vp.data import load_task, split
    from blackbox_vp.prompt_file import load_prompt
    from blackbox_vp.run_setup import split_sizes
    from blackbox_vp.scoring import evaluate

    prompt, theta, mapping, metadata = load_prompt(args.prompt)
    config = RunConfig(data=args.data, train=args.train, val=args.val, test=args.test)
    dataset = load_task(args.data, prompt.inner_size, seed=args.seed)
    sizes = split_sizes(config, config.budget, len(dataset), len(dataset.classes))  # the test split is the run's
    splits = split(dataset, *sizes, seed=args.seed)
    backend = make_backend(args.backend, device=args.device, **{name: getattr(args, name) for name in HTTP_OPTIONS})
    accuracy = evaluate(backend, prompt, theta, mapping, splits.test)
    print(json.dumps({"prompt": str(args.prompt), "test_accuracy": accuracy, "test_images": len(splits.test),
                      "reported_test_accuracy": metadata.get("test_accuracy")}))
    return 0


PREDICT_BATCH = 64  # image files read and sent as one query by `bbvp predict`


def show(path: Path, ranked: list[tuple[str, float]], args: argparse.Namespace, writer) -> None:
    """One image's classes (or labels) and probabilities: a line, a JSON object, or CSV rows."""
    if args.json:
        print(json.dumps({"image": str(path), "classes": [{"class": c, "probability": p} for c, p in ranked]}))
    elif writer is not None:
        writer.writerows([str(path), rank + 1, c, f"{p:.6f}"] for rank, (c, p) in enumerate(ranked))
    else:
        print(f"{path}: " + ", ".join(f"{c} {p:.4f}" for c, p in ranked))


def run_predict(args: argparse.Namespace) -> int:
    """`bbvp predict`: the run's classes through --prompt, else the backend's labels; 1 if some file was unreadable."""
    import csv

    import numpy as np
    from tqdm import tqdm

    from backends import CountingBackend, make_backend
    from blackbox_vp.classifier import image_files, load_classifier, read_image

    if args.json and args.csv:
        raise ConfigurationError("--json and --csv: choose one output format")
    classifier = load_classifier(args.prompt) if args.prompt else None
    name = args.backend or (classifier.metadata.get("backend") if classifier else None) or "reference"
    top = args.top or (1 if classifier else 5)
    backend = make_backend(name, device=args.device, class_names=classifier.classes if classifier else None,
                           **{option: getattr(args, option) for option in HTTP_OPTIONS})
    counted = CountingBackend(backend, budget=args.budget)
    size = pixel_size(classifier.prompt.inner_size if classifier else backend.image_size)
    names = classifier.classes if classifier else list(backend.labels)
    writer = csv.writer(sys.stdout) if args.csv else None
    if writer:
        writer.writerow(["image", "rank", "class", "probability"])
    files, unreadable, beyond = list(image_files(args.images)), 0, 0
    if not files:
        raise ConfigurationError(f"no image files in {', '.join(map(str, args.images))} (suffixes: png, jpg, jpeg, ...)")
    progress = tqdm(total=len(files), unit="img", disable=args.quiet or len(files) < 2 * PREDICT_BATCH, file=sys.stderr)
    try:
        for start in range(0, len(files), PREDICT_BATCH):  # one query per batch of files read
            read, pixels = [], []
            for path in files[start : start + PREDICT_BATCH]:
                try:
                    pixels.append(read_image(path, size))
                    read.append(path)
                except ValueError as error:
                    print(f"bbvp predict: {error}; going on with the others", file=sys.stderr)
                    unreadable += 1
            allowed = len(read) if counted.remaining is None else min(len(read), counted.remaining)
            beyond += len(read) - allowed
            if allowed:
                batch = np.stack(pixels[:allowed])
                scores = classifier.probabilities(batch, counted) if classifier else counted.query(batch)
                for path, row in zip(read, scores):
                    show(path, [(names[i], float(row[i])) for i in np.argsort(-row)[:top]], args, writer)
            progress.update(len(files[start : start + PREDICT_BATCH]))
    finally:
        progress.close()
        backend.close()
    if beyond:
        print(f"bbvp predict: --budget {args.budget} reached; {beyond} images were not sent", file=sys.stderr)
    print(f"bbvp predict: {len(files) - unreadable - beyond} images classified, {counted.images_sent} sent to {name}"
          + (f", {unreadable} unreadable" if unreadable else ""), file=sys.stderr)
    return 1 if unreadable else 0


def run_serve(args: argparse.Namespace) -> int:
    from backends.http.server import serve_command
    from blackbox_vp.classifier import PromptedBackend, load_classifier

    options = {key: value for key, value in vars(args).items() if key not in ("command", "prompt")}
    if args.prompt:  # the adapted classifier in front of the backend
        classifier = load_classifier(args.prompt)
        options.update(wrap=lambda model: PromptedBackend(classifier, model), name=args.name or "prompted")
    return serve_command(**options)


def run_list(args: argparse.Namespace) -> int:
    """Each entry of a registry: its name, description and options (with their defaults)."""
    registry = _registries()[args.what]
    listed = registry.describe()
    for name, description in sorted(listed) if args.what == "optimizers" else listed:
        print(f"{name:20s} {description}")
        options = registry.options(name)
        if options:
            print(f"{'':20s} options: {', '.join(f'{key}={value!r}' for key, value in options.items())}")
    if registry.fallback is not None:
        print(f"{'(other)':20s} {registry.fallback.description}")
    return 0


def resume_hint(args: argparse.Namespace, how: str = "") -> str:
    """How to go on after a run stopped, if it left a checkpoint; ``how``: what to change first."""
    directory = getattr(args, "resume", None) or getattr(args, "out", None)
    if directory is None or not RunDirectory(directory).holds_run():
        return ""
    return f"; its last checkpoint is kept: {how}resume with `bbvp optimize --resume {directory}`"


def backend_hint(args: argparse.Namespace, error: BackendError) -> str:
    """What to do after a backend failure: resume only where a resume can succeed, else what to change."""
    status, message = error.status, str(error)
    if status is None or status in (408, 425, 429, 500, 502, 503, 504):  # no answer, or the server was busy
        return resume_hint(args, "once the server answers again, ")
    if status in (401, 403):
        return resume_hint(args, "fix the token (--token-env or --token-file may be given with --resume), then ")
    limit = re.search(r"(?:batch[- ]size|max_batch_size)\D{0,20}?(\d+)", message, re.IGNORECASE)
    if status in (400, 413) and (limit or status == 413):
        size = f" {limit.group(1)}" if limit else " N"
        return resume_hint(args, f"lower the images per request with --http-max-batch{size} (it may be given with "
                           "--resume), then ")
    if not resume_hint(args):
        return ""
    return ("; a resume would send the same request and fail the same way: fix the server or the settings that "
            "shape the request and read the answer (--format, --labels), then start a new run with another --out")


def main(argv: list[str] | None = None) -> int:
    from blackbox_vp.run import RunInterrupted

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    handlers = {"optimize": run_optimize, "demo": run_optimize, "evaluate": run_evaluate,
                "predict": run_predict, "serve": run_serve, "list": run_list, "experiment": run_experiment_command}
    try:
        if args.command == "optimize":
            args = with_settings_file(args, argv)
        return handlers[args.command](args)
    except (ValueError, FileNotFoundError) as error:
        print(f"bbvp {args.command}: error: {error}", file=sys.stderr)
        return 2
    except RunDirectoryError as error:
        print(f"bbvp {args.command}: error: {error}{resume_hint(args, 'once it can be written, ')}", file=sys.stderr)
        return 2
    except BackendError as error:
        print(f"bbvp {args.command}: the backend failed: {error}{backend_hint(args, error)}", file=sys.stderr)
        return 1
    except BudgetExhausted as error:  # a stage found no room left, which the budget plan should have prevented
        print(f"bbvp {args.command}: error: {error}; the run cannot go on within its budget, so it stops here"
              f"{resume_hint(args)} (a resume may shrink what is left)", file=sys.stderr)
        return 1
    except RunInterrupted as stopped:
        print(f"bbvp {args.command}: {stopped}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"bbvp {args.command}: interrupted{resume_hint(args)}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
