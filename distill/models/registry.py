"""Named architectures (`pspnet_r18`, `deeplabv3_r101`, `ddrnet23_slim`, `pidnet_s`) and
ImageNet backbone loading."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import SegkdError
from distill.models.ddrnet import DDRNet
from distill.models.heads import DeepLabV3Head, PSPHead
from distill.models.pidnet import PIDNet
from distill.models.resnet import DilatedResNet
from distill.models.segmentor import SegmentationNet, Segmentor
from distill.weights_only import load_plain_data

log = logging.getLogger(__name__)

HEADS: dict[str, Callable[[int, int], nn.Module]] = {
    "pspnet": lambda cin, k: PSPHead(cin, k),
    "deeplabv3": lambda cin, k: DeepLabV3Head(cin, k),
}
DEPTHS = (18, 50, 101)


# Real-time two-branch students, at the published widths (distill/models/ddrnet.py,
# pidnet.py). Each is built from (arch, num_classes, aux).
REALTIME: dict[str, Callable[[str, int, bool], SegmentationNet]] = {
    "ddrnet23_slim": lambda arch, k, aux: DDRNet(
        arch, k, planes=32, spp_planes=128, head_planes=64, aux=aux
    ),
    "pidnet_s": lambda arch, k, aux: PIDNet(
        arch, k, m=2, n=3, planes=32, ppm_planes=96, head_planes=128, aux=aux
    ),
}


def resnet_models() -> list[str]:
    return [f"{head}_r{depth}" for head in HEADS for depth in DEPTHS]


def available_models() -> list[str]:
    return resnet_models() + list(REALTIME)


def _parse_arch(arch: str) -> tuple[str, int]:
    head, _, depth = arch.rpartition("_r")
    if head not in HEADS or not depth.isdigit() or int(depth) not in DEPTHS:
        raise SegkdError(
            f"unknown model architecture {arch!r}; choose one of: {', '.join(available_models())}"
        )
    return head, int(depth)


def build_model(
    arch: str,
    num_classes: int,
    *,
    aux: bool = True,
    deep_stem: bool = False,
    backbone_weights: str | None = None,
) -> Segmentor:
    """Build `arch` for `num_classes` classes; optionally load ImageNet backbone weights.

    `model.model_kwargs` holds what rebuilds the same network (not the weights path:
    a checkpoint carries the trained weights itself). The backbone loading report, if
    any, is kept on `model.backbone_report`. `deep_stem` is for the ResNets only; the
    real-time networks have their own stem.
    """
    if arch in REALTIME:
        return _build_realtime(arch, num_classes, aux, deep_stem, backbone_weights)
    head_name, depth = _parse_arch(arch)
    if num_classes < 1:
        raise SegkdError(f"num_classes must be >= 1 for {arch}, got {num_classes}")
    backbone = DilatedResNet(depth, deep_stem=deep_stem)
    head = HEADS[head_name](backbone.out_channels, num_classes)
    model = Segmentor(
        arch,
        num_classes,
        backbone,
        head,
        feat_channels=head.channels,
        aux=aux,
        model_kwargs={"aux": aux, "deep_stem": deep_stem},
    )
    model.backbone_report = (
        load_backbone_weights(model, backbone_weights) if backbone_weights else None
    )
    return model


def _build_realtime(
    arch: str, num_classes: int, aux: bool, deep_stem: bool, backbone_weights: str | None
) -> SegmentationNet:
    if num_classes < 1:
        raise SegkdError(f"num_classes must be >= 1 for {arch}, got {num_classes}")
    if deep_stem:
        raise SegkdError(f"--deep-stem is for the ResNet models; {arch} has its own stem")
    model = REALTIME[arch](arch, num_classes, aux)
    model.model_kwargs = {"aux": aux}
    if backbone_weights:
        from distill.models.realtime_weights import load_realtime_imagenet

        model.backbone_report = load_realtime_imagenet(model, backbone_weights)
    return model


def match_weights(
    source: dict[str, Any], target: dict[str, Any], ignore_prefixes: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """(tensors of `source` that fit `target` by name and shape, the report of the rest).

    Report: loaded, missing (in target, not loaded; BN's num_batches_tracked, which old
    torchvision files lack, is not worth reporting), unexpected (not in target),
    mismatched (same name, other shape) and ignored (known not to belong, by prefix).
    """
    ignored = sorted(k for k in source if k.startswith(ignore_prefixes))
    candidates = {k: v for k, v in source.items() if not k.startswith(ignore_prefixes)}
    fitting = {
        k: v
        for k, v in candidates.items()
        if k in target and tuple(v.shape) == tuple(target[k].shape)
    }
    return fitting, {
        "loaded": sorted(fitting),
        "missing": sorted(
            k for k in target if k not in fitting and not k.endswith("num_batches_tracked")
        ),
        "unexpected": sorted(k for k in candidates if k not in target),
        "mismatched": sorted(k for k in candidates if k in target and k not in fitting),
        "ignored": ignored,
    }


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise SegkdError(f"backbone weights not found: {path}")
    obj = load_plain_data(
        path, noun="backbone weights ", advice="use a plain state-dict file", not_a="a weights file"
    )
    # Some checkpoints wrap the weights ({"state_dict": ...}) or carry DDP's prefix.
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SegkdError(f"backbone weights {path} are not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_backbone_weights(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a local torchvision-format ResNet state dict into `model`'s backbone.

    `model` is a Segmentor or a DilatedResNet. Keys are matched by name and shape;
    `fc.*` (the ImageNet classifier) is ignored. Returns and logs the report:
    `loaded`, `missing` (backbone keys left at their init), `unexpected` (file keys
    the backbone lacks), `mismatched` (same name, other shape: skipped, e.g. the deep
    stem's conv1 with a torchvision file) and `ignored` (fc.*).
    """
    path = Path(path)
    backbone = model.backbone if isinstance(model, Segmentor) else model
    return load_matching_weights(
        backbone,
        path,
        ("fc.",),
        target=f"the ResNet-{backbone.depth} backbone",
        hint="is it a ResNet state dict?",
    )


def load_matching_weights(
    module: nn.Module,
    path: str | Path,
    ignore_prefixes: tuple[str, ...],
    *,
    target: str,
    hint: str,
    describe: Callable[[list[str]], str] = lambda keys: ": " + ", ".join(keys),
) -> dict[str, Any]:
    """Load the tensors of a local weights file whose name and shape fit `module`.

    Returns the match report (loaded / missing / unexpected / mismatched / ignored), each
    non-empty group logged as a warning ending in `describe(keys)`; no fitting key at all is an
    error naming `target`, with `hint` on what the file should be.
    """
    path = Path(path)
    source = read_state_dict(path)
    fitting, report = match_weights(source, module.state_dict(), ignore_prefixes)
    if not fitting:
        raise SegkdError(
            f"backbone weights {path}: no key fits {target} ({len(source)} keys, e.g. "
            f"{next(iter(source), 'none')!r}); {hint}"
        )
    module.load_state_dict(fitting, strict=False)
    report = {"path": str(path), **report}
    log.info(
        "backbone weights %s: %d tensors loaded into %s, %d ignored (%s)",
        path,
        len(fitting),
        target,
        len(report["ignored"]),
        ", ".join(ignore_prefixes),
    )
    for kind in ("missing", "unexpected", "mismatched"):
        if report[kind]:
            log.warning(
                "backbone weights %s: %d %s keys%s",
                path,
                len(report[kind]),
                kind,
                describe(report[kind]),
            )
    return report
