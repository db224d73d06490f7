"""Foreign weight files onto segkd's own modules: one unwrap rule, ImageNet backbones.

The unwrap rule (`unwrap_state_dict`), for every file segkd reads that it did not write
(ImageNet backbones, model-zoo teachers):
- the weights are the dict under 'state_dict' (mmseg, mmengine, PIDNet's ImageNet file,
  most trainers), else under 'model' (DeiT/timm-style trainers), else the object itself
  (torchvision, CIRKD, DDRNet's ImageNet file); 'meta' beside 'state_dict' is kept;
- DDP's / DataParallel's 'module.' prefix is removed when EVERY key carries it. The
  wrapper prefixes every key, so a file where only some keys start with 'module.' was
  not saved from a wrapper: those keys name a real submodule and are left alone (a
  per-key strip would rename them silently).

ImageNet files (`load_backbone_weights`, `load_realtime_imagenet`) load by name and
shape with a report, because an ImageNet network is not the segmentation network: the
classifier is ignored, the heads stay at their init.

Model-zoo files (distill.zoo) whose network IS segkd's load into segkd's own modules
through key maps (timm's checkpoint_filter_fn idea): a list of (pattern, replacement)
rules, the first full match renaming a key; the zoo loader then loads strictly, so a key
the map misses is an error, and the goldens (tests/distill/zoo) prove the outputs equal
the upstream network's:
- CIRKD PSPNet / DeepLabV3 (ResNetV1b deep stem = segkd's deep-stem DilatedResNet);
- torchvision DeepLabV3 / FCN on ResNet-50/101 (= segkd's 7x7-stem DilatedResNet);
- mmseg's ResNetV1c / ResNet trunk (segkd's DilatedResNet with mmseg's switches; its
  `stem.N` are conv1..bn3), PSPHead, and the one-conv auxiliary FCNHead.
mmseg's ASPPHead (no 1x1 projection, pooling branch first) and its multi-conv FCNHead
(conv_cat over the input), and torchvision's MobileNetV3 networks, are other networks:
rebuilt in distill.zoo under their own names, mapped by prefix only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import SegkdError
from distill.weights_only import load_plain_data

log = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model")
DDP_PREFIX = "module."
# Parts of the authors' ImageNet classifiers that have no place in the segmentation net.
IMAGENET_ONLY_PREFIXES = ("down5.", "last_layer.", "linear.", "fc.", "classifier.")


def unwrap_state_dict(obj: Any) -> tuple[Any, dict[str, Any]]:
    """(the weights inside a loaded file, its 'meta' dict or {}), by the rule above;
    the caller checks that the weights are a dict of tensors."""
    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            meta = obj.get("meta")
            return strip_ddp_prefix(obj[key]), meta if isinstance(meta, dict) else {}
    return strip_ddp_prefix(obj), {}


def strip_ddp_prefix(state: Any) -> Any:
    if (
        isinstance(state, dict)
        and state
        and all(isinstance(k, str) and k.startswith(DDP_PREFIX) for k in state)
    ):
        return {k[len(DDP_PREFIX) :]: v for k, v in state.items()}
    return state


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """An ImageNet weights file's state dict (unwrapped), or one SegkdError line."""
    if not path.is_file():
        raise SegkdError(f"backbone weights not found: {path}")
    obj = load_plain_data(
        path, noun="backbone weights ", advice="use a plain state-dict file", not_a="a weights file"
    )
    state, _ = unwrap_state_dict(obj)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SegkdError(f"backbone weights {path} are not a state dict of tensors")
    return state


