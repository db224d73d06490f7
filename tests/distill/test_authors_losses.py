"""segkd's implementation of the DDRNet/PIDNet authors' training losses against the
outputs THEIR code produced on fixed tensors (tools/golden/realtime_losses.py ran
XuJiacong/PIDNet's utils/criterion.py, utils/utils.py FullModel and
datasets/base_dataset.py; the fixture records the commit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import SegkdError
from distill.losses.authors import OhemSegmentationLoss
from distill.losses.boundary import BAS_WEIGHT, BOUNDARY_WEIGHT, canny_boundary_targets
from distill.losses.ohem import (
    CITYSCAPES_CLASS_WEIGHTS,
    OHEM_MIN_KEPT,
    OHEM_THRESHOLD,
    ohem_cross_entropy,
)
from distill.losses.recipe import build_supervised_loss

GOLDEN = np.load(Path(__file__).parent / "golden" / "realtime_losses.npz")


def tensor(name: str) -> torch.Tensor:
    return torch.from_numpy(np.array(GOLDEN[name]))


def labels() -> torch.Tensor:
    return tensor("labels").long()


def test_fixture_comes_from_upstream_and_holds_edges_of_both_kinds() -> None:
    assert str(GOLDEN["upstream"]).startswith("github.com/XuJiacong/PIDNet@")
    edges = GOLDEN["edges"]
    assert 0.05 < edges.mean() < 0.5  # a real band, not empty nor everywhere
    assert (GOLDEN["labels"] == 255).any()


def test_constants_are_the_authors_cityscapes_config() -> None:
    thres, keep, w_aux, w_main, w_sb, align = GOLDEN["config"]
    assert (thres, keep) == (OHEM_THRESHOLD, OHEM_MIN_KEPT)
    assert (w_aux, w_main, w_sb) == (0.4, 1.0, BAS_WEIGHT)
    assert OhemSegmentationLoss().aux_weight == w_aux
    assert bool(align)  # PIDNet's MODEL.ALIGN_CORNERS: configs/cityscapes/pidnet_*.yaml
    assert BOUNDARY_WEIGHT == 20.0  # BondaryLoss(coeff_bce=20.0)
    np.testing.assert_array_equal(
        np.asarray(CITYSCAPES_CLASS_WEIGHTS, np.float32), GOLDEN["class_weights"]
    )


@pytest.mark.parametrize(
    "name", ["ohem_authors", "ohem_keep500_t07", "ohem_keep3000_t05_unweighted"]
)
def test_ohem_equals_upstream(name: str) -> None:
    thres, keep, weighted, align = GOLDEN[name + "_params"]
    got = ohem_cross_entropy(
        tensor("main"),
        labels(),
        threshold=float(thres),
        min_kept=int(keep),
        class_weights=CITYSCAPES_CLASS_WEIGHTS if weighted else None,
        align_corners=bool(align),
    )
    assert got.item() == pytest.approx(float(GOLDEN[name]), abs=1e-5)


def test_boundary_targets_equal_upstream_canny_and_dilation() -> None:
    got = canny_boundary_targets(labels())
    np.testing.assert_array_equal(got.numpy(), GOLDEN["edges"])


def test_whole_training_loss_equals_upstream() -> None:
    loss = OhemSegmentationLoss(
        aux_weight=0.4, class_weights=CITYSCAPES_CLASS_WEIGHTS, align_corners=True
    )
    out = {"logits": tensor("main"), "aux": tensor("aux"), "boundary": tensor("boundary")}
    terms = loss(out, labels())
    semantic = terms["ce"] + 0.4 * terms["aux"]
    assert semantic.item() == pytest.approx(float(GOLDEN["loss_semantic"]), abs=1e-5)
    assert (BOUNDARY_WEIGHT * terms["boundary"]).item() == pytest.approx(
        float(GOLDEN["loss_boundary"]), abs=1e-5
    )
    assert terms["loss"].item() == pytest.approx(float(GOLDEN["loss_total"]), abs=1e-5)


def test_gradients_flow_to_every_head_but_not_through_the_gate() -> None:
    out = {k: tensor(v).requires_grad_() for k, v in
           (("logits", "main"), ("aux", "aux"), ("boundary", "boundary"))}  # fmt: skip
    OhemSegmentationLoss(align_corners=True)(out, labels())["loss"].backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in out.values())


def test_no_valid_pixel_gives_zero_not_nan() -> None:
    lab = torch.full((1, 8, 8), 255)
    assert ohem_cross_entropy(torch.randn(1, 3, 8, 8), lab).item() == 0.0


def test_recipe_builds_and_refuses() -> None:
    assert isinstance(
        build_supervised_loss("ohem", num_classes=19, class_weights="cityscapes"),
        OhemSegmentationLoss,
    )
    with pytest.raises(SegkdError, match="19 weights; the dataset has 12"):
        build_supervised_loss("ohem", num_classes=12, class_weights="cityscapes")
    with pytest.raises(SegkdError, match="ohem loss only"):
        build_supervised_loss("ce", num_classes=19, class_weights="cityscapes")
    with pytest.raises(SegkdError, match="unknown value 'focal'"):
        build_supervised_loss("focal", num_classes=19)


def test_train_config_option_reaches_the_objective() -> None:
    from distill.losses.recipe import loss_from_config
    from distill.training.config import TrainConfig

    cfg = TrainConfig(loss="ohem", ohem_min_kept=2731, ohem_align=True)
    loss = loss_from_config(cfg, num_classes=19, ignore_index=255, aux_weight=0.4)
    assert isinstance(loss, OhemSegmentationLoss)
    assert (loss.min_kept, loss.threshold, loss.align_corners) == (2731, 0.9, True)
    for bad, message in (
        (TrainConfig(loss="focal"), "--loss: unknown value 'focal'"),
        (TrainConfig(loss="ohem", class_weights="ade"), "--class-weights: unknown set 'ade'"),
        (TrainConfig(class_weights="cityscapes"), "apply to --loss ohem only"),
        (TrainConfig(loss="ohem", ohem_min_kept=0), "--ohem-min-kept must be >= 1"),
        (TrainConfig(loss="ohem", ohem_threshold=1.5), r"--ohem-threshold must be in \(0, 1\]"),
    ):
        with pytest.raises(SegkdError, match=message):
            bad.validate()
