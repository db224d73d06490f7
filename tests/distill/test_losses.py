"""Distillation losses: IDD properties and its agreement with a per-class loop, KD, CWD, PID."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from core.errors import SegkdError
from distill.losses import (
    ChannelWiseLoss,
    IDDLoss,
    PIDLoss,
    PositionReadout,
    SegmentationLoss,
    channel_wise_loss,
    fit_position_readout,
    idd_loss,
    pixel_kd_loss,
    position_report,
    position_targets,
    resize_labels,
)
from distill.losses.idd import feature_spread

IGNORE = 255
FAST = settings(max_examples=25, deadline=None)


# ---------------------------------------------------------------- helpers


def make_case(seed: int, b: int, k: int, h: int, w: int, cs: int, ct: int, up: int = 2):
    """Random student/teacher features (1/up of the label size) and labels with some ignore."""
    g = torch.Generator().manual_seed(seed)
    fs = torch.randn(b, cs, h, w, generator=g)
    ft = torch.randn(b, ct, h, w, generator=g) * 3 + 1
    labels = torch.randint(0, k, (b, h * up, w * up), generator=g)
    ignore = torch.rand(b, h * up, w * up, generator=g) < 0.2
    return fs, ft, labels.masked_fill(ignore, IGNORE)


def reference_idd(fs, ft, labels, k, distance="euclidean", normalize=False):
    """The definition, written plainly: per image, per present class, per pair i < j."""
    fs, ft = fs.double(), ft.double()
    size = ft.shape[-2:]
    if fs.shape[-2:] != size:
        fs = F.interpolate(fs, size=size, mode="bilinear", align_corners=False)
    lab = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()

    def dist(u, v):
        if distance == "euclidean":
            return (u - v).norm()
        return 1 - (u @ v) / (u.norm() * v.norm())

    def spread(f, valid):
        """RMS distance of the valid pixels' features from their mean."""
        x = f[:, valid]  # C x n
        return (x - x.mean(dim=1, keepdim=True)).pow(2).sum(dim=0).mean().sqrt().clamp_min(1e-6)

    total = torch.zeros((), dtype=torch.float64)
    for b in range(fs.shape[0]):
        present = [c for c in range(k) if (lab[b] == c).any()]
        cen_s = {c: fs[b][:, lab[b] == c].mean(dim=1) for c in present}
        cen_t = {c: ft[b][:, lab[b] == c].mean(dim=1) for c in present}
        pairs = list(itertools.combinations(present, 2))
        if not pairs:
            continue
        ds = torch.stack([dist(cen_s[i], cen_s[j]) for i, j in pairs])
        dt = torch.stack([dist(cen_t[i], cen_t[j]) for i, j in pairs])
        if normalize and distance == "euclidean":  # cosine distances are scale-free already
            valid = (lab[b] >= 0) & (lab[b] < k)
            ds = ds / spread(fs[b], valid)
            dt = dt / spread(ft[b], valid)
        total = total + ((dt - ds) ** 2).mean()
    return total / fs.shape[0]


shapes = st.tuples(
    st.integers(0, 10_000),  # seed
    st.integers(1, 3),  # batch
    st.integers(1, 6),  # classes
    st.integers(1, 5),  # h
    st.integers(1, 5),  # w
)


# ---------------------------------------------------------------- IDD


@FAST
@given(shapes, st.sampled_from(["euclidean", "cosine"]), st.booleans())
def test_idd_matches_the_per_class_loop(case, distance, normalize) -> None:
    seed, b, k, h, w = case
    fs, ft, labels = make_case(seed, b, k, h, w, cs=3, ct=7)
    got = idd_loss(fs, ft, labels, k, distance=distance, normalize=normalize)
    want = reference_idd(fs, ft, labels, k, distance, normalize)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("scale", ["adapter", "both"])
