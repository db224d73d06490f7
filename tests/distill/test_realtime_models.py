"""DDRNet-23-slim and PIDNet-S: outputs, published complexity, ImageNet files, boundary
losses and real distillation steps from a PSPNet-R18 teacher with every term."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from core.errors import SegkdError
from distill.distillation import DistillConfig, DistillObjective
from distill.losses import SegmentationLoss, fit_position_readout, pixel_kd_loss
from distill.losses.boundary import boundary_aware_labels, boundary_bce, boundary_targets
from distill.losses.cwd import channel_wise_loss
from distill.models import build_model, count_macs, count_params, model_table
from distill.models.registry import available_models
from tools.golden.formula import parse_layout, state_dict

K = 5
GOLDEN = Path(__file__).parent / "golden"
ARCHS = sorted(available_models("realtime"))
# Published at 1024x2048, inference graph (no training heads): params, G(M)ACs.
PUBLISHED = {"ddrnet23_slim": (5.7e6, 36.3e9), "pidnet_s": (7.6e6, 47.6e9)}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _well_conditioned(model: nn.Module) -> nn.Module:
    """Small BN gains: a random two-branch net's sums otherwise grow to huge logits."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.2, 0.6)
            nn.init.normal_(m.running_mean, 0.0, 0.1)
    return model.eval()


# ---------------------------------------------------------------- outputs


@pytest.mark.parametrize("arch", ARCHS)
def test_training_outputs_at_stride_8_and_eval_logits_at_any_size(arch: str) -> None:
    model = build_model(arch, K).train()
    x = torch.randn(2, 3, 64, 96)
    out = model(x)
    want = {"logits", "feat", "aux"} | ({"boundary"} if arch == "pidnet_s" else set())
    assert set(out) == want
    assert out["logits"].shape == out["aux"].shape == (2, K, 8, 12)
    assert out["feat"].shape == (2, model.feat_channels, 8, 12)
    if "boundary" in out:
        assert out["boundary"].shape == (2, 1, 8, 12)
    model.eval()
    with torch.no_grad():
        for hw in [(64, 128), (50, 90), (33, 47)]:  # odd sizes round up on both branches
            y = model(torch.randn(1, 3, *hw))
            assert isinstance(y, torch.Tensor) and y.shape == (1, K, *hw)


@pytest.mark.parametrize("arch", ARCHS)
def test_feat_is_what_the_classifier_reads(arch: str) -> None:
    model = _well_conditioned(build_model(arch, K))
    with torch.no_grad():
        out = model.extract(torch.randn(1, 3, 64, 64), with_aux=False)
        assert set(out) == {"logits", "feat"}  # training heads skipped
        assert out["feat"].min() >= 0
        torch.testing.assert_close(model.final_layer.conv2(out["feat"]), out["logits"])


@pytest.mark.parametrize("arch", ARCHS)
def test_training_heads_are_optional_and_rebuild_from_kwargs(arch: str) -> None:
    model = build_model(arch, K, aux=False)
    assert model.model_kwargs == {"aux": False} and not model.has_aux
    assert not any(k.startswith(("seghead_extra", "seghead_p")) for k in model.state_dict())
    again = build_model(arch, K, **model.model_kwargs)
    again.load_state_dict(model.state_dict(), strict=True)
    with pytest.raises(SegkdError, match="deep-stem"):
        build_model(arch, K, deep_stem=True)


# ---------------------------------------------------------------- complexity


@pytest.mark.parametrize("arch", ARCHS)
def test_params_and_macs_within_3_percent_of_the_papers(arch: str) -> None:
    """The papers' "FLOPs" are multiply-accumulates of the inference graph (no aux head):
    our exact conv + matmul MAC count lands within 1 %, twice that would be 2x off."""
    with torch.device("meta"):
        model = build_model(arch, 19)
    params, macs = PUBLISHED[arch]
    assert abs(count_params(model, with_aux=False) / params - 1) < 0.03
    assert abs(count_macs(model, (1024, 2048), with_aux=False) / macs - 1) < 0.03
    # The training-only heads are extra parameters and work, never part of the export.
    assert count_params(model) > count_params(model, with_aux=False)
    assert count_macs(model, (64, 128)) > count_macs(model, (64, 128), with_aux=False)


