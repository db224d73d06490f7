"""Loading zoo files safely and strictly, their input conventions and their class sets."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import SegkdError
from core.labels import CITYSCAPES_CLASSES
from core.preprocess import PreprocessSpec
from distill.zoo import load_zoo_teacher, parse_teacher_spec
from distill.zoo.base import VOC_NAMES
from distill.zoo.convert import ConvertedTeacher, class_indices, input_affine
from distill.zoo.entry import load_any_model, load_teacher
from tests.distill.zoo import reference as ref
from tests.distill.zoo.files import save_mmseg_pspnet_r18

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def cirkd_r18(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CIRKD PSPNet-R18 Cityscapes file (bare state dict), the smallest real layout."""
    torch.set_num_threads(1)
    P = ref.Params(7)
    with torch.no_grad():
        ref.cirkd_forward(P, torch.zeros(1, 3, 32, 32), 18, "psp", 19)
    path = tmp_path_factory.mktemp("zoo") / "psp_resnet18_citys_best_model.pth"
    torch.save(P.state, path)
    return path


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def test_executable_pickle_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pth"
    torch.save({"meta": {"x": Payload(marker)}, "state_dict": {}}, bad)
    with pytest.raises(SegkdError, match=r"refused to load .*evil\.pth"):
        load_zoo_teacher(bad)
    assert not marker.exists()


