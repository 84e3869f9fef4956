"""Every setting of a run, with its default and the help line the CLI shows."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


def option(default: object, help: str) -> object:
    return field(default=default, metadata={"help": help})


@dataclass
class RunConfig:
    backend: str = option("reference", "model to adapt: a registered backend name (`bbvp list backends`)")
    data: str = option("digits", "task: a registered data set (`bbvp list data`) or a folder ROOT/<class>/<image>")
    prompt: str = option("padding", "prompt type (`bbvp list prompts`)")
    placement: str = option("shrink", "padding and full-frame prompts: 'shrink' resizes your image into the region "
                            "inside the border, 'overlay' keeps it full size under the prompt")
    width: int | None = option(None, "border width in pixels of the padding and full-frame prompts (default: 30 at "
                               "224, scaled to the model's input)")
    patch: int | None = option(None, "side in pixels of the fixed-patch and random-patch prompts (default: 48 at 224, "
                               "scaled to the model's input)")
    jpeg_quality: int | None = option(None, "JPEG-compress every prompted image at this quality (1-100) before it is "
                                      "scored, as an API may receive it (default: off)")
    parameterization: str = option("grid", "how the optimizer's vector becomes the prompt (`bbvp list parameterizations`)")
    grid: int = option(8, "grid side g of the 'grid' parameterization (3*g*g dimensions)")
    dct_k: int = option(8, "low frequencies k per axis and channel of the 'dct' parameterization (3*k*k dimensions)")
    subspace_dim: int = option(100, "intrinsic dimension d of the 'subspace' parameterization (1 to 768)")
    mapping: str = option("frequency", "output mapping from model labels to your classes (`bbvp list mappings`)")
    loss: str = option("ce", "loss on the mapped probabilities (`bbvp list losses`)")
    optimizer: str = option("cma", "optimizer (`bbvp list optimizers`)")
    lr: float = option(0.05, "learning rate of the white-box reference (Adam on the prompt parameters)")
    surrogate: str = option("surrogate", "local white-box backend whose gradient guides optimizers that take a "
                            "prior (guided); 'none' for random directions only")
    budget: int = option(20000, "hard limit on images sent while learning (mapping + optimization + validation)")
    batch_size: int = option(32, "training images scored per candidate in one step (one minibatch for all)")
    mapping_images: int | None = option(None, "training images scored with the initial prompt to fit the output "
                                        "mapping (default: 10%% of the budget, at most the training set)")
    validations: int | None = option(None, "validation passes spread evenly over the run, the best prompt is kept "
                                     "(default: as many as fit in 20%% of the budget, 1 to 10)")
    train: int | None = option(None, "training images (default: up to 1000 after val and test)")
    val: int | None = option(None, "validation images (default: 11%% of the data, at most 200)")
    test: int | None = option(None, "test images, scored once at the end (default: 33%% of the data)")
    seed: int = option(0, "seed for splits, minibatches and the optimizer")
    device: str = option("cpu", "torch device of a local backend: cpu or cuda")
    out: str | None = option(None, "output directory for result.json, prompt.png and prompt.json")
    quiet: bool = option(False, "no progress bar")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def help_lines(cls) -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in fields(cls)}