def test_idd_with_adapter_matches_the_loop_on_adapted_features(distance, scale) -> None:
    fs, ft, labels = make_case(3, 2, 5, 4, 6, cs=4, ct=8)
    loss = IDDLoss(4, 8, 5, distance=distance, scale=scale).eval()
    got = loss(fs, ft, labels)
    with torch.no_grad():
        adapted = loss.adapter(fs)
    want = reference_idd(adapted, ft, labels, 5, distance, normalize=scale == "both")
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_idd_resizes_the_student_feature_to_the_teacher_size() -> None:
    fs, _, _ = make_case(5, 2, 4, 3, 4, cs=3, ct=3)
    _, ft, labels = make_case(6, 2, 4, 6, 8, cs=3, ct=3)
    got = idd_loss(fs, ft, labels, 4)
    torch.testing.assert_close(got.double(), reference_idd(fs, ft, labels, 4), rtol=1e-4, atol=1e-5)


@FAST
@given(shapes, st.sampled_from(["none", "normalize"]), st.sampled_from(["euclidean", "cosine"]))
def test_idd_is_zero_for_equal_features(case, scale, distance) -> None:
    seed, b, k, h, w = case
    _, ft, labels = make_case(seed, b, k, h, w, cs=5, ct=5)
    loss = IDDLoss(5, 5, k, distance=distance, scale=scale)
    assert float(loss(ft.clone(), ft, labels)) == pytest.approx(0.0, abs=1e-8)


@FAST
@given(shapes, st.sampled_from(["euclidean", "cosine"]), st.booleans())
def test_idd_is_invariant_to_renaming_the_classes(case, distance, normalize) -> None:
    seed, b, k, h, w = case
    fs, ft, labels = make_case(seed, b, k, h, w, cs=3, ct=4)
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed + 1))
    lut = torch.full((256,), IGNORE, dtype=torch.long)
    lut[:k] = perm
    renamed = lut[labels]
    a = idd_loss(fs, ft, labels, k, distance=distance, normalize=normalize)
    r = idd_loss(fs, ft, renamed, k, distance=distance, normalize=normalize)
    torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)


