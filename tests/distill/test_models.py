"""Network definitions: shapes, output stride, pooling exactness, complexity, ONNX, weights."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from core.errors import SegkdError
from distill.models import (
    AdaptiveAvgPool2dMatmul,
    Segmentor,
    available_models,
    build_model,
    count_macs,
    count_params,
    load_backbone_weights,
    model_table,
)
from distill.models.resnet import DilatedResNet

K = 5  # classes in the small test models

# METHOD.md, 512x1024 input, aux head included: (params M, GMAC) ranges of the reference
# code bases, which all use the deep stem.
REFERENCE_RANGES = {
    "pspnet_r18": ((12.9, 13.1), (122, 126)),
    "pspnet_r101": ((58.6, 70.4), (543, 575)),
    "deeplabv3_r18": ((13.6, 22.8), (129, 203)),
    "deeplabv3_r101": ((61, 79), (516, 659)),
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ---------------------------------------------------------------- pooling


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    bins=st.sampled_from([1, 2, 3, 6]),
    bins_w=st.sampled_from([1, 2, 3, 6]),
)
def test_matmul_pooling_equals_adaptive_avg_pool(h: int, w: int, bins: int, bins_w: int) -> None:
    x = torch.randn(2, 3, h, w)
    for size in (bins, (bins, bins_w)):
        ours = AdaptiveAvgPool2dMatmul(size)(x)
        ref = nn.AdaptiveAvgPool2d(size)(x)
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("hw", [(64, 128), (65, 129), (2, 5), (5, 2), (1, 1), (97, 13)])
def test_matmul_pooling_psp_bins_fixed_sizes(hw: tuple[int, int]) -> None:
    x = torch.randn(1, 4, *hw) * 10
    for bins in (1, 2, 3, 6):
        torch.testing.assert_close(
            AdaptiveAvgPool2dMatmul(bins)(x), nn.AdaptiveAvgPool2d(bins)(x), atol=1e-5, rtol=1e-6
        )


def test_matmul_pooling_is_stateless() -> None:
    pool = AdaptiveAvgPool2dMatmul(6)
    assert list(pool.parameters()) == [] and pool.state_dict() == {}


# ---------------------------------------------------------------- shapes


# the real-time ones: test_realtime_models
@pytest.mark.parametrize("arch", available_models("resnet"))
def test_every_arch_shapes_at_output_stride_8(arch: str) -> None:
    model = build_model(arch, K)
    assert isinstance(model, Segmentor) and model.arch == arch and model.num_classes == K
    x = torch.randn(2, 3, 32, 48)  # 4x6 at 1/8: smaller than PSPNet's 6-bin pooling
    with torch.no_grad():
        c3, c4 = model.backbone(x)
        assert c3.shape[-2:] == c4.shape[-2:] == (4, 6)
        model.train()
        out = model(x)
        assert set(out) == {"logits", "feat", "aux"}
        assert out["logits"].shape == (2, K, 4, 6)
        assert out["aux"].shape == (2, K, 4, 6)
        assert out["feat"].shape == (2, model.feat_channels, 4, 6)
        model.eval()
        y = model(x[:1, :, :, :44])  # not a multiple of 8: logits are resized back
    assert isinstance(y, torch.Tensor) and y.shape == (1, K, 32, 44)


def test_feat_is_the_relu_output_the_classifier_reads() -> None:
    model = build_model("deeplabv3_r18", K).eval()
    with torch.no_grad():
        out = model.extract(torch.randn(1, 3, 48, 80), with_aux=False)
        assert "aux" not in out
        assert out["feat"].min() >= 0
        torch.testing.assert_close(model.head.classifier(out["feat"]), out["logits"])


def test_eval_forward_is_upsampled_logits_and_no_aux_model() -> None:
    model = build_model("pspnet_r18", K, aux=False)
    assert model.aux_head is None and not any(k.startswith("aux") for k in model.state_dict())
    model.train()
    x = torch.randn(2, 3, 40, 72)
    with torch.no_grad():
        assert set(model(x)) == {"logits", "feat"}
        model.eval()
        logits = model.extract(x)["logits"]
        up = nn.functional.interpolate(logits, size=(40, 72), mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(x), up)


def test_channels_last_and_autocast() -> None:
    model = build_model("pspnet_r18", K).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out_cl = model_cl(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(out_cl, ref, atol=1e-3, rtol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf16 = model(x)
    assert out_bf16.dtype == torch.bfloat16 and out_bf16.shape == ref.shape
    assert torch.isfinite(out_bf16.float()).all()


def test_rebuild_from_model_kwargs_and_sync_bn() -> None:
    model = build_model("deeplabv3_r50", K, aux=False, deep_stem=True)
    assert model.model_kwargs == {"aux": False, "deep_stem": True}
    again = build_model(model.arch, model.num_classes, **model.model_kwargs)
    again.load_state_dict(model.state_dict(), strict=True)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(again)
    assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())


def test_unknown_arch_names_valid_ones() -> None:
    with pytest.raises(SegkdError, match=r"pspnet_r19.*pspnet_r18.*deeplabv3_r101"):
        build_model("pspnet_r19", K)
    assert {
        "pspnet_r18",
        "pspnet_r50",
        "pspnet_r101",
        "deeplabv3_r18",
        "deeplabv3_r50",
        "deeplabv3_r101",
    } <= set(available_models())


# ---------------------------------------------------------------- complexity


@pytest.mark.parametrize("arch", sorted(REFERENCE_RANGES))
def test_params_and_macs_in_method_ranges(arch: str) -> None:
    (p_lo, p_hi), (g_lo, g_hi) = REFERENCE_RANGES[arch]
    with torch.device("meta"):
        model = build_model(arch, 19, deep_stem=True)
    params_m = count_params(model) / 1e6
    assert p_lo <= params_m <= p_hi, params_m
    # The reference GMACs come from other counters (hook-based, some ignoring dilation
    # when computing output sizes); ours is exact, so allow 0.5 % below the low end.
    gmacs = count_macs(model, (512, 1024)) / 1e9
    assert g_lo * 0.995 <= gmacs <= g_hi, gmacs


def test_count_macs_matches_an_independent_hook_count() -> None:
    model = build_model("pspnet_r18", K).eval()
    macs = count_macs(model, (72, 104))  # before the hooks: its meta deepcopy would copy them
    assert next(model.parameters()).device.type == "cpu"  # counted on a meta copy
    total = [0]

    def conv_hook(m: nn.Conv2d, inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
        kh, kw = m.kernel_size
        total[0] += out.numel() * (m.in_channels // m.groups) * kh * kw

    def pool_hook(m: AdaptiveAvgPool2dMatmul, inp: tuple[torch.Tensor], out: torch.Tensor) -> None:
        b, c, h, w = inp[0].shape
        oh, ow = m.output_size
        total[0] += b * c * (oh * h * w + oh * w * ow)  # P_h @ X, then @ P_w^T

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv_hook)
        elif isinstance(m, AdaptiveAvgPool2dMatmul):
            m.register_forward_hook(pool_hook)
    with torch.no_grad():
        model.extract(torch.randn(1, 3, 72, 104))
    assert macs == total[0]


def test_model_table_rows() -> None:
    rows = model_table((512, 1024), num_classes=19)
    assert [r["arch"] for r in rows] == available_models()
    by_arch = {r["arch"]: r for r in rows}
    assert by_arch["pspnet_r18"]["feat_channels"] == 128
    assert by_arch["pspnet_r101"]["feat_channels"] == 512
    assert by_arch["deeplabv3_r18"]["feat_channels"] == 256
    assert by_arch["pspnet_r18"]["params_m"] < by_arch["pspnet_r50"]["params_m"]
    assert all(r["gmacs"] > 50 for r in rows if r["arch"] in available_models("resnet"))
    assert all(r["deploy_gmacs"] < r["gmacs"] for r in rows)  # aux heads are training-only


# ---------------------------------------------------------------- ONNX


def _well_conditioned(model: nn.Module) -> None:
    """Shrink BN gains so the random network's logits are O(1) like a trained one's.

    With unit gains the residual sums grow to logits of O(100), where float32 rounding
    alone differs by more than 1e-4 between two correct runtimes.
    """
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.2, 0.6)
            nn.init.normal_(m.running_mean, 0.0, 0.1)
    model.eval()


def test_onnx_export_with_dynamic_size_matches_torch(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = build_model("pspnet_r18", K)
    _well_conditioned(model)
    path = tmp_path / "model.onnx"
    kwargs = {
        "input_names": ["input"],
        "output_names": ["logits"],
        "opset_version": 17,
    }
    try:  # the legacy exporter is 6x faster here; fall back if it is gone
        torch.onnx.export(
            model,
            (torch.randn(1, 3, 64, 64),),
            str(path),
            dynamo=False,
            dynamic_axes={"input": {2: "h", 3: "w"}, "logits": {2: "h", 3: "w"}},
            **kwargs,
        )
    except (TypeError, RuntimeError):
        h, w = torch.export.Dim("h", min=16, max=4096), torch.export.Dim("w", min=16, max=4096)
        torch.onnx.export(
            model,
            (torch.randn(1, 3, 64, 64),),
            str(path),
            dynamo=True,
            external_data=False,
            dynamic_shapes=({2: h, 3: w},),
            **kwargs,
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for hw in [(64, 96), (96, 128)]:  # neither is the traced 64x64
        x = torch.randn(1, 3, *hw)
        with torch.no_grad():
            ref = model(x).numpy()
        (out,) = session.run(None, {"input": x.numpy()})
        assert out.shape == (1, K, *hw) and ref.std() > 0.05  # not a degenerate output
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- backbone weights


def _torchvision_resnet18_file(tmp_path):
    """A state dict with torchvision's key names: our resnet18 trunk + the ImageNet fc."""
    state = DilatedResNet(18).state_dict()
    state["fc.weight"] = torch.randn(1000, 512)
    state["fc.bias"] = torch.randn(1000)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    return path, state