def match_weights(
    source: Mapping[str, Any], target: Mapping[str, Any], ignore_prefixes: tuple[str, ...]
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


def load_backbone_weights(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a local torchvision-format ResNet state dict into `model`'s backbone.

    `model` is a Segmentor (its `backbone`) or a DilatedResNet. Keys are matched by name
    and shape; `fc.*` (the ImageNet classifier) is ignored. Returns and logs the report:
    `loaded`, `missing` (backbone keys left at their init), `unexpected` (file keys the
    backbone lacks), `mismatched` (same name, other shape: skipped, e.g. the deep stem's
    conv1 with a torchvision file) and `ignored` (fc.*).
    """
    backbone = getattr(model, "backbone", model)
    return load_matching_weights(
        backbone,
        path,
        ("fc.",),
        target=f"the ResNet-{backbone.depth} backbone",
        hint="is it a ResNet state dict?",
    )


def load_realtime_imagenet(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """The authors' published ImageNet checkpoints into DDRNet-23-slim / PIDNet-S.

    - DDRNet23s_imagenet.pth (ydhongHIT/DDRNet): a plain state dict of the ImageNet
      DualResNet: the segmentation network's trunk under the same names (conv1.*,
      layer1..layer5, layer3_..layer5_, compression3/4, down3/4), plus its classifier
      (down5.*, last_layer.*, linear.*), ignored here. The DAPPM (spp.*) and the heads are
      not in it and stay at their initialisation.
    - PIDNet_S_ImageNet.pth.tar (XuJiacong/PIDNet): {"state_dict": ...} under the
      segmentation network's own names; the authors keep every key whose name and shape
      match, which is what this loader does.
    """
    return load_matching_weights(
        model,
        path,
        IMAGENET_ONLY_PREFIXES,
        target=str(getattr(model, "arch", type(model).__name__)),
        hint="is it the authors' ImageNet checkpoint?",
        describe=lambda keys: f", by module: {_by_module(keys)}",
    )


def _by_module(keys: list[str]) -> str:
    """'spp (70), final_layer (10)': the head and context module are missing by design."""
    counts: dict[str, int] = {}
    for k in keys:
        top = k.split(".", 1)[0]
        counts[top] = counts.get(top, 0) + 1
    return ", ".join(f"{m} ({n})" for m, n in counts.items())


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


# ---------------------------------------------------------------- model-zoo key maps

Rename = str | Callable[[re.Match[str]], str]
KeyMap = tuple[tuple[str, Rename], ...]


def remap_keys(state: Mapping[str, torch.Tensor], rules: KeyMap) -> dict[str, torch.Tensor]:
    """Each key renamed by the first rule whose pattern matches it whole (else kept)."""
    compiled = [(re.compile(p), r) for p, r in rules]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for pattern, rename in compiled:
            m = pattern.fullmatch(key)
            if m:
                key = rename(m) if callable(rename) else m.expand(rename)
                break
        out[key] = value
    return out


def _minus_one(template: str) -> Callable[[re.Match[str]], str]:
    """A rename whose first group is a 1-based index that becomes 0-based."""
    return lambda m: template.format(int(m[1]) - 1, *m.groups()[1:])


# The auxiliary FCN head on layer3: Sequential(conv, BN, ReLU, Dropout, classifier).
SEQUENTIAL_AUX: KeyMap = (
    (r"(?:auxlayer\.block|aux_classifier)\.([01])\.(.+)", r"aux_head.conv.\1.\2"),
    (r"(?:auxlayer\.block|aux_classifier)\.4\.(.+)", r"aux_head.classifier.\1"),
)

CIRKD: KeyMap = (
    (r"pretrained\.(.+)", r"backbone.\1"),
    (r"head\.psp\.conv(\d)\.(\d)\.(.+)", _minus_one("head.ppm.stages.{}.1.{}.{}")),
    (r"head\.block\.([01])\.(.+)", r"head.bottleneck.\1.\2"),
    (r"head\.block\.4\.(.+)", r"head.classifier.\1"),  # DeepLabV3's classifier
    (r"head\.aspp\.b0\.(\d)\.(.+)", r"head.aspp.branches.0.\1.\2"),
    (r"head\.aspp\.b([123])\.block\.(\d)\.(.+)", r"head.aspp.branches.\1.\2.\3"),
    (r"head\.aspp\.b4\.gap\.(\d)\.(.+)", _minus_one("head.aspp.branches.4.conv.{}.{}")),
    (r"head\.aspp\.project\.(\d)\.(.+)", r"head.aspp.project.0.\1.\2"),
    *SEQUENTIAL_AUX,
)

# torchvision's DeepLabHead: Sequential(ASPP, conv, BN, ReLU, classifier).
TORCHVISION_DEEPLABV3: KeyMap = (
    (r"classifier\.0\.convs\.([0-3])\.(\d)\.(.+)", r"head.aspp.branches.\1.\2.\3"),
    (r"classifier\.0\.convs\.4\.(\d)\.(.+)", _minus_one("head.aspp.branches.4.conv.{}.{}")),
    (r"classifier\.0\.project\.(\d)\.(.+)", r"head.aspp.project.0.\1.\2"),
    (r"classifier\.([12])\.(.+)", _minus_one("head.bottleneck.{}.{}")),
    (r"classifier\.4\.(.+)", r"head.classifier.\1"),
    *SEQUENTIAL_AUX,
)
# torchvision's FCNHead as the decode head: Sequential(conv, BN, ReLU, Dropout, classifier).
TORCHVISION_FCN: KeyMap = (
    (r"classifier\.([01])\.(.+)", r"head.conv.\1.\2"),
    (r"classifier\.4\.(.+)", r"head.classifier.\1"),
    *SEQUENTIAL_AUX,
)

# mmseg's ResNetV1c stem Sequential(conv, BN, ReLU) x 3 -> conv1/bn1 .. conv3/bn3.
_MMSEG_STEM = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2", "6": "conv3", "7": "bn3"}
MMSEG_BACKBONE: KeyMap = (
    (r"backbone\.stem\.([013467])\.(.+)", lambda m: f"backbone.{_MMSEG_STEM[m[1]]}.{m[2]}"),
)
# ConvModule (conv, bn) -> segkd's conv_bn_relu Sequential (0, 1); conv_seg -> classifier.
MMSEG_PSP_HEAD: KeyMap = (
    (r"decode_head\.psp_modules\.(\d+)\.1\.conv\.(.+)", r"head.ppm.stages.\1.1.0.\2"),
    (r"decode_head\.psp_modules\.(\d+)\.1\.bn\.(.+)", r"head.ppm.stages.\1.1.1.\2"),
    (r"decode_head\.bottleneck\.conv\.(.+)", r"head.bottleneck.0.\1"),
    (r"decode_head\.bottleneck\.bn\.(.+)", r"head.bottleneck.1.\1"),
    (r"decode_head\.conv_seg\.(.+)", r"head.classifier.\1"),
)


def mmseg_fcn(source: str, target: str) -> KeyMap:
    """mmseg's one-conv FCNHead at `source` (auxiliary_head) onto segkd's FCNHead `target`."""
    src = re.escape(source)
    return (
        (rf"{src}\.convs\.0\.conv\.(.+)", rf"{target}.conv.0.\1"),
        (rf"{src}\.convs\.0\.bn\.(.+)", rf"{target}.conv.1.\1"),
        (rf"{src}\.conv_seg\.(.+)", rf"{target}.classifier.\1"),
    )


def renamed_prefix(source: str, target: str) -> KeyMap:
    """A module rebuilt under the source's own names: only its prefix changes."""
    return ((rf"{re.escape(source)}\.(.+)", rf"{target}.\1"),)