def test_model_table_has_realtime_rows_about_a_tenth_of_pspnet_r18() -> None:
    rows = {r["arch"]: r for r in model_table((512, 1024), num_classes=19, deep_stem=True)}
    psp = rows["pspnet_r18"]["deploy_macs"]
    for arch in ARCHS:
        assert rows[arch]["deploy_macs"] < psp / 8
        assert rows[arch]["deploy_params"] < rows[arch]["params"]
    assert rows["ddrnet23_slim"]["feat_channels"] == 64
    assert rows["pidnet_s"]["feat_channels"] == 128


# ---------------------------------------------------------------- ImageNet checkpoints


def _upstream_layout(arch: str, key: str) -> dict[str, tuple[int, ...]]:
    """A key layout the authors' own model definitions produced (tools/golden/realtime_models.py)."""
    return parse_layout(np.load(GOLDEN / f"realtime_{arch}.npz")[key])


def _formula_state(layout: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return state_dict(list(layout.items()))


def _ddrnet_imagenet_state(model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """DDRNet23s_imagenet.pth's layout: the state dict of the authors' ImageNet DualResNet
    (classification/DDRNet_23_slim.py get_model(), read from the golden fixture): the
    trunk under the segmentation names plus down5 / last_layer / linear, no DAPPM or heads."""
    return _formula_state(_upstream_layout("ddrnet23_slim", "imagenet_layout"))


def test_ddrnet_imagenet_file_loads_with_report(tmp_path, caplog) -> None:
    state = _ddrnet_imagenet_state()
    path = tmp_path / "DDRNet23s_imagenet.pth"
    torch.save(state, path)  # the authors publish a plain state dict
    with caplog.at_level(logging.INFO):
        model = build_model("ddrnet23_slim", K, backbone_weights=str(path))
    report = model.backbone_report
    assert report["unexpected"] == [] and report["mismatched"] == []
    assert report["ignored"] and all(
        k.startswith(("down5.", "last_layer.", "linear.")) for k in report["ignored"]
    )
    assert {k.split(".")[0] for k in report["missing"]} == {"spp", "final_layer", "seghead_extra"}
    assert len(report["loaded"]) == sum(
        not k.startswith(("down5.", "last_layer.", "linear.")) for k in state
    )
    torch.testing.assert_close(model.layer4_[1].conv2.weight, state["layer4_.1.conv2.weight"])
    torch.testing.assert_close(model.down4[3].weight, state["down4.3.weight"])
    torch.testing.assert_close(model.conv1[0].bias, state["conv1.0.bias"])
    assert (
        "77 missing keys, by module: final_layer (11), seghead_extra (11), spp (55)" in caplog.text
    )
    assert "backbone_weights" not in model.model_kwargs


def test_pidnet_imagenet_tar_with_prefix_and_mismatch(tmp_path) -> None:
    """PIDNet_S_ImageNet.pth.tar: {"state_dict": ...} under the network's own names; here
    with DataParallel's prefix, a 1000-class head that does not fit and a foreign key."""
    # The authors' segmentation layout (their get_seg_model keeps the file's keys that fit
    # it; no ImageNet definition is published), with a 1000-class classifier.
    layout = _upstream_layout("pidnet_s", "layout")
    layout = {k: v for k, v in layout.items() if not k.startswith(("seghead_d.", "seghead_p."))}
    layout["final_layer.conv2.weight"] = (1000, *layout["final_layer.conv2.weight"][1:])
    layout["final_layer.conv2.bias"] = (1000,)
    state = {f"module.{k}": v for k, v in _formula_state(layout).items()}
    state["module.cls_token"] = torch.zeros(3)
    path = tmp_path / "PIDNet_S_ImageNet.pth.tar"
    torch.save({"state_dict": state, "epoch": 120, "arch": "pidnet_s"}, path)
    model = build_model("pidnet_s", K, backbone_weights=str(path))
    report = model.backbone_report
    assert report["unexpected"] == ["cls_token"]
    assert report["mismatched"] == ["final_layer.conv2.bias", "final_layer.conv2.weight"]
    assert "final_layer.conv2.weight" in report["missing"]
    assert {k.split(".")[0] for k in report["missing"]} == {"final_layer", "seghead_p", "seghead_d"}
    torch.testing.assert_close(model.pag4.f_y[0].weight, state["module.pag4.f_y.0.weight"])
    torch.testing.assert_close(
        model.spp.scale_process[2].weight, state["module.spp.scale_process.2.weight"]
    )


def test_realtime_weights_errors(tmp_path) -> None:
    other = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "bn9.weight": torch.zeros(3)}, other)
    with pytest.raises(SegkdError, match="no key fits ddrnet23_slim"):
        build_model("ddrnet23_slim", K, backbone_weights=str(other))
    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": {"conv1.0.weight": torch.zeros(1)}, "opt": nn.ReLU()}, pickled)
    with pytest.raises(SegkdError, match="weights_only"):
        build_model("pidnet_s", K, backbone_weights=str(pickled))
    with pytest.raises(SegkdError, match="not found"):
        build_model("pidnet_s", K, backbone_weights=str(tmp_path / "nope.pth"))


