"""What every model-zoo teacher shares: the wrapper segkd drives, strict loading, class sets.

A zoo network is segkd's own (distill.models) wherever it computes the same thing, its
file's keys renamed onto it by a key map (distill.models.weights); what segkd has no
module for is rebuilt under the source's own names. Either way the state dict loads key
for key, strictly: a partial load is an error naming the missing and unexpected keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import SegkdError
from core.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, LabelSpec
from core.preprocess import PreprocessSpec
from distill.models.weights import KeyMap, remap_keys


@dataclass(frozen=True)
class SourceConvention:
    """How the source fed its network: channel order, mean/std in 0..255 units, and the
    align_corners of its final bilinear upsampling."""

    color_order: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    align_corners: bool

    def preprocess(self, input_size: tuple[int, int]) -> PreprocessSpec:
        return PreprocessSpec(
            input_size=input_size, color_order=self.color_order, mean=self.mean, std=self.std
        )  # type: ignore[arg-type]


@dataclass(frozen=True)
class TestMode:
    """How the source tests a network: whole images, or mmseg's sliding window (crop and
    stride as (H, W)); `segkd eval` runs the same unless told otherwise."""

    mode: str = "whole"
    crop: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        if self.mode == "slide":
            out.update(crop=list(self.crop or ()), stride=list(self.stride or ()))
        return out


class SourceNet(nn.Module):
    """A zoo network run as its source runs it: `forward(x, with_aux)` returns (logits,
    feat, aux) at the network's output stride (aux None without an auxiliary head or
    when not asked). `model` is anything with segkd's `extract(x, with_aux)` dict."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, x: torch.Tensor, with_aux: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        out = self.model.extract(x, with_aux=with_aux)
        return out["logits"], out["feat"], out.get("aux")


