"""Model backends: local PyTorch models, a toy model, and wrappers that count and cache.

``make_backend(name)`` builds a registered backend by name; ``BACKENDS`` lists them.
"""

from __future__ import annotations

from collections.abc import Sequence

from backends.base import Backend, BackendError, BackendWrapper
from backends.caching import CachingBackend
from backends.counting import BudgetExhausted, CountingBackend
from backends.partial import LabelOnlyBackend, TopKBackend
from blackbox_vp.registry import Registry

BACKENDS: Registry[Backend] = Registry("backend")


@BACKENDS.register("reference", "EfficientNet-Lite0, ImageNet-1k, local PyTorch (the white-box reference)")
def _reference(device: str = "cpu") -> Backend:
    from backends.torch_classifier import efficientnet_lite_backend

    return efficientnet_lite_backend("efficientnet-lite0", device=device)


@BACKENDS.register("surrogate", "EfficientNet-Lite1, ImageNet-1k, local PyTorch (a second model, for transfer)")
def _surrogate(device: str = "cpu") -> Backend:
    from backends.torch_classifier import efficientnet_lite_backend

    return efficientnet_lite_backend("efficientnet-lite1", device=device)


@BACKENDS.register("reference-top5", "EfficientNet-Lite0 answering only its 5 most likely labels, as top-k APIs do "
                   "(the rest share what is left)")
def _reference_top5(device: str = "cpu") -> Backend:
    return TopKBackend(_reference(device), k=5)


@BACKENDS.register("toy", "tiny deterministic numpy model (20 labels, 64x64 input) for tests")
def _toy(device: str = "cpu") -> Backend:
    from backends.toy import ToyBackend

    return ToyBackend()


@BACKENDS.register("toy-torch", "tiny seeded torch model (16 labels of its own, 32x32 input): the surrogate of tests")
def _toy_torch(device: str = "cpu") -> Backend:
    from backends.toy_torch import toy_torch_backend

    return toy_torch_backend(device=device)


def make_backend(name: str, device: str = "cpu", *, class_names: Sequence[str] | None = None,
                 template: str = "a photo of a {}", **http_options) -> Backend:
    """Build the backend registered as ``name``; ``hf:<dir>`` loads a local transformers classifier, ``clip:<dir>``
    a local zero-shot image-text model over ``class_names`` (each put in ``template``); a URL gives an HTTP
    backend (``http_options``: the run options named in ``backends.http.HTTP_OPTIONS``)."""
    if name.startswith(("http://", "https://")):
        from backends.http import make_http_backend

        return make_http_backend(name, **http_options)
    if name.startswith("hf:"):
        from backends.hf_local import hf_image_classifier

        return hf_image_classifier(name[3:], device=device)
    if name.startswith("clip:"):
        from backends.hf_local import HFZeroShotBackend

        if class_names is None:
            raise ValueError(f"--backend {name} scores your class names, and none were given; they come from --data "
                             "(or the prompt file)")
        return HFZeroShotBackend(name[5:], class_names, template, device=device)
    return BACKENDS.get(name)(device=device)


__all__ = ["BACKENDS", "Backend", "BackendError", "BackendWrapper", "BudgetExhausted", "CachingBackend",
           "CountingBackend", "LabelOnlyBackend", "TopKBackend", "make_backend"]