def test_backbone_weights_load_and_report_fc_ignored(tmp_path, caplog) -> None:
    path, state = _torchvision_resnet18_file(tmp_path)
    with caplog.at_level(logging.INFO, logger="distill.models.weights"):
        model = build_model("pspnet_r18", K, backbone_weights=str(path))
    report = model.backbone_report
    assert report is not None
    assert report["ignored"] == ["fc.bias", "fc.weight"]
    assert report["missing"] == [] and report["unexpected"] == [] and report["mismatched"] == []
    assert len(report["loaded"]) == len(state) - 2
    torch.testing.assert_close(
        model.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"]
    )
    torch.testing.assert_close(model.backbone.bn1.running_var, state["bn1.running_var"])
    assert "2 ignored" in caplog.text
    assert "backbone_weights" not in model.model_kwargs  # a checkpoint carries its own weights


def test_deep_stem_reports_stem_keys(tmp_path, caplog) -> None:
    path, _ = _torchvision_resnet18_file(tmp_path)
    model = build_model("deeplabv3_r18", K, deep_stem=True)
    with caplog.at_level(logging.WARNING, logger="distill.models.weights"):
        report = load_backbone_weights(model, path)
    assert "conv1.weight" in report["mismatched"]  # 7x7 in the file, 3x3 in the stem
    for key in ("conv1.weight", "conv2.weight", "bn2.weight", "conv3.weight", "bn3.running_mean"):
        assert key in report["missing"]
    assert "layer1.0.downsample.0.weight" in report["missing"]  # layer1 now starts at 128 ch
    assert "layer4.1.conv2.weight" in report["loaded"]
    assert report["unexpected"] == []
    assert "conv2.weight" in caplog.text and "mismatched" in caplog.text


def test_backbone_weights_user_errors(tmp_path) -> None:
    model = build_model("pspnet_r18", K, aux=False)
    with pytest.raises(SegkdError, match="not found"):
        load_backbone_weights(model, tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(SegkdError, match=r"garbage\.pth"):
        load_backbone_weights(model, garbage)
    other = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, other)
    with pytest.raises(SegkdError, match="no key fits"):
        load_backbone_weights(model, other)
