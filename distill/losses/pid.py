"""Position information distillation (PID), after Islam et al., "How much position
information do CNNs encode?" (ICLR 2020).

A small conv readout P learns to regress fixed position maps (horizontal / vertical ramps,
optionally a centre Gaussian) from a frozen network's features; how well it does (MSE,
Pearson correlation) is the measure of how much absolute position the features encode.

The readout's 3x3 convs use zero padding. Zero padding itself leaks absolute position
(the border is where the zeros are), and that is exactly how Islam et al. measured it:
a readout on features with no position content still gets a little signal near the
borders, which is why a pure-noise feature scores a low but non-zero correlation.

Distillation [ours, default "teacher_readout"]: freeze the teacher's readout P and train
the (adapted) student so that P(A(F_s)) matches P(F_t). Option "student_readout": a second,
trainable readout P_s on the raw student feature, L = MSE(P_s(F_s), P_t(F_t)).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import SegkdError
from core.schema.distill import PID_MODES
from distill.losses.idd import make_adapter

POSITION_KINDS = ("x", "y", "gauss")
GAUSS_SIGMA = 0.25  # of the normalised 0..1 image extent


def position_targets(
    h: int,
    w: int,
    kinds: Sequence[str] = ("x", "y"),
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """len(kinds) x h x w position maps: "x" 0..1 left->right, "y" 0..1 top->bottom,
    "gauss" a centred Gaussian (peak 1, sigma 0.25 of the extent)."""
    xs = torch.linspace(0.0, 1.0, w, device=device).view(1, w).expand(h, w)
    ys = torch.linspace(0.0, 1.0, h, device=device).view(h, 1).expand(h, w)
    maps = []
    for kind in kinds:
        if kind == "x":
            maps.append(xs)
        elif kind == "y":
            maps.append(ys)
        elif kind == "gauss":
            r2 = (xs - 0.5) ** 2 + (ys - 0.5) ** 2
            maps.append(torch.exp(-r2 / (2 * GAUSS_SIGMA**2)))
        else:
            raise SegkdError(
                f"position target: unknown kind {kind!r}; choose from {', '.join(POSITION_KINDS)}"
            )
    if not maps:
        raise SegkdError("position target: kinds is empty; give at least one of x, y, gauss")
    return torch.stack(maps).contiguous()


class PositionReadout(nn.Module):
    """3x3 conv (zero padding) -> ReLU -> 3x3 conv to one map per position target."""

    def __init__(
        self,
        in_channels: int,
        num_targets: int,
        hidden: int = 64,
        kinds: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        kinds = tuple(kinds) if kinds is not None else ("x", "y", "gauss")[:num_targets]
        if len(kinds) != num_targets:
            raise ValueError(f"{num_targets} targets but kinds {kinds}")
        self.in_channels = int(in_channels)
        self.num_targets = int(num_targets)
        self.hidden = int(hidden)
        self.kinds: tuple[str, ...] = kinds
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1, padding_mode="zeros"),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_targets, 3, padding=1, padding_mode="zeros"),
        )

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.body(feat)

    def targets_like(self, feat: torch.Tensor) -> torch.Tensor:
        """The position targets at `feat`'s spatial size and device (num_targets x h x w)."""
        return position_targets(feat.shape[-2], feat.shape[-1], self.kinds, feat.device)

    def to_checkpoint(self) -> dict[str, Any]:
        """Plain data + tensors, cached beside the teacher (loads with weights_only=True)."""
        return {
            "in_channels": self.in_channels,
            "num_targets": self.num_targets,
            "hidden": self.hidden,
            "kinds": list(self.kinds),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_checkpoint(cls, d: dict[str, Any]) -> PositionReadout:
        try:
            readout = cls(
                int(d["in_channels"]), int(d["num_targets"]), int(d["hidden"]), d["kinds"]
            )
            readout.load_state_dict(d["state_dict"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise SegkdError(
                f"position readout in checkpoint is incomplete or corrupt ({e})"
            ) from None
        return readout


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


def _pearson(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pearson correlation per target channel over all images and pixels (N x T x h x w)."""
    p = pred.transpose(0, 1).reshape(pred.shape[1], -1).double()
    t = target.transpose(0, 1).reshape(target.shape[1], -1).double()
    p = p - p.mean(dim=1, keepdim=True)
    t = t - t.mean(dim=1, keepdim=True)
    denom = (p.norm(dim=1) * t.norm(dim=1)).clamp_min(1e-12)
    return (p * t).sum(dim=1) / denom


@torch.no_grad()
def position_report(
    readout: PositionReadout, feats: torch.Tensor, targets: torch.Tensor | None = None
) -> dict[str, float]:
    """How much position a feature map holds, as read by `readout`.

    feats: B x C x h x w; targets: (T x h x w) or (B x T x h x w), default the readout's
    own kinds. Returns {"mse", "corr"} (corr: mean Pearson over target maps) plus
    "corr_<kind>" per map.
    """
    was_training = readout.training
    readout.eval()
    pred = readout(feats).float()
    readout.train(was_training)
    if targets is None:
        targets = readout.targets_like(feats)
    targets = targets.to(pred.device, pred.dtype)
    if targets.dim() == 3:
        targets = targets.unsqueeze(0).expand_as(pred)
    corr = _pearson(pred, targets)
    report = {"mse": float(F.mse_loss(pred, targets)), "corr": float(corr.mean())}
    for kind, c in zip(readout.kinds, corr.tolist(), strict=True):
        report[f"corr_{kind}"] = float(c)
    return report


def _cycle(batches: Iterable[Any]) -> Iterator[Any]:
    """Iterate `batches` again and again (a DataLoader or a list, not a one-shot generator)."""
    for epoch in itertools.count():
        n = 0
        for item in batches:
            n += 1
            yield item
        if n == 0:
            what = (
                "is empty" if epoch == 0 else "cannot be iterated twice (pass a list or DataLoader)"
            )
            raise SegkdError(f"position readout: the batch source {what}")


def _images(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def fit_position_readout(
    teacher: nn.Module,
    batches: Iterable[Any],
    iters: int = 300,
    lr: float = 1e-3,
    device: torch.device | str = "cpu",
    kinds: Sequence[str] = ("x", "y"),
    hidden: int = 64,
    report_batches: int = 4,
) -> tuple[PositionReadout, dict[str, float]]:
    """Stage 1 of PID: train a readout on the frozen network's `feat` to regress the targets.

    `teacher` is any module with `extract(x, with_aux=False)["feat"]` (a teacher, or a
    student when measuring how much position it encodes); it is used in eval mode and
    never changed. `batches` yields (images, labels) or images; it is cycled. The report
    ({"mse", "corr", ...}) is measured after training on the next `report_batches` batches.
    """
    if iters < 1:
        raise SegkdError(f"position readout: iters must be >= 1, got {iters}")
    was_training = teacher.training
    teacher.eval()
    stream = _cycle(batches)

    @torch.no_grad()
    def next_feat() -> torch.Tensor:
        images = _images(next(stream)).to(device)
        return teacher.extract(images, with_aux=False)["feat"].float()

    try:
        feat = next_feat()
        readout = PositionReadout(feat.shape[1], len(kinds), hidden, kinds).to(device)
        opt = torch.optim.Adam(readout.parameters(), lr=lr)
        # Cosine decay: a few hundred Adam steps converge without a tuned schedule.
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, iters) / iters))
        )
        readout.train()
        for i in range(iters):
            if i > 0:
                feat = next_feat()
            target = readout.targets_like(feat).unsqueeze(0).expand(feat.shape[0], -1, -1, -1)
            loss = F.mse_loss(readout(feat), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        feats = [next_feat() for _ in range(max(1, report_batches))]
    finally:
        teacher.train(was_training)
    freeze(readout)
    report = position_report(readout, torch.cat(feats))
    return readout, report


class PIDLoss(nn.Module):
    """L_pid between the student's and the teacher's position readouts.

    mode "teacher_readout" [default]: L = MSE(P(A(F_s)), P(F_t)), P frozen (the teacher's
    readout), A the shared IDD adapter if given, else an own 1x1 conv + BN when the widths
    differ, else identity. mode "student_readout": L = MSE(P_s(F_s), P(F_t)) with P_s a
    trainable readout on the raw student feature.

    The frozen teacher readout is not a registered submodule: it stays out of parameters()
    and state_dict() (it is cached with the teacher), but moves with .to()/.cuda().
    """

    def __init__(
        self,
        readout: PositionReadout,
        student_channels: int,
        teacher_channels: int,
        mode: str = "teacher_readout",
        adapter: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if mode not in PID_MODES:
            raise SegkdError(
                f"pid_mode: unknown value {mode!r}; choose one of {', '.join(PID_MODES)}"
            )
        if readout.in_channels != teacher_channels:
            raise SegkdError(
                f"position readout reads {readout.in_channels} channels but the teacher "
                f"feature has {teacher_channels}; refit it on this teacher"
            )
        self.mode = mode
        object.__setattr__(self, "_readout", (freeze(readout),))
        self.adapter: nn.Module | None = None
        self.student_readout: PositionReadout | None = None
        if mode == "teacher_readout":
            if adapter is not None:
                self.adapter = adapter  # shared with IDD: one module, registered in both
            elif student_channels != teacher_channels:
                self.adapter = make_adapter(student_channels, teacher_channels)
        else:
            self.student_readout = PositionReadout(
                student_channels, readout.num_targets, readout.hidden, readout.kinds
            )

    @property
    def readout(self) -> PositionReadout:
        return self._readout[0]

    def _apply(self, fn: Any, recurse: bool = True) -> PIDLoss:
        super()._apply(fn, recurse)
        self.readout._apply(fn)
        return self

    def adapt(self, student_feat: torch.Tensor) -> torch.Tensor:
        """The student feature the teacher readout reads (float32 through the adapter)."""
        if self.mode != "teacher_readout" or self.adapter is None:
            return student_feat
        with torch.autocast(device_type=student_feat.device.type, enabled=False):
            return self.adapter(student_feat.float())

    def forward(
        self, student_feat: torch.Tensor, teacher_feat: torch.Tensor, adapted: bool = False
    ) -> torch.Tensor:
        """`adapted=True`: `student_feat` already went through the (shared) adapter, so the
        objective runs the adapter, and updates its BN statistics, once per step."""
        readout = self.readout
        if readout.training:  # someone called .train() on it directly
            readout.eval()
        fs = student_feat if adapted else self.adapt(student_feat)
        with torch.autocast(device_type=student_feat.device.type, enabled=False):
            fs = fs.float()
            ft = teacher_feat.detach().float()
            if fs.shape[-2:] != ft.shape[-2:]:
                fs = F.interpolate(fs, size=ft.shape[-2:], mode="bilinear", align_corners=False)
            with torch.no_grad():
                target = readout(ft)
            # The frozen teacher readout passes gradients through to the student (and adapter).
            reader = readout if self.student_readout is None else self.student_readout
            pred = reader(fs)
            return F.mse_loss(pred, target)
