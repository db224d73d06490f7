"""The model registry: each family file registers its builders with `@register_model`.

A builder is a function `name(num_classes, *, aux=True, ...)` returning a
`SegmentationNet` whose `model_kwargs` rebuild the same network (what a checkpoint
stores); its name is the architecture name (`pspnet_r18`, `pidnet_s`). `weights` is the
family's loader of a local ImageNet file (`build_model(..., backbone_weights=FILE)`). The
registry knows no family: `distill.models` imports the family files, which fills it, and
this module imports none of them (no cycle).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.errors import SegkdError

Builder = Callable[..., Any]
WeightsLoader = Callable[[Any, str], dict[str, Any]]  # (model, file) -> loading report


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str  # the family file that defines it: pspnet, deeplabv3, ddrnet, pidnet
    tags: frozenset[str]  # e.g. "resnet" (dilated-ResNet trunk), "realtime"
    builder: Builder
    weights: WeightsLoader


_MODELS: dict[str, ModelEntry] = {}


def register_model(*tags: str, weights: WeightsLoader) -> Callable[[Builder], Builder]:
    """Decorator: register the builder under its function name, with `tags` and the
    ImageNet `weights` loader of its family."""

    def register(fn: Builder) -> Builder:
        name = fn.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        family = fn.__module__.rsplit(".", 1)[-1]
        _MODELS[name] = ModelEntry(name, family, frozenset(tags), fn, weights)
        return fn

    return register


def available_models(tag: str | None = None) -> list[str]:
    """Registered architecture names (in registration order), those with `tag` if given."""
    return [n for n, e in _MODELS.items() if tag is None or tag in e.tags]


def model_entry(arch: str) -> ModelEntry:
    if arch not in _MODELS:
        raise SegkdError(
            f"unknown model architecture {arch!r}; choose one of: {', '.join(available_models())}"
        )
    return _MODELS[arch]


def build_model(
    arch: str, num_classes: int, *, backbone_weights: str | None = None, **kwargs: Any
) -> Any:
    """Build `arch` for `num_classes` classes; kwargs go to the builder (`aux`, `deep_stem`
    for the ResNets); an option the builder lacks is a TypeError. `backbone_weights`: a
    local ImageNet file, loaded by the family's loader, whose report is kept on
    `model.backbone_report` (not in `model_kwargs`: a checkpoint carries its weights)."""
    entry = model_entry(arch)
    if num_classes < 1:
        raise SegkdError(f"num_classes must be >= 1 for {arch}, got {num_classes}")
    model = entry.builder(num_classes, **kwargs)
    if backbone_weights:
        model.backbone_report = entry.weights(model, backbone_weights)
    return model