# ---------------------------------------------------------------- boundary losses


def _two_regions(h: int = 16, w: int = 24) -> torch.Tensor:
    labels = torch.zeros(1, h, w, dtype=torch.long)
    labels[:, :, w // 2 :] = 1
    return labels


def test_boundary_targets_are_a_4_pixel_band() -> None:
    labels = _two_regions()
    edge = boundary_targets(labels)[0]
    cols = edge.sum(0).nonzero().flatten().tolist()
    assert cols == [10, 11, 12, 13] and edge[:, 10:14].all()


def test_boundary_bce_is_class_balanced_and_skips_ignore() -> None:
    labels = _two_regions()
    target = boundary_targets(labels)
    good = (target[:, None] * 20 - 10).float()  # confident and right
    assert float(boundary_bce(good, labels)) < 1e-4
    zero = boundary_bce(torch.zeros(1, 1, 16, 24), labels)
    # Logit 0 costs log 2 per pixel; weights pos share + neg share = 2 * pos * neg / n^2.
    n, pos = target.numel(), target.sum()
    want = float(np.log(2) * 2 * pos * (n - pos) / n / n)
    assert float(zero) == pytest.approx(want, rel=1e-5)
    assert float(boundary_bce(torch.zeros(1, 1, 4, 6), torch.full_like(labels, 255))) == 0.0


def test_segmentation_loss_adds_pidnet_boundary_terms_and_trains_the_d_head() -> None:
    model = build_model("pidnet_s", K).train()
    x = torch.randn(2, 3, 64, 64)
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[:, 20:40, 10:50] = 3
    out = model(x)
    terms = SegmentationLoss(aux_weight=0.4)(out, labels)
    assert {"ce", "aux", "boundary", "bas", "loss"} == set(terms)
    want = terms["ce"] + 0.4 * terms["aux"] + 20 * terms["boundary"] + terms["bas"]
    torch.testing.assert_close(terms["loss"], want)
    bas_labels = boundary_aware_labels(out["boundary"], labels)
    assert ((bas_labels == labels) | (bas_labels == 255)).all()
    terms["loss"].backward()
    assert model.seghead_d.conv2.weight.grad.abs().sum() > 0
    assert model.seghead_p.conv2.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- distillation


def test_kd_and_cwd_accept_student_logits_at_another_resolution() -> None:
    teacher = torch.randn(2, K, 8, 16)
    student = torch.randn(2, K, 4, 8, requires_grad=True)
    labels = torch.randint(0, K, (2, 64, 128))
    for loss in (pixel_kd_loss(student, teacher, labels, 4.0), channel_wise_loss(student, teacher)):
        assert torch.isfinite(loss) and loss > 0
        (g,) = torch.autograd.grad(loss, student)
        assert g.abs().sum() > 0
    up = nn.functional.interpolate(teacher, size=(4, 8), mode="bilinear", align_corners=False)
    same = nn.functional.interpolate(up, size=(8, 16), mode="bilinear", align_corners=False)
    assert float(pixel_kd_loss(up, same, labels)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="classes"):
        pixel_kd_loss(torch.randn(2, K + 1, 8, 16), teacher)


@pytest.mark.parametrize(
    ("arch", "idd_scale"), [(a, s) for a in ARCHS for s in ("normalize", "both")]
)
def test_pspnet_r18_distils_into_realtime_student_with_every_term(
    arch: str, idd_scale: str
) -> None:
    """Teacher feat 128 channels, student 64 (DDRNet) or 128 (PIDNet): KD, CWD, IDD and
    PID all run through real optimizer steps, with IDD's adapter and PID's readout."""
    teacher = _well_conditioned(build_model("pspnet_r18", K, aux=False))
    images = torch.randn(8, 3, 64, 96)
    labels = torch.randint(0, K, (8, 64, 96))
    readout, _ = fit_position_readout(teacher, [images[:4], images[4:]], iters=3)
    config = DistillConfig(losses=("kd", "cwd", "idd", "pid"), idd_scale=idd_scale)
    student = build_model(arch, K).train()
    objective = DistillObjective(teacher, student.feat_channels, K, config, readout)
    params = list(student.parameters()) + list(objective.parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    before = {k: v.clone() for k, v in student.state_dict().items() if v.is_floating_point()}
    losses = []
    for step in range(3):
        sl = slice(4 * (step % 2), 4 * (step % 2) + 4)
        terms = objective(images[sl], labels[sl], student(images[sl]))
        assert {"ce", "aux", "kd", "cwd", "idd", "pid"} <= set(terms)
        assert all(torch.isfinite(v) for v in terms.values()), terms
        # Each distillation term alone reaches the student's head conv (feat's producer).
        for term in ("kd", "cwd", "idd", "pid"):
            (g,) = torch.autograd.grad(
                terms[term], student.final_layer.conv1.weight, retain_graph=True
            )
            assert g.abs().sum() > 0, term
        opt.zero_grad()
        terms["loss"].backward()
        # An adapter (student width -> teacher's), where there is one, trains with the student.
        extra = list(objective.parameters())
        assert bool(extra) == (idd_scale == "both" or student.feat_channels != 128)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in extra[:1])
        opt.step()
        losses.append(float(terms["loss"]))
    changed = [
        k for k, v in student.state_dict().items() if k in before and not torch.equal(v, before[k])
    ]
    assert any(k.startswith("final_layer.") for k in changed) and any(
        k.startswith("conv1.") for k in changed
    )
    assert objective.teacher.training is False


# ---------------------------------------------------------------- ONNX at other sizes


@pytest.mark.parametrize("arch", ARCHS)
def test_dynamic_onnx_export_matches_torch_at_untraced_sizes(arch: str, tmp_path) -> None:
    """Resize sizes come from the tensors they join, so nothing of the traced size is
    baked in: a dynamic-axes export is right at sizes it never saw."""
    ort = pytest.importorskip("onnxruntime")
    model = _well_conditioned(build_model(arch, K))
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        model,
        (torch.randn(1, 3, 64, 64),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {2: "h", 3: "w"}, "logits": {2: "h", 3: "w"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for hw in [(64, 128), (96, 160)]:
        x = torch.randn(1, 3, *hw)
        with torch.no_grad():
            ref = model(x).numpy()
        (out,) = session.run(None, {"input": x.numpy()})
        assert out.shape == (1, K, *hw) and ref.std() > 0.05
        np.testing.assert_allclose(out, ref, atol=1e-4 * max(1.0, float(np.abs(ref).max())), rtol=0)
