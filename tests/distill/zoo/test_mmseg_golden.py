"""segkd's mmseg teachers against mmsegmentation's own outputs (tools/golden/mmseg_golden.py).

Each fixture holds the upstream key layout, the config's pretty_text and mmseg's outputs
on formula weights. The test saves a checkpoint as mmseg 1.x does ({'meta': {'cfg': text,
'dataset_meta'}, 'state_dict'}), loads it through the real zoo loader (which reads the
config), runs the same input, and compares. Sizes make every dilated tap see real pixels,
so a wrong dilation, stride, pool scale or align_corners changes the numbers (see
test_a_flipped_setting_is_caught and docs/notes/zoo.md).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from core.labels import CITYSCAPES_CLASSES
from distill.zoo import mmseg, mmseg_config
from distill.zoo.load import load_zoo_teacher
from runtime.slide import slide_logits
from tests.distill.zoo import golden_fixtures as gf

CASES = sorted(gf.GOLDEN.glob("mmseg_*.npz"))
TOL = 3e-3  # the fixture is float16


def save(info: dict, path: Path, with_config: bool = True) -> Path:
    meta: dict = {"dataset_meta": {"classes": CITYSCAPES_CLASSES}, "mmseg_version": "1.2.2"}
    if with_config:
        meta["cfg"] = info["pretty_text"]
    torch.save({"meta": meta, "state_dict": gf.state_dict(info)}, path)
    return path


@pytest.mark.parametrize("case", CASES, ids=[p.stem for p in CASES])
def test_mmseg_teacher_equals_mmseg(case: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    info, want = gf.read(case)
    teacher = load_zoo_teacher(save(info, tmp_path / "model.pth")).eval()
    assert teacher.settings_origin.endswith("meta['cfg']")
    test_cfg = info["config_test_cfg"]
    assert teacher.test_mode.mode == test_cfg["mode"]
    if test_cfg["mode"] == "slide":
        assert teacher.test_mode.crop == tuple(test_cfg["crop_size"])
        assert teacher.test_mode.stride == tuple(test_cfg["stride"])
        assert teacher.convention.align_corners
    x = gf.image(info)
    with torch.no_grad():
        logits, _, aux = teacher.net(x, with_aux=True)
        assert gf.rel_err(logits, want["logits"]) < TOL
        assert gf.rel_err(aux, want["aux"]) < TOL
        assert gf.rel_err(teacher(x)[:, :4, ::5, ::5], want["out"]) < TOL
    if "slide" in want:  # runtime.slide against mmseg's slide_inference, same window
        window = info["slide"]

        def run(crop: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return teacher(torch.from_numpy(crop)).numpy()

        seg = slide_logits(run, x.numpy(), tuple(window["crop"]), tuple(window["stride"]))
        assert gf.rel_err(seg[:, :4, ::3, ::3], want["slide"]) < TOL
        agree = (seg.argmax(1) == want["slide_argmax"]).mean()
        assert agree > 0.999, f"argmax agrees on {agree:.4%} of pixels"


FLIPS = {
    "backbone dilations": {"dilations": (1, 1, 2, 2)},
    "backbone strides": {"strides": (1, 2, 2, 1), "dilations": (1, 1, 1, 4)},
    "contract_dilation": {"contract_dilation": False},
    "pool scales": {"pool_scales": (1, 2, 3, 4)},
    "align_corners": {"align_corners": True},
}


@pytest.mark.parametrize("flip", FLIPS, ids=list(FLIPS))
def test_a_flipped_setting_is_caught(
    flip: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fixtures can fail: PSPNet-R101-d8 rebuilt with one setting changed differs."""
    torch.set_num_threads(2)
    info, want = gf.read(gf.GOLDEN / "mmseg_pspnet_r101-d8_512x1024.npz")
    real = mmseg_config.resolve_settings

    def flipped(*args, **kwargs):  # type: ignore[no-untyped-def]
        settings, named = real(*args, **kwargs)
        return replace(settings, **FLIPS[flip]), named

    monkeypatch.setattr(mmseg, "resolve_settings", flipped)
    teacher = load_zoo_teacher(save(info, tmp_path / "model.pth")).eval()
    with torch.no_grad():
        out = teacher(gf.image(info))
    assert gf.rel_err(out[:, :4, ::5, ::5], want["out"]) > 10 * TOL


def test_without_a_config_the_unchecked_settings_are_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No stored config and a file name mmseg never used: d8 defaults, said so; naming the
    config (mmseg:CONFIG:FILE) then builds what mmseg built."""
    info, want = gf.read(gf.GOLDEN / "mmseg_pspnet_r101-d8_769x769.npz")
    path = save(info, tmp_path / "teacher.pth", with_config=False)
    teacher = load_zoo_teacher(path).eval()
    assert "not checked" in caplog.text and "align_corners" in caplog.text
    assert not teacher.convention.align_corners and teacher.test_mode.mode == "whole"
    named = load_zoo_teacher(f"mmseg:pspnet_r101-d8_4xb2-80k_cityscapes-769x769:{path}").eval()
    assert named.convention.align_corners and named.test_mode.crop == (769, 769)
    with torch.no_grad():
        assert gf.rel_err(named(gf.image(info))[:, :4, ::5, ::5], want["out"]) < TOL
    # the 0.x checkpoint name of the same config settles it too
    ckpt = "pspnet_r101-d8_769x769_80k_cityscapes_20200606_225055-dba412fa"
    assert mmseg_config.config_name_for(ckpt) == "pspnet_r101-d8_4xb2-80k_cityscapes-769x769"
