"""Every setting of a run, with its default and the help line the CLI shows; TOML files of settings.

A settings file is flat TOML, one ``name = value`` per setting, named as the long options of
``bbvp optimize`` with ``_`` for ``-`` (``batch_size = 32``). A setting left out takes its default;
``None`` ("automatic" or "off") is written by leaving the setting out, since every setting that
may be ``None`` has ``None`` as its default.
"""

from __future__ import annotations

import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from backends.errors import ConfigurationError


def option(default: typing.Any, help: str) -> typing.Any:
    return field(default=default, metadata={"help": help})


@dataclass
class RunConfig:
    backend: str = option("reference", "model to adapt: a registered backend name (`bbvp list backends`)")
    data: str = option("digits", "task: a registered data set (`bbvp list data`) or a folder ROOT/<class>/<image>")
    prompt: str = option("padding", "prompt type (`bbvp list prompts`)")
    placement: str = option("shrink", "padding and full-frame prompts: 'shrink' resizes your image into the region "
                            "inside the border, 'overlay' keeps it full size under the prompt")
    width: int | None = option(None, "border width in pixels of the padding and full-frame prompts (default: 32 at "
                               "224, scaled to the model's input)")
    patch: int | None = option(None, "side in pixels of the fixed-patch and random-patch prompts (default: 48 at 224, "
                               "scaled to the model's input)")
    jpeg_quality: int | None = option(None, "JPEG-compress every prompted image at this quality (1-100) before it is "
                                      "scored, as an API may receive it (default: off)")
    parameterization: str | None = option(None, "how the optimizer's vector becomes the prompt (`bbvp list "
                                          "parameterizations`; default: 'full' for the shadow method, 'grid' otherwise)")
    grid: int = option(8, "grid side g of the 'grid' parameterization (3*g*g dimensions)")
    dct_k: int = option(8, "low frequencies k per axis and channel of the 'dct' parameterization (3*k*k dimensions)")
    subspace_dim: int = option(100, "intrinsic dimension d of the 'subspace' parameterization (1 to 768)")
    mapping: str = option("linear", "output mapping from model labels to your classes (`bbvp list mappings`)")
    loss: str = option("ce", "loss on the mapped probabilities (`bbvp list losses`)")
    optimizer: str = option("shadow", "method: 'shadow' (ours) trains the prompt white-box on a local surrogate fitted to "
                            "the target's answers; a black-box optimizer (`bbvp list optimizers`); or 'whitebox', the "
                            "gradient reference on a local torch model")
    optimizer_options: str | None = option(None, "options of the optimizer, key=value,... with TOML values "
                                           "(`bbvp list optimizers` shows each one's, e.g. 'sigma=0.3,popsize=20' "
                                           "for cma)")
    mapping_options: str | None = option(None, "options of the output mapping, key=value,... (`bbvp list mappings`, "
                                         "e.g. 'labels_per_class=3' for multilabel, 'l2=0.1' for linear)")
    loss_options: str | None = option(None, "options of the loss, key=value,... (`bbvp list losses`, e.g. "
                                      "'gamma=1.0' for focal)")
    lr: float = option(0.05, "learning rate of the white-box reference (Adam on the prompt parameters)")
    surrogate: str = option("auto", "local white-box backend of the shadow method and the guided optimizer's prior: "
                            "'auto' takes EfficientNet-Lite1 (for guided: when the backend answers with ImageNet "
                            "labels), 'none' random directions only (guided), or a backend name")
    rounds: int | None = option(None, "shadow: rounds of fit the surrogate, train the prompt on it, score it on the target "
                                "(default: as many as the budget holds, at most 16)")
    epochs: int | None = option(None, "shadow: epochs over the training images per round, white-box on the surrogate, "
                                "no queries (default: 9 in all, spread over the rounds, at least 1 a round)")
    correction_images: int | None = option(None, "shadow: images for the black-box correction after the rounds, guided "
                                           "steps on the target from the best round's prompt with the surrogate's "
                                           "gradient as prior (default: what the rounds leave, less one round's images "
                                           "to verify the corrected prompt; 0: none)")
    transfer_head_l2: float | None = option(None, "shadow: train the prompt on the surrogate through a linear head "
                                            "fitted on the shadow's own answers to the training images under the "
                                            "current prompt (refitted every epoch), with this L2 penalty (1.0 is the "
                                            "one measured), instead of through the search mapping fitted on the "
                                            "target's answers (default: off)")
    budget: int = option(20000, "hard limit on images sent while learning (mapping + optimization + validation)")
    batch_size: int | None = option(None, "training images scored per candidate in one step, one minibatch for all "
                                    "(default: 32, fewer when the budget leaves room for under 2 steps of 32)")
    mapping_images: int | None = option(None, "training images scored with the initial prompt to fit the output "
                                        "mapping (default: a quarter of the budget, at least the validation split, at most "
                                        "the training set)")
    validations: int | None = option(None, "validation passes spread evenly over the run, the best prompt is kept "
                                     "(default: as many as fit in 20%% of the budget, 1 to 10)")
    train: int | None = option(None, "training images (default: up to 1000 after val and test)")
    val: int | None = option(None, "validation images (default: a tenth of the budget, at most 200 and 11%% of the "
                             "data, at least 20)")
    test: int | None = option(None, "test images, scored once at the end (default: 33%% of the data)")
    seed: int = option(0, "seed for splits, minibatches and the optimizer")
    device: str = option("cpu", "torch device of a local backend: cpu or cuda")
    format: str = option("bbvp", "wire format of a --backend URL (`bbvp list formats`)")
    labels: str | None = option(None, "labels file for a --backend URL whose server publishes none: one label per "
                                "line, a JSON list, or TorchServe's index_to_name.json")
    token_env: str | None = option(None, "environment variable holding the API token of a --backend URL "
                                   "(never printed or saved)")
    token_file: str | None = option(None, "file holding the API token of a --backend URL, mode 0600; never printed "
                                    "or saved")
    torchserve_key_file: str | None = option(None, "TorchServe's key_file.json (token authorization, on by default "
                                             "since 0.11): its inference key is the token; never printed or saved")
    token_header: str = option("Authorization", "header carrying the token: Authorization gets 'Bearer TOKEN', "
                               "any other header the raw token")
    tls_verify: bool = option(True, "verify the TLS certificate of an https --backend URL; --no-tls-verify turns it "
                              "off, with a warning")
    rate_limit: float | None = option(None, "at most this many requests per second to a --backend URL")
    image_rate_limit: float | None = option(None, "at most this many images per second to a --backend URL")
    cost_per_image: float = option(0.0, "price of one image answered by a --backend URL; result.json reports the cost")
    http_max_batch: int | None = option(None, "most images per request to a --backend URL (default: the server's "
                                        "published limit, else none); requests start at one image and grow while "
                                        "answers come within a quarter of --http-timeout")
    http_concurrency: int = option(4, "requests in flight at once to a --backend URL")
    http_timeout: float = option(60.0, "seconds to wait for each answer of a --backend URL (connect: at most 10)")
    http_attempts: int = option(6, "attempts per request to a --backend URL, retries included (connection errors, "
                                "timeouts, 408, 425, 429, 500, 502, 503, 504)")
    input_mean: str | None = option(None, "a --backend URL whose model takes FP32 pixels (oip-v2): the per-channel "
                                    "mean R,G,B on the 0-1 scale it was trained with, e.g. 0.485,0.456,0.406")
    input_std: str | None = option(None, "with --input-mean: the per-channel standard deviation R,G,B, e.g. "
                                   "0.229,0.224,0.225")
    input_layout: str | None = option(None, "FP32 pixels' layout, nchw or nhwc (default: read from the model's input "
                                      "shape)")
    chat_model: str | None = option(None, "--format openai-chat: the model to ask (default: the one the server lists "
                                    "at /v1/models)")
    template: str = option("a photo of a {}", "--backend clip:DIR: the text each class name goes into, {} where the "
                           "name goes")
    top_k_only: int | None = option(None, "keep only each answer's K most probable labels (the rest share what they "
                                    "leave), as an API that reports its top K: to plan with such an API")
    label_only: bool = option(False, "keep only each answer's top label, as an API that reports nothing else")
    cache: bool = option(True, "answer an image the run already sent (same prompt, same image) from memory instead of "
                         "sending it again; --no-cache sends every image asked for")
    scores: str = option("auto", "what a --backend URL answers with: probabilities, logits or log-probabilities "
                         "(the last two turned into probabilities by a softmax); 'auto' tells from the first answer "
                         "(a value below 0 or above 1: logits)")
    out: str | None = option(None, "run directory: config.toml, journal.jsonl, checkpoint, result.json, prompt.json, "
                             "prompt.png, examples.png, curve.png (default: none; nothing is written and the run "
                             "cannot be resumed)")
    quiet: bool = option(False, "no progress bar")
    jsonl: bool = option(False, "print one JSON object per step on stdout, and the result as the last one")

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        """Refuse values out of range before anything runs, naming the option and what it takes."""
        minimums = {"budget": 1, "batch_size": 1, "grid": 1, "dct_k": 1, "subspace_dim": 1, "width": 1, "patch": 1,
                    "mapping_images": 1, "validations": 1, "rounds": 1, "epochs": 1, "correction_images": 0, "top_k_only": 1,
                    "train": 1, "val": 1, "test": 0,
                    "http_max_batch": 1, "http_concurrency": 1, "http_attempts": 1}
        for name, low in minimums.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise ConfigurationError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ConfigurationError(f"--jpeg-quality must be between 1 and 100 (leave it out for no JPEG), got {self.jpeg_quality}")
        if self.top_k_only is not None and self.label_only:
            raise ConfigurationError("--top-k-only and --label-only: choose one (--label-only is --top-k-only 1 without "
                             "the probability)")
        if self.optimizer == "whitebox" and (self.top_k_only is not None or self.label_only):
            raise ConfigurationError("--optimizer whitebox takes gradients through the whole local model, so --top-k-only "
                             "and --label-only do not apply to it; use them with the shadow method or a search")
        for name in ("rate_limit", "image_rate_limit", "http_timeout"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ConfigurationError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not self.cost_per_image >= 0:
            raise ConfigurationError(f"--cost-per-image must be >= 0, got {self.cost_per_image}")
        if self.transfer_head_l2 is not None and not self.transfer_head_l2 > 0:
            raise ConfigurationError(f"--transfer-head-l2 must be a positive L2 penalty (leave it out to train through "
                                     f"the search mapping), got {self.transfer_head_l2}")
        if not self.lr > 0:
            raise ConfigurationError(f"--lr must be a positive learning rate, got {self.lr}")



def field_type(annotation: object) -> type:
    """int for 'int | None', str for 'str | None', and so on."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {}, {})  # dataclass annotations are strings under `from __future__`
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return typing.cast(type, annotation)


def setting_types() -> dict[str, type]:
    """Each setting's value type (``int`` for ``int | None``)."""
    return {f.name: field_type(f.type) for f in fields(RunConfig)}


def read_config(path: str | Path) -> dict[str, typing.Any]:
    """The settings in a TOML file, checked: an unknown name or a value of the wrong type is an error naming both."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigurationError(f"cannot read config file {path}: {error.strerror or error}") from error
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigurationError(f"config file {path} is not valid TOML: {error}") from error
    types_ = setting_types()
    values: dict[str, typing.Any] = {}
    for name, value in document.items():
        if name not in types_:
            hint = f"; did you mean {name.replace('-', '_')!r}?" if name.replace("-", "_") in types_ else ""
            raise ConfigurationError(f"config file {path}: unknown setting {name!r}{hint} (settings are the long options of "
                             "`bbvp optimize --help` with '_' for '-')")
        expected = types_[name]
        if expected is float and type(value) is int:
            value = float(value)
        if type(value) is not expected:
            raise ConfigurationError(f"config file {path}: {name} must be {_toml_kind(expected)}, got {value!r}")
        values[name] = value
    return values


def write_config(path: str | Path, config: RunConfig) -> None:
    """Write every setting of ``config`` that is not None as flat TOML (:func:`read_config` reads it back)."""
    lines = ["# Settings of a bbvp run; `bbvp optimize --config THIS_FILE` repeats it (flags override).",
             "# A setting left out takes its default; settings that are None are left out."]
    for f in fields(RunConfig):
        value = getattr(config, f.name)
        if value is None:
            if f.default is not None:
                raise ConfigurationError(f"setting {f.name} is None but its default is {f.default!r}: it cannot be written")
            continue
        lines.append(f"{f.name} = {_toml_value(value)}")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _toml_kind(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a quoted string"}[kind]


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # TOML reads Python's repr of ints and floats, inf and nan included
    if isinstance(value, str):
        escaped = "".join("\\" + ch if ch in '"\\' else f"\\u{ord(ch):04x}" if ord(ch) < 0x20 or ord(ch) == 0x7F
                          else ch for ch in value)
        return f'"{escaped}"'
    raise TypeError(f"cannot write {value!r} to TOML")
