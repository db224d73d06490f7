"""Each source's state dict, laid out and saved as the source does, loads with no missing or
unexpected key, and the rebuilt teacher's logits match an independent functional forward."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from distill.zoo import load_zoo_teacher
from tests.distill.zoo import reference as ref

SIZE = 64  # a ResNet-101 at 64x64 runs in well under a second on one core


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def make(forward, *args, seed: int = 0):
    """(state dict in the source's layout, reference outputs on a fixed input, input)."""
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed + 1))
    P = ref.Params(seed)
    with torch.no_grad():
        forward(P, x, *args)
        out = forward(ref.Params(state=P.state), x, *args)  # the same keys, read back
    return P.state, out, x


def check(teacher, x, expected, with_aux=True):
    with torch.no_grad():
        got = teacher.extract(x, with_aux=with_aux)
    logits, feat, aux = expected
    assert got["logits"].shape == logits.shape
    assert rel_err(got["logits"], logits) < 1e-4
    assert rel_err(got["feat"], feat) < 1e-4
    if aux is not None and with_aux:
        assert rel_err(got["aux"], aux) < 1e-4
    return got


@pytest.mark.parametrize(
    ("depth", "head"),
    [(101, "psp"), (50, "aspp"), (50, "fcn"), (18, "psp")],
    ids=["pspnet_r101", "deeplabv3_r50", "fcn_r50", "pspnet_r18"],
)
def test_mmseg_checkpoint(tmp_path: Path, depth: int, head: str) -> None:
    torch.set_num_threads(1)
    state, expected, x = make(ref.mmseg_forward, depth, head, 19)
    path = tmp_path / f"{head}_r{depth}-d8_512x1024_80k_cityscapes.pth"
    # mmseg's published layout: {'meta': {...}, 'state_dict': OrderedDict}, meta with
    # versions, class names and palette (and, in newer files, numpy scalars). No config
    # text here: the d8 defaults are assumed and said so (the configs: test_mmseg_golden).
    meta = {
        "mmseg_version": "0.11.0", "mmcv_version": "1.2.0",
        "CLASSES": ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                    "truck", "bus", "train", "motorcycle", "bicycle"),
        "PALETTE": [[128, 64, 128]] * 19, "iter": 80000, "seed": __import__("numpy").int64(0),
    }  # fmt: skip
    torch.save({"meta": meta, "state_dict": OrderedDict(state)}, path)
    teacher = load_zoo_teacher(path)  # detected from the keys
    assert teacher.source == "mmseg" and teacher.arch.endswith(f"_r{depth}")
    assert teacher.num_classes == 19 and teacher.feat_channels == (128 if depth == 18 else 512)
    assert teacher.labels.names[6] == "traffic light"
    assert teacher.preprocess.color_order == "RGB" and not teacher.convention.align_corners
    # no stored config: the file's own name is looked up among mmseg's (fcn_r50-d8_... is
    # a 0.x config name), else the defaults are assumed
    assert teacher.settings_origin.endswith(("(no stored config)", "(mmsegmentation 1.2.2)"))
    check(teacher, x, expected)


@pytest.mark.parametrize(
    ("depth", "head", "ddp", "width"),
    [(101, "deeplabv3", True, 512), (50, "deeplabv3", False, 256), (50, "psp", False, 512)],
    ids=["deeplabv3_r101_module_prefix", "deeplabv3_r50_first_release_256", "psp_r50"],
)  # fmt: skip
def test_cirkd_checkpoint(tmp_path: Path, depth: int, head: str, ddp: bool, width: int) -> None:
    """CIRKDv2's DeepLabV3 is 512 wide; the first release (the paper's teachers) 256."""
    torch.set_num_threads(1)
    state, expected, x = make(ref.cirkd_forward, depth, head, 19, width, seed=3)
    if ddp:  # saved from the DistributedDataParallel wrapper
        state = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / f"{head}_resnet{depth}_citys_best_model.pth"
    torch.save(state, path)
    teacher = load_zoo_teacher(path)
    assert teacher.source == "cirkd"
    assert teacher.feat_channels == (width if head == "deeplabv3" else 256)
    assert teacher.preprocess.color_order == "BGR" and teacher.preprocess.std == (1.0, 1.0, 1.0)
    assert teacher.convention.align_corners
    check(teacher, x, expected)


@pytest.mark.parametrize(
    "name",
    [
        "deeplabv3_resnet50",
        "fcn_resnet50",
        "lraspp_mobilenet_v3_large",
        "deeplabv3_mobilenet_v3_large",
    ],
)
def test_torchvision_checkpoint(tmp_path: Path, name: str) -> None:
    torch.set_num_threads(1)
    state, expected, x = make(ref.torchvision_forward, name, 21, seed=5)
    path = tmp_path / f"{name}_coco.pth"
    torch.save(OrderedDict(state), path)  # torchvision's files are bare state dicts
    teacher = load_zoo_teacher(f"torchvision:{name}:{path}")
    assert teacher.arch == f"torchvision_{name}"
    assert teacher.labels.names[:2] == ("background", "aeroplane")
    check(teacher, x, expected)
    assert load_zoo_teacher(path).arch == teacher.arch  # the keys alone determine it