def test_partial_load_names_missing_and_unexpected_keys(cirkd_r18: Path, tmp_path: Path) -> None:
    state = torch.load(cirkd_r18, weights_only=True)
    state.pop("head.block.1.running_var")
    state["head.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "partial.pth"
    torch.save(state, bad)
    with pytest.raises(SegkdError) as e:
        load_zoo_teacher(bad)
    msg = str(e.value)
    assert "\n" not in msg and "partial.pth" in msg
    assert "1 missing keys (head.block.1.running_var)" in msg
    assert "1 unexpected keys (head.extra.weight)" in msg


def test_prefix_forces_the_source_and_names_are_checked(cirkd_r18: Path) -> None:
    assert parse_teacher_spec(f"cirkd:{cirkd_r18}").source == "cirkd"
    spec = parse_teacher_spec(f"torchvision:deeplabv3_resnet101:{cirkd_r18}")
    assert (spec.source, spec.name, spec.path) == ("torchvision", "deeplabv3_resnet101", cirkd_r18)
    assert load_zoo_teacher(f"cirkd:psp_resnet18:{cirkd_r18}").arch == "cirkd_psp_r18"
    assert load_zoo_teacher(f"cirkd:pspnet_resnet18_citys:{cirkd_r18}").arch == "cirkd_psp_r18"
    with pytest.raises(SegkdError, match="forced as mmseg"):
        load_zoo_teacher(f"mmseg:{cirkd_r18}")
    with pytest.raises(SegkdError, match="named 'deeplabv3_resnet101'"):
        load_zoo_teacher(f"cirkd:deeplabv3_resnet101:{cirkd_r18}")


def test_student_batch_becomes_the_teachers_own_input() -> None:
    """From the same crop: the student's normalised tensor, converted, is exactly what CIRKD's
    loader (BGR, caffe mean, no std) and torchvision's (RGB, 0..1 ImageNet stats) produce."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)  # RGB
    student = PreprocessSpec(input_size=(8, 10))
    x = torch.from_numpy(student.normalize(image, "RGB"))[None]
    bgr = image[:, :, ::-1].astype(np.float64)
    cirkd = bgr - np.array([104.00698793, 116.66876762, 122.67891434])  # CIRKD's dataset code
    tv = (image / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    from distill.zoo import cirkd as cirkd_src
    from distill.zoo import torchvision as tv_src

    for convention, want in ((cirkd_src.CONVENTION, cirkd), (tv_src.CONVENTION, tv)):
        scale, shift, flip = input_affine(student, convention.preprocess((8, 10)))
        got = (x.flip(1) if flip else x) * scale + shift
        want_t = torch.from_numpy(want.transpose(2, 0, 1).copy()).float()[None]
        assert torch.allclose(got, want_t, atol=1e-4 * float(want_t.abs().max()))


def test_class_sets_are_mapped_by_name_or_refused(cirkd_r18: Path) -> None:
    teacher = load_zoo_teacher(cirkd_r18)
    subset = ["car", "road", "sky"]
    assert class_indices(teacher.labels, subset, cirkd_r18) == [13, 0, 10]
    assert class_indices(teacher.labels, CITYSCAPES_CLASSES, cirkd_r18) is None
    from distill.data.voc import VOC_CLASSES

    with pytest.raises(SegkdError, match=r"do not cover the dataset's 21: no background"):
        class_indices(teacher.labels, VOC_CLASSES, cirkd_r18)


def test_converted_teacher_sees_its_convention_and_the_dataset_classes(cirkd_r18: Path) -> None:
    student = PreprocessSpec(input_size=(64, 64))
    model, record, path = load_teacher(str(cirkd_r18), ["road", "car"], student)
    assert isinstance(model, ConvertedTeacher) and path == cirkd_r18
    assert record["arch"] == "cirkd_psp_r18" and record["preprocess"]["color_order"] == "BGR"
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    x = torch.from_numpy(student.normalize(image, "RGB"))[None]
    own = torch.from_numpy(model.teacher.preprocess.normalize(image, "RGB"))[None]
    with torch.no_grad():
        got = model.extract(x)
        full = model.teacher.extract(own)
    assert got["logits"].shape == (1, 2, 8, 8) and got["feat"].shape == (1, 128, 8, 8)
    assert torch.allclose(got["logits"], full["logits"][:, [0, 13]], rtol=1e-4, atol=1e-4)


def test_teacher_outputs_land_on_the_students_grid(tmp_path: Path) -> None:
    """torchvision's MobileNetV3 DeepLabV3 is at 1/16: its logits/feat are brought to the
    1/8 grid a segkd student predicts on, at odd sizes too."""
    from distill.models import build_model

    P = ref.Params(13)
    with torch.no_grad():
        ref.torchvision_forward(P, torch.zeros(1, 3, 32, 32), "deeplabv3_mobilenet_v3_large", 21)
    path = tmp_path / "deeplabv3_mobilenet_v3_large-fc3c493d.pth"
    torch.save(P.state, path)
    student = PreprocessSpec(input_size=(66, 75))
    model, _, _ = load_teacher(path, VOC_NAMES, student)
    x = torch.zeros(1, 3, 66, 75)
    with torch.no_grad():
        got = model.extract(x)
        own = model.teacher.extract(x)
        s_logits = build_model("pspnet_r18", 21, aux=False).eval().extract(x)["logits"]
    assert own["logits"].shape[-2:] == (5, 5)  # 1/16
    assert got["logits"].shape == s_logits.shape == (1, 21, 9, 10)
    assert got["feat"].shape == (1, 256, 9, 10)


def test_eval_loader_keeps_the_sources_preprocessing(cirkd_r18: Path) -> None:
    model, record = load_any_model(f"cirkd:{cirkd_r18}")
    assert record["preprocess"]["mean"] == [104.00698793, 116.66876762, 122.67891434]
    assert record["labels"]["names"] == list(CITYSCAPES_CLASSES)
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 40, 48))
    assert out.shape == (1, 19, 40, 48)
    from distill.data.synthetic import SYNTHETIC  # 12 of the 19 Cityscapes classes

    model, record = load_any_model(cirkd_r18, dataset=SYNTHETIC)
    assert record["labels"]["names"] == list(SYNTHETIC.names)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 40, 48)).shape == (1, 12, 40, 48)


def _segkd(*args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "cli.py", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


SYN = ("--data", "synthetic:size=64x64,train=4,val=2")


@pytest.mark.parametrize("source", ["cirkd", "mmseg"])
def test_distill_from_a_zoo_file_maps_classes_and_caches_the_readout_beside_it(
    cirkd_r18: Path, tmp_path: Path, source: str
) -> None:
    """`segkd distill --teacher FILE`: a Cityscapes-19 zoo teacher on the 12-class synthetic
    set runs, its readout lands in <file>.readout.pt, and the user's file is not rewritten."""
    if source == "cirkd":
        teacher = tmp_path / cirkd_r18.name
        shutil.copy(cirkd_r18, teacher)
    else:  # mmseg's {'meta', 'state_dict'} wrapper, PSPNet-R18-d8
        teacher = save_mmseg_pspnet_r18(
            tmp_path / "pspnet_r18-d8_512x1024_80k_cityscapes.pth", CITYSCAPES_CLASSES, 11
        )
    before = hashlib.sha256(teacher.read_bytes()).hexdigest()
    r = _segkd(
        "distill", "--teacher", teacher, *SYN, "--iters", "2", "--batch-size", "2",
        "--crop-size", "64x64", "--export-size", "64x64", "--readout-iters", "2",
        "--device", "cpu", "--out", tmp_path / "run",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"distilled from {source}_psp" in r.stdout
    assert teacher.with_name(teacher.stem + ".readout.pt").is_file()
    assert hashlib.sha256(teacher.read_bytes()).hexdigest() == before
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert ckpt["distillation"]["teacher"]["source"] == source


def test_distill_refuses_a_teacher_whose_classes_do_not_fit(tmp_path: Path) -> None:
    P = ref.Params(9)
    with torch.no_grad():
        ref.torchvision_forward(P, torch.zeros(1, 3, 32, 32), "lraspp_mobilenet_v3_large", 21)
    voc = tmp_path / "lraspp_mobilenet_v3_large-d234d4ea.pth"
    torch.save(P.state, voc)
    r = _segkd("distill", "--teacher", voc, *SYN, "--iters", "1", "--out", tmp_path / "run")
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr[-2000:]
    assert str(voc) in errors[0] and "do not cover" in errors[0]


def test_eval_of_a_prefixed_zoo_file(tmp_path: Path) -> None:
    """`segkd eval mmseg:FILE`: an mmseg file whose meta names the synthetic set's 12 classes
    (so it runs at mmseg's 512x512, not the 1024x2048 of a Cityscapes-19 teacher)."""
    from distill.data.synthetic import SYNTHETIC

    path = save_mmseg_pspnet_r18(tmp_path / "pspnet_r18-d8_synthetic.pth", SYNTHETIC.names, 17)
    out = tmp_path / "eval.json"
    r = _segkd("eval", f"mmseg:{path}", *SYN, "--device", "cpu", "--json", out)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["num_samples"] == 2 and len(result["iou"]) == 12
    assert result["model"]["input_size"] == [512, 512]
    assert result["mode"] == "whole"


SLIDE_CONFIG = """model = dict(
    type='EncoderDecoder',
    backbone=dict(type='ResNetV1c', depth=18, dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1),
                  contract_dilation=True, norm_cfg=dict(type='SyncBN', requires_grad=True)),
    decode_head=dict(type='PSPHead', in_channels=512, in_index=3, channels=128,
                     pool_scales=(1, 2, 3, 6), num_classes=12, align_corners=True),
    test_cfg=dict(mode='slide', crop_size=(320, 320), stride=(192, 192)))
"""


def test_eval_runs_the_sliding_window_its_config_names(tmp_path: Path) -> None:
    """An mmseg file whose stored config tests with mode='slide': `segkd eval` slides by
    default and reports it; --mode whole overrides (tests/runtime/test_slide.py, and
    test_mmseg_golden.py for equality with mmseg's slide_inference)."""
    from distill.data.synthetic import SYNTHETIC

    src = save_mmseg_pspnet_r18(tmp_path / "src.pth", SYNTHETIC.names, 17)
    obj = torch.load(src, weights_only=True)
    obj["meta"]["cfg"] = SLIDE_CONFIG
    path = tmp_path / "pspnet_r18-d8_synthetic_slide.pth"
    torch.save(obj, path)
    out = tmp_path / "eval.json"
    r = _segkd("eval", str(path), *SYN, "--device", "cpu", "--json", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mode: slide (crop 320x320, stride 192x192)" in r.stdout
    assert json.loads(out.read_text())["mode"] == "slide (crop 320x320, stride 192x192)"