@FAST
@given(shapes, st.integers(1, 4), st.booleans())
def test_absent_classes_do_not_contribute(case, extra, normalize) -> None:
    seed, b, k, h, w = case
    fs, ft, labels = make_case(seed, b, k, h, w, cs=3, ct=4)
    # Shift the features away from the origin: a zero-vector centre, if ever used, would
    # then be far from every real centre and change the loss a lot.
    fs, ft = fs + 10, ft + 10
    base = idd_loss(fs, ft, labels, k, normalize=normalize)
    more = idd_loss(fs, ft, labels, k + extra, normalize=normalize)  # ids k.. never occur
    torch.testing.assert_close(base, more, rtol=1e-6, atol=1e-7)
    # Dropping one class from an image = only the pairs of the remaining ones count.
    if k >= 3:
        cut = labels.masked_fill(labels == 0, IGNORE)
        want = reference_idd(fs, ft, cut, k, normalize=normalize)
        torch.testing.assert_close(
            idd_loss(fs, ft, cut, k, normalize=normalize).double(), want, rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("scale", ["adapter", "normalize", "both"])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("present", ["none", "one", "all_ignore"])
def test_idd_is_finite_and_zero_without_a_pair(scale, distance, present) -> None:
    fs = torch.randn(2, 3, 4, 4, requires_grad=True)
    ft = torch.randn(2, 6, 4, 4)
    labels = {
        "none": torch.full((2, 8, 8), IGNORE),
        "one": torch.full((2, 8, 8), 2),
        "all_ignore": torch.full((2, 8, 8), IGNORE),
    }[present]
    if present == "one":
        labels[1] = IGNORE
    loss = IDDLoss(3, 6, 4, distance=distance, scale=scale)(fs, ft, labels)
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(fs.grad).all()


@pytest.mark.parametrize("scale", ["normalize", "both"])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_idd_two_class_images_give_a_loss_and_a_gradient(scale, distance) -> None:
    # Most VOC crops hold background and one object: one pair per image. A scale that
    # divided each image's distances by their own mean made both 1, so loss and gradient
    # were exactly 0 there.
    fs, ft, _ = make_case(21, 3, 4, 4, 6, cs=3, ct=6)
    fs.requires_grad_(True)
    labels = torch.zeros(3, 8, 12, dtype=torch.long)
    labels[0, :, 6:] = 1  # background + class 1, class 2, class 3: a different pair each
    labels[1, 4:, :] = 2
    labels[2, 2:5, 3:9] = 3
    labels[2, 0, :] = IGNORE
    loss = IDDLoss(3, 6, 4, distance=distance, scale=scale)
    value = loss(fs, ft, labels)
    assert value.item() > 1e-4
    value.backward()
    assert torch.isfinite(fs.grad).all()
    for b in range(3):  # every image pulls, not only the batch as a whole
        assert fs.grad[b].abs().sum() > 0


@FAST
@given(
    shapes,
    st.floats(0.01, 100.0),
    st.floats(-5.0, 5.0),
    st.integers(1, 4),
)
def test_idd_normalize_is_free_of_feature_scale_offset_and_width(case, gain, offset, tiles) -> None:
    # The reason for the scale: teacher and student features differ in magnitude and width.
    seed, b, k, h, w = case
    fs, ft, labels = make_case(seed, b, k, h, w, cs=3, ct=5)
    base = idd_loss(fs, ft, labels, k, normalize=True)
    wider = ft.repeat(1, tiles, 1, 1) * gain + offset  # same structure, other scale and width
    torch.testing.assert_close(idd_loss(fs, wider, labels, k, normalize=True), base,
                               rtol=1e-3, atol=1e-5)  # fmt: skip
    torch.testing.assert_close(idd_loss(fs * gain - offset, ft, labels, k, normalize=True), base,
                               rtol=1e-3, atol=1e-5)  # fmt: skip
    # A student that holds the teacher's structure at another scale and width scores 0.
    assert idd_loss(ft, wider, labels, k, normalize=True).item() == pytest.approx(0.0, abs=1e-6)


def test_feature_spread_is_the_rms_deviation_of_labelled_pixels() -> None:
    feat = torch.tensor([[[[0.0, 2.0], [4.0, 100.0]], [[0.0, 0.0], [0.0, -50.0]]]])  # 1x2x2x2
    labels = torch.tensor([[[0, 1], [1, IGNORE]]])  # the last pixel is ignored
    # mean (2, 0); squared deviations 4, 0, 4 -> sqrt(8 / 3)
    got = feature_spread(feat, labels, 2)
    torch.testing.assert_close(got, torch.tensor([(8.0 / 3.0) ** 0.5]))
    flat = torch.ones(1, 2, 2, 2, requires_grad=True)
    value = feature_spread(flat, labels, 2)
    value.backward()
    assert value.item() > 0 and torch.isfinite(flat.grad).all()  # eps, never 0 or NaN
    x = (torch.randn(2, 3, 4, 5, dtype=torch.float64) * 2 + 5).requires_grad_(True)
    lab = torch.randint(0, 3, (2, 4, 5), generator=torch.Generator().manual_seed(0))
    lab[0, 0] = IGNORE
    assert torch.autograd.gradcheck(lambda f: feature_spread(f, lab, 3), (x,))
    dead = feat.clone()
    dead[:, 1] = 0  # a channel that is zero everywhere, common after ReLU
    dead.requires_grad_(True)
    feature_spread(dead, labels, 2).backward()
    assert torch.isfinite(dead.grad).all() and dead.grad[:, 0].abs().sum() > 0


def test_idd_image_without_pairs_counts_as_zero_in_the_batch_mean() -> None:
    fs, ft, labels = make_case(11, 2, 4, 4, 4, cs=3, ct=3)
    labels[1] = 1  # image 1: a single class
    both = idd_loss(fs, ft, labels, 4)
    first = idd_loss(fs[:1], ft[:1], labels[:1], 4)
    torch.testing.assert_close(both, first / 2)


def test_idd_gradients_reach_student_and_adapter_never_teacher() -> None:
    fs, ft, labels = make_case(7, 2, 5, 4, 4, cs=3, ct=6)
    fs.requires_grad_(True)
    ft.requires_grad_(True)
    loss = IDDLoss(3, 6, 5, scale="adapter")
    value = loss(fs, ft, labels)
    assert value.requires_grad and value.item() > 0
    value.backward()
    assert ft.grad is None  # the teacher feature is detached inside the loss
    assert fs.grad is not None and fs.grad.abs().sum() > 0 and torch.isfinite(fs.grad).all()
    for p in loss.adapter.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_idd_with_identical_centres_has_finite_gradients() -> None:
    # Two present classes with the same centre: distance 0, where sqrt has no derivative.
    fs = torch.ones(1, 3, 2, 2, requires_grad=True)
    ft = torch.randn(1, 3, 2, 2)
    labels = torch.tensor([[[0, 0], [1, 1]]])
    value = idd_loss(fs, ft, labels, 2)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(fs.grad).all()


def test_idd_runs_in_float32_under_autocast() -> None:
    fs, ft, labels = make_case(9, 2, 5, 4, 4, cs=3, ct=6)
    loss = IDDLoss(3, 6, 5, scale="adapter").eval()
    plain = loss(fs, ft, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = loss(fs.bfloat16(), ft.bfloat16(), labels)
    assert cast.dtype == torch.float32
    torch.testing.assert_close(cast, plain, rtol=2e-2, atol=1e-3)  # only the bf16 inputs differ


def test_idd_rejects_bad_options() -> None:
    with pytest.raises(SegkdError, match="idd_scale"):
        IDDLoss(3, 6, 5, scale="none")
    with pytest.raises(SegkdError, match="idd_scale"):
        IDDLoss(3, 3, 5, scale="whiten")
    with pytest.raises(SegkdError, match="idd_distance"):
        IDDLoss(3, 3, 5, distance="manhattan")
    assert IDDLoss(3, 6, 5, scale="normalize").adapter is None


def test_resize_labels_is_nearest() -> None:
    labels = torch.tensor([[[1, 1, 3, 3], [1, 1, 3, 3], [255, 255, 3, 3], [255, 255, 3, 3]]])
    out = resize_labels(labels, (2, 2))
    assert out.tolist() == [[[1, 3], [255, 3]]]
    assert set(resize_labels(labels, (3, 3)).unique().tolist()) <= {1, 3, 255}


# ---------------------------------------------------------------- segmentation, KD, CWD


def test_segmentation_loss_is_ce_on_upsampled_logits_and_survives_all_ignore() -> None:
    g = torch.Generator().manual_seed(0)
    logits, aux = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    labels = torch.randint(0, 4, (2, 12, 12), generator=g)
    labels[:, :4] = IGNORE
    out = SegmentationLoss(aux_weight=0.4)({"logits": logits, "aux": aux}, labels)
    up = F.interpolate(logits, size=(12, 12), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out["ce"], F.cross_entropy(up, labels, ignore_index=IGNORE))
    torch.testing.assert_close(out["loss"], out["ce"] + 0.4 * out["aux"])
    empty = SegmentationLoss()({"logits": logits, "aux": aux}, torch.full_like(labels, IGNORE))
    assert float(empty["loss"]) == 0.0
    assert "aux" not in SegmentationLoss(aux_weight=0)({"logits": logits, "aux": aux}, labels)


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_kd_is_zero_for_equal_logits_and_matches_the_formula(t) -> None:
    g = torch.Generator().manual_seed(1)
    s, te = torch.randn(2, 5, 4, 4, generator=g), torch.randn(2, 5, 4, 4, generator=g)
    labels = torch.randint(0, 5, (2, 32, 32), generator=g)
    assert float(pixel_kd_loss(te.clone(), te, labels, t)) == pytest.approx(0.0, abs=1e-7)
    want = F.kl_div(
        F.log_softmax(s / t, 1), F.log_softmax(te / t, 1), log_target=True, reduction="none"
    )
    want = want.sum(1).mean() * t * t
    torch.testing.assert_close(pixel_kd_loss(s, te, labels, t), want)


def test_kd_ignores_ignore_pixels() -> None:
    g = torch.Generator().manual_seed(2)
    s, te = torch.randn(1, 3, 4, 4, generator=g), torch.randn(1, 3, 4, 4, generator=g)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[:, :2] = IGNORE
    base = pixel_kd_loss(s, te, labels)
    s2 = s.clone()
    s2[:, :, :2] += 50 * torch.randn(1, 3, 2, 4, generator=g)  # only ignored pixels change
    torch.testing.assert_close(pixel_kd_loss(s2, te, labels), base)
    per_pixel = (F.softmax(te, 1) * (F.log_softmax(te, 1) - F.log_softmax(s, 1))).sum(1)
    torch.testing.assert_close(base, per_pixel[:, 2:].mean())
    assert float(pixel_kd_loss(s, te, torch.full_like(labels, IGNORE))) == 0.0


def test_cwd_is_zero_for_equal_logits_and_matches_the_formula() -> None:
    g = torch.Generator().manual_seed(3)
    s, te = torch.randn(2, 4, 5, 6, generator=g), torch.randn(2, 4, 5, 6, generator=g)
    assert float(channel_wise_loss(te.clone(), te)) == pytest.approx(0.0, abs=1e-7)
    t = 4.0
    pt = F.softmax(te.flatten(2) / t, -1)
    want = (pt * (pt.log() - F.log_softmax(s.flatten(2) / t, -1))).sum(-1).mean() * t * t
    got = ChannelWiseLoss(t)(s, te)
    torch.testing.assert_close(got, want)
    assert float(got) > 0


# ---------------------------------------------------------------- PID


def test_position_targets_are_ramps() -> None:
    g = position_targets(4, 5, ("x", "y", "gauss"))
    assert g.shape == (3, 4, 5)
    x, y, gauss = g
    torch.testing.assert_close(x[0], torch.linspace(0, 1, 5))
    assert (x == x[0]).all()  # constant down each column
    torch.testing.assert_close(y[:, 0], torch.linspace(0, 1, 4))
    assert (y == y[:, :1]).all()  # constant along each row
    assert gauss.max() <= 1 and gauss[0, 0] < gauss[1:3, 1:4].min()
    with pytest.raises(SegkdError, match="kind"):
        position_targets(4, 5, ("z",))


class NoiseFeatures(nn.Module):
    """A stand-in network whose `feat` is fresh noise, optionally with coordinate channels."""

    def __init__(self, with_position: bool, channels: int = 8, size: int = 24) -> None:
        super().__init__()
        self.with_position = with_position
        self.channels, self.size = channels, size
        self.gen = torch.Generator().manual_seed(0)

    def extract(self, x: torch.Tensor, with_aux: bool = True) -> dict[str, torch.Tensor]:
        b, n = x.shape[0], self.size
        feat = torch.randn(b, self.channels, n, n, generator=self.gen)
        if self.with_position:
            coords = position_targets(n, n, ("x", "y")).expand(b, -1, -1, -1)
            feat[:, :2] = 0.3 * feat[:, :2] + 4 * coords
        return {"logits": feat[:, :2], "feat": feat}


@pytest.mark.parametrize(("with_position", "good"), [(True, True), (False, False)])
def test_readout_finds_position_only_where_it_is_encoded(with_position, good) -> None:
    torch.manual_seed(0)
    net = NoiseFeatures(with_position)
    batches = [(torch.zeros(4, 3, 8, 8), None)] * 3
    readout, report = fit_position_readout(net, batches, iters=100, lr=1e-2, hidden=16)
    assert set(report) >= {"mse", "corr", "corr_x", "corr_y"}
    if good:
        assert report["corr"] > 0.9
    else:
        assert report["corr"] < 0.6  # only what zero padding leaks at the borders (~0.4)
    assert not any(p.requires_grad for p in readout.parameters())


def test_position_report_of_the_exact_targets() -> None:
    readout = PositionReadout(2, 2, hidden=4)
    feat = position_targets(6, 6, ("x", "y"))[None]
    with torch.no_grad():  # make the readout the identity on a 2-channel input
        for conv in (readout.body[0], readout.body[2]):
            conv.weight.zero_()
            conv.bias.zero_()
        readout.body[0].weight[0, 0, 1, 1] = 1
        readout.body[0].weight[1, 1, 1, 1] = 1
        readout.body[2].weight[0, 0, 1, 1] = 1
        readout.body[2].weight[1, 1, 1, 1] = 1
    report = position_report(readout, feat)
    assert report["mse"] == pytest.approx(0.0, abs=1e-10)
    assert report["corr"] == pytest.approx(1.0)


def test_readout_checkpoint_round_trip(tmp_path) -> None:
    readout = PositionReadout(5, 3, hidden=8, kinds=("x", "y", "gauss"))
    path = tmp_path / "readout.pt"
    torch.save(readout.to_checkpoint(), path)
    again = PositionReadout.from_checkpoint(torch.load(path, weights_only=True))
    x = torch.randn(1, 5, 4, 4)
    torch.testing.assert_close(again(x), readout(x))
    assert again.kinds == ("x", "y", "gauss")
    with pytest.raises(SegkdError, match="readout"):
        PositionReadout.from_checkpoint({"in_channels": 5})


def test_pid_is_zero_for_equal_features_and_only_the_student_side_trains() -> None:
    readout = PositionReadout(6, 2, hidden=8)
    ft = torch.randn(2, 6, 5, 5, requires_grad=True)
    same = PIDLoss(readout, 6, 6)
    assert same.adapter is None and list(same.parameters()) == []
    assert "readout" not in str(same.state_dict().keys())
    assert float(same(ft.detach().clone(), ft)) == pytest.approx(0.0, abs=1e-10)

    fs = torch.randn(2, 3, 5, 5, requires_grad=True)
    pid = PIDLoss(readout, 3, 6)  # widths differ and no IDD adapter: it owns one
    value = pid(fs, ft)
    value.backward()
    assert value.item() > 0 and ft.grad is None
    assert fs.grad is not None and fs.grad.abs().sum() > 0
    assert all(p.grad is not None for p in pid.adapter.parameters())
    assert all(p.grad is None for p in readout.parameters())


def test_pid_shares_the_idd_adapter_and_student_readout_mode_trains() -> None:
    readout = PositionReadout(6, 2, hidden=8)
    idd = IDDLoss(3, 6, 4)
    pid = PIDLoss(readout, 3, 6, adapter=idd.adapter)
    assert pid.adapter is idd.adapter
    own = PIDLoss(readout, 3, 6, mode="student_readout")
    assert own.adapter is None and own.student_readout is not None
    assert own.student_readout.in_channels == 3
    fs, ft = torch.randn(2, 3, 5, 5, requires_grad=True), torch.randn(2, 6, 5, 5)
    own(fs, ft).backward()
    assert all(p.grad is not None for p in own.student_readout.parameters())
    with pytest.raises(SegkdError, match="pid_mode"):
        PIDLoss(readout, 3, 6, mode="both")
    with pytest.raises(SegkdError, match="refit"):
        PIDLoss(readout, 3, 7)
