"""Model backends: local PyTorch models, a toy model, and wrappers that count and cache.

``make_backend(name)`` builds a registered backend by name; ``BACKENDS`` lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from backends.base import Backend, BackendWrapper
from backends.caching import CachingBackend
from backends.counting import CountingBackend
from backends.errors import (
    BackendError,
    BlackboxVPError,
    BudgetExhausted,
    CodecError,
    ConfigurationError,
    RetryableError,
    RunDirectoryError,
    ScoresError,
)
from backends.partial import LabelOnlyBackend, TopKBackend
from backends.registry import Registry

BACKENDS: Registry[Callable[..., Backend]] = Registry("backend", given=("device", "class_names", "template", "http_options"))
"""Each factory takes ``device`` and the run's ``class_names``, ``template`` and ``http_options`` (as keywords),
which only the zero-shot and HTTP entries read."""


@BACKENDS.register("reference", "EfficientNet-Lite0, ImageNet-1k, local PyTorch (the white-box reference)")
def _reference(device: str = "cpu", **context: object) -> Backend:
    from backends.torch_classifier import efficientnet_lite_backend

    return efficientnet_lite_backend("efficientnet-lite0", device=device)


@BACKENDS.register("surrogate", "EfficientNet-Lite1, ImageNet-1k, local PyTorch (a second model, for transfer)")
def _surrogate(device: str = "cpu", **context: object) -> Backend:
    from backends.torch_classifier import efficientnet_lite_backend

    return efficientnet_lite_backend("efficientnet-lite1", device=device)


@BACKENDS.register("surrogate-lite2", "EfficientNet-Lite2, ImageNet-1k, local PyTorch (a third model: another "
                   "surrogate, or a member of an ensemble)")
def _surrogate_lite2(device: str = "cpu", **context: object) -> Backend:
    from backends.torch_classifier import efficientnet_lite_backend

    return efficientnet_lite_backend("efficientnet-lite2", device=device)


@BACKENDS.register("reference-top5", "EfficientNet-Lite0 answering only its 5 most likely labels, as top-k APIs do "
                   "(the rest share what is left)")
def _reference_top5(device: str = "cpu", **context: object) -> Backend:
    return TopKBackend(_reference(device), k=5)


@BACKENDS.register("toy", "tiny deterministic numpy model (20 labels, 64x64 input) for tests")
def _toy(device: str = "cpu", **context: object) -> Backend:
    from backends.toy import ToyBackend

    return ToyBackend()


@BACKENDS.register("toy-torch", "tiny seeded torch model (16 labels of its own, 32x32 input): the surrogate of tests")
def _toy_torch(device: str = "cpu", **context: object) -> Backend:
    from backends.toy_torch import toy_torch_backend

    return toy_torch_backend(device=device)


@BACKENDS.register("hf:", "hf:DIR, a local transformers image classifier saved in DIR")
def _hf(directory: str, device: str = "cpu", **context: object) -> Backend:
    from backends.hf_local import hf_image_classifier

    return hf_image_classifier(directory, device=device)


@BACKENDS.register("clip:", "clip:DIR, a local zero-shot image-text model saved in DIR, scoring your class names "
                   "(--template)")
def _clip(directory: str, device: str = "cpu", *, class_names: Sequence[str] | None = None,
          template: str = "a photo of a {}", **context: object) -> Backend:
    from backends.hf_local import HFZeroShotBackend

    if class_names is None:
        raise ConfigurationError(f"--backend clip:{directory} scores your class names, and none were given; they "
                                 "come from --data (or the prompt file)")
    return HFZeroShotBackend(directory, class_names, template, device=device)


def _http(scheme: str) -> None:
    @BACKENDS.register(scheme, f"{scheme}HOST/..., a model server over HTTP (--format, `bbvp list formats`)")
    def _remote(rest: str, device: str = "cpu", *, http_options: dict | None = None, **context: object) -> Backend:
        from backends.http import make_http_backend

        return make_http_backend(scheme + rest, **(http_options or {}))


_http("http://")
_http("https://")


def make_backend(name: str, device: str = "cpu", *, class_names: Sequence[str] | None = None,
                 template: str = "a photo of a {}", **http_options: object) -> Backend:
    """Build the backend registered as ``name``: a plain name, ``hf:<dir>`` (a local transformers classifier),
    ``clip:<dir>`` (a local zero-shot image-text model over ``class_names``, each put in ``template``) or a URL
    (an HTTP backend; ``http_options``: the run options named in ``backends.http.HTTP_OPTIONS``)."""
    return BACKENDS.get(name)(device=device, class_names=class_names, template=template, http_options=http_options)


__all__ = ["BACKENDS", "Backend", "BackendError", "BackendWrapper", "BlackboxVPError", "BudgetExhausted",
           "CachingBackend", "CodecError", "ConfigurationError", "CountingBackend", "LabelOnlyBackend", "RetryableError",
           "RunDirectoryError", "ScoresError", "TopKBackend", "make_backend"]