class ZooTeacher(nn.Module):
    """A rebuilt zoo network behind segkd's teacher interface.

    `net(x)` is the source's own forward and returns (logits, feat, aux) at the network's
    output stride: feat is the map right before the classifier's dropout + 1x1 conv (the
    feature IDD/PID distil), aux is None without an auxiliary head. `extract` returns
    segkd's dict; `forward` in eval mode returns logits upsampled to the input as the
    source did it (its align_corners).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        source: str,
        arch: str,
        num_classes: int,
        feat_channels: int,
        convention: SourceConvention,
        labels: LabelSpec,
        input_size: tuple[int, int],
        test_mode: TestMode | None = None,
        settings_origin: str | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.test_mode = test_mode or TestMode()
        self.settings_origin = settings_origin  # where the build settings were read
        self.source, self.arch = source, arch
        self.num_classes, self.feat_channels = num_classes, feat_channels
        self.convention, self.labels = convention, labels
        self.preprocess = convention.preprocess(input_size)

    def extract(self, x: torch.Tensor, with_aux: bool = True) -> dict[str, torch.Tensor]:
        logits, feat, aux = self.net(x, with_aux=with_aux)
        out = {"logits": logits, "feat": feat}
        if with_aux and aux is not None:
            out["aux"] = aux
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor] | torch.Tensor:
        if self.training:
            return self.extract(x)
        logits = self.net(x)[0]
        return F.interpolate(
            logits, size=x.shape[-2:], mode="bilinear", align_corners=self.convention.align_corners
        )

    def describe(self) -> dict[str, Any]:
        """Plain data for checkpoints and logs (what the teacher was, not its weights)."""
        return {
            "source": self.source,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "labels": self.labels.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "align_corners": self.convention.align_corners,
            "test_mode": self.test_mode.to_dict(),
            **({"settings": self.settings_origin} if self.settings_origin else {}),
        }


def load_strict(
    net: nn.Module,
    state: Mapping[str, torch.Tensor],
    path: Path,
    what: str,
    keymap: KeyMap = (),
) -> None:
    """Rename the file's keys by `keymap` (distill.models.weights), then
    load_state_dict(strict) with one error line naming missing/unexpected/misshapen keys
    as the file names them."""
    mapped = remap_keys(state, keymap)
    file_name = dict(zip(mapped, state, strict=True))
    own = net.state_dict()
    as_in_file = _file_names(file_name)
    missing = [as_in_file(k) for k in own if k not in mapped]
    unexpected = [file_name[k] for k in mapped if k not in own]
    misshapen = [
        f"{file_name[k]} {tuple(mapped[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in mapped and tuple(mapped[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or misshapen:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                parts.append(f"{len(keys)} {label} keys ({_few(keys)})")
        if misshapen:
            parts.append(f"{len(misshapen)} keys of another shape ({_few(misshapen)})")
        raise SegkdError(f"{path}: weights do not fit {what}: {'; '.join(parts)}")
    net.load_state_dict(mapped, strict=True)


def _file_names(file_name: Mapping[str, str]):  # type: ignore[no-untyped-def]
    """segkd key -> the file's name for it. A key the file lacks is named after a tensor
    of the same module that the file has (the maps keep the tensor's own name), else as
    segkd names it."""
    modules = {k.rpartition(".")[0]: v.rpartition(".")[0] for k, v in file_name.items()}

    def name(key: str) -> str:
        module, _, leaf = key.rpartition(".")
        return f"{modules[module]}.{leaf}" if module in modules else key

    return name


def _few(keys: Sequence[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... {len(keys) - n} more" if len(keys) > n else "")


def tensor(state: Mapping[str, torch.Tensor], key: str, path: Path) -> torch.Tensor:
    if key not in state:
        raise SegkdError(f"{path}: no {key!r} in the state dict; is this the format it claims?")
    return state[key]


def count_blocks(state: Mapping[str, Any], prefix: str) -> int:
    """Blocks in a ResNet stage: the distinct indices after `prefix` ('backbone.layer3.')."""
    idx = {k[len(prefix) :].split(".", 1)[0] for k in state if k.startswith(prefix)}
    return len([i for i in idx if i.isdigit()])


RESNET_DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (2, 2, 2, 2): 18, (3, 8, 36, 3): 152}


def resnet_depth(state: Mapping[str, Any], prefix: str, path: Path, allowed: Sequence[int]) -> int:
    blocks = tuple(count_blocks(state, f"{prefix}layer{i}.") for i in range(1, 5))
    depth = RESNET_DEPTHS.get(blocks)
    if depth is None or depth not in allowed:
        raise SegkdError(
            f"{path}: ResNet stages with {blocks} blocks; supported depths are "
            f"{', '.join(f'ResNet-{d}' for d in allowed)}"
        )
    return depth


# Class sets of the datasets the zoo teachers were trained on, by class count, in the
# order the sources use (Cityscapes trainIds; VOC with background first).
VOC_NAMES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def default_labels(num_classes: int) -> LabelSpec | None:
    if num_classes == len(CITYSCAPES_CLASSES):
        return LabelSpec(names=CITYSCAPES_CLASSES, palette=CITYSCAPES_PALETTE)
    if num_classes == len(VOC_NAMES):
        from distill.data.voc import VOC

        return VOC
    if num_classes == 150:
        from distill.data.ade20k import ADE20K

        return ADE20K
    return None


def labels_for(num_classes: int, names: Sequence[str] | None, path: Path) -> LabelSpec:
    """The teacher's classes: the file's own names if it has them, else the standard set
    of that size (19 Cityscapes, 21 VOC, 150 ADE20K)."""
    if names is not None:
        names = tuple(str(n) for n in names)
        if len(names) != num_classes:
            raise SegkdError(
                f"{path}: the file names {len(names)} classes but its classifier has {num_classes}"
            )
        known = default_labels(num_classes)
        if known is not None and normalized_names(known.names) == normalized_names(names):
            return known
        return LabelSpec(names=names)
    known = default_labels(num_classes)
    if known is None:
        raise SegkdError(
            f"{path}: {num_classes} classes and no class names in the file; only 19 (Cityscapes), "
            "21 (VOC) and 150 (ADE20K) are known"
        )
    return known


def normalized_names(names: Sequence[str]) -> tuple[str, ...]:
    """Names compared across sources: case, '_' (torchvision's '__background__')."""
    return tuple(n.lower().replace("_", " ").strip() for n in names)


def split_name(name: str, sep: str) -> tuple[str, str]:
    """'pspnet_r101-d8' -> ('pspnet', '101'); 'deeplabv3_resnet101' with sep '_resnet' likewise."""
    kind, _, rest = name.partition(sep)
    digits = ""
    for ch in rest:
        if not ch.isdigit():
            break
        digits += ch
    return kind, digits
