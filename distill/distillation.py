"""The distillation objective: L = CE + 0.4 CE_aux + w_kd KD + w_idd IDD + w_pid PID + w_cwd CWD.

The objective owns the frozen teacher (and the frozen position readout) WITHOUT
registering them: they stay out of parameters() and state_dict(), so the trainer's
optimizer only sees what must train (IDD/PID adapters, a student-side readout) and the
resume file stays small. They still follow .to()/.cuda() of the objective.
A term whose weight is 0, or whose name is not in `losses`, is not built and not computed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from core.errors import SegkdError
from core.labels import IGNORE_INDEX
from core.schema.distill import DISTILL, DISTILL_LOSSES, IDD_DISTANCES, IDD_SCALES, PID_MODES
from distill.losses.cwd import ChannelWiseLoss
from distill.losses.idd import IDDLoss
from distill.losses.kd import PixelKDLoss
from distill.losses.pid import PIDLoss, PositionReadout, freeze, position_report
from distill.losses.segmentation import SegmentationLoss

_D = DISTILL.defaults()


@dataclass(frozen=True)
class DistillConfig:
    """Which distillation terms to use and their settings (METHOD.md; tags there)."""

    # Defaults and the reasons for them: core/schema/distill.py.
    losses: tuple[str, ...] = _D["losses"]
    w_kd: float = _D["w_kd"]
    kd_temperature: float = _D["kd_temperature"]
    w_idd: float = _D["w_idd"]
    idd_distance: str = _D["idd_distance"]
    idd_scale: str = _D["idd_scale"]
    w_pid: float = _D["w_pid"]
    pid_mode: str = _D["pid_mode"]
    w_cwd: float = _D["w_cwd"]
    cwd_temperature: float = _D["cwd_temperature"]
    aux_weight: float = _D["aux_weight"]
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        losses = self.losses
        if isinstance(losses, str):  # "kd,idd,pid" from a command line or YAML
            losses = tuple(s.strip() for s in losses.split(",") if s.strip())
        losses = tuple(str(s).lower() for s in losses)
        unknown = [s for s in losses if s not in DISTILL_LOSSES]
        if unknown:
            raise SegkdError(
                f"losses: unknown distillation loss {', '.join(map(repr, unknown))}; "
                f"valid names are {', '.join(DISTILL_LOSSES)}"
            )
        object.__setattr__(self, "losses", tuple(dict.fromkeys(losses)))
        # `not (x >= 0)` also refuses nan; inf is refused too: either trains to nan.
        for name in ("w_kd", "w_idd", "w_pid", "w_cwd", "aux_weight"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise SegkdError(f"{name}: weight must be >= 0, got {getattr(self, name)}")
        for name in ("kd_temperature", "cwd_temperature"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise SegkdError(f"{name}: temperature must be > 0, got {getattr(self, name)}")
        # Checked here, not when the loss is built: that comes after loading the teacher.
        for name, allowed in (
            ("idd_distance", IDD_DISTANCES),
            ("idd_scale", IDD_SCALES),
            ("pid_mode", PID_MODES),
        ):
            if getattr(self, name) not in allowed:
                raise SegkdError(
                    f"{name}: unknown value {getattr(self, name)!r}; choose one of {', '.join(allowed)}"
                )

    def require_a_term(self, where: str = "--losses") -> None:
        """A distillation run needs a term to distil with: `--losses ""` (or all weights 0)
        used to train plain cross-entropy and report it as distilled, "gain +0.00"."""
        if not any(self.active(t) for t in DISTILL_LOSSES):
            listed = ",".join(self.losses) or "none"
            raise SegkdError(
                f"{where}: no distillation term is active (listed: {listed}; a term needs a "
                f"weight > 0): name at least one of {', '.join(DISTILL_LOSSES)}, or train the "
                "student alone with `segkd train`"
            )

    def weight(self, term: str) -> float:
        return float(getattr(self, f"w_{term}"))

    def active(self, term: str) -> bool:
        """A term runs only if it is listed AND its weight is > 0."""
        return term in self.losses and self.weight(term) > 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["losses"] = list(self.losses)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise SegkdError(
                f"distillation config: unknown key(s) {', '.join(unknown)}; "
                f"valid keys are {', '.join(sorted(names))}"
            )
        d = dict(d)
        if isinstance(d.get("losses"), list):
            d["losses"] = tuple(d["losses"])
        return cls(**d)


class DistillObjective(nn.Module):
    """objective(images, labels, student_out) -> {"loss", "ce", ["aux"], [active terms]}.

    teacher: a Segmentor (`extract(x, with_aux)` -> {"logits", "feat", ...}, `feat_channels`),
    frozen here (eval, requires_grad False) and run once per step under no_grad.
    position_readout: the teacher's fitted PositionReadout; required for "pid", optional
    otherwise (then only used by `position_information` for logging).
    Entries are the unweighted terms; "loss" is the weighted total to backpropagate.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student_feat_channels: int,
        num_classes: int,
        config: DistillConfig | None = None,
        position_readout: PositionReadout | None = None,
        seg_loss: nn.Module | None = None,
    ) -> None:
        super().__init__()
        config = config if config is not None else DistillConfig()
        self.config = config
        teacher_channels = int(teacher.feat_channels)
        object.__setattr__(self, "_frozen", (freeze(teacher),))
        object.__setattr__(
            self, "_readout", (freeze(position_readout) if position_readout is not None else None,)
        )
        # The student's supervised loss: segkd's CE unless the run names another recipe.
        self.seg = (
            seg_loss
            if seg_loss is not None
            else SegmentationLoss(config.aux_weight, config.ignore_index)
        )
        self.kd = (
            PixelKDLoss(config.kd_temperature, config.ignore_index) if config.active("kd") else None
        )
        self.cwd = ChannelWiseLoss(config.cwd_temperature) if config.active("cwd") else None
        self.idd = (
            IDDLoss(
                student_feat_channels,
                teacher_channels,
                num_classes,
                distance=config.idd_distance,
                scale=config.idd_scale,
                ignore_index=config.ignore_index,
            )
            if config.active("idd")
            else None
        )
        self.pid: PIDLoss | None = None
        if config.active("pid"):
            if position_readout is None:
                raise SegkdError(
                    "losses: 'pid' needs the teacher's fitted position readout "
                    "(fit_position_readout on the teacher first, or drop pid)"
                )
            shared = self.idd.adapter if self.idd is not None else None
            self.pid = PIDLoss(
                position_readout,
                student_feat_channels,
                teacher_channels,
                mode=config.pid_mode,
                adapter=shared,
            )

    @property
    def teacher(self) -> nn.Module:
        return self._frozen[0]

    @property
    def position_readout(self) -> PositionReadout | None:
        return self._readout[0]

    @property
    def active_terms(self) -> tuple[str, ...]:
        return tuple(t for t in DISTILL_LOSSES if getattr(self, t) is not None)

    def _apply(self, fn: Any, recurse: bool = True) -> DistillObjective:
        super()._apply(fn, recurse)
        self.teacher._apply(fn)
        if self.position_readout is not None:
            self.position_readout._apply(fn)
        return self

    @torch.no_grad()
    def teacher_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One frozen teacher pass (never its aux head: no term uses it)."""
        teacher = self.teacher
        if teacher.training:  # someone called .train() on it directly
            teacher.eval()
        return teacher.extract(images, with_aux=False)

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, student_out: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        out = self.seg(student_out, labels)
        loss = out.pop("loss")
        terms = self.active_terms
        if not terms:
            return {"loss": loss, **out}
        t_out = self.teacher_outputs(images)
        s_feat = student_out.get("feat")
        if s_feat is None and (self.idd is not None or self.pid is not None):
            raise ValueError("student_out has no 'feat': call student.extract(x) for IDD/PID")
        if self.kd is not None:
            out["kd"] = self.kd(student_out["logits"], t_out["logits"], labels)
        if self.cwd is not None:
            out["cwd"] = self.cwd(student_out["logits"], t_out["logits"])
        # The shared adapter runs once per step, for IDD and PID alike.
        adapted = self.idd.adapt(s_feat) if self.idd is not None else None
        if self.idd is not None:
            out["idd"] = self.idd(adapted, t_out["feat"], labels, adapted=True)
        if self.pid is not None:
            shared = self.idd is not None and self.pid.adapter is not None
            shared = shared and self.pid.adapter is self.idd.adapter
            if shared:
                out["pid"] = self.pid(adapted, t_out["feat"], adapted=True)
            else:
                out["pid"] = self.pid(s_feat, t_out["feat"])
        for term in terms:
            loss = loss + self.config.weight(term) * out[term]
        return {"loss": loss, **out}

    @torch.no_grad()
    def position_information(
        self,
        images: torch.Tensor,
        student_feat: torch.Tensor | None = None,
        teacher_feat: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """For the distillation log: how much position the teacher's and the student's
        features hold, as read by the readouts PID uses.

        teacher_*: the teacher readout on F_t. student_*: the teacher readout on A(F_s)
        (mode teacher_readout), or the student readout on F_s (mode student_readout).
        Empty without a readout; no student entries if there is no way to read F_s.
        """
        readout = self.position_readout
        if readout is None:
            return {}
        if teacher_feat is None:
            teacher_feat = self.teacher_outputs(images)["feat"]
        report = {
            f"teacher_{k}": v for k, v in position_report(readout, teacher_feat.float()).items()
        }
        if student_feat is None:
            return report
        was_training = self.training
        self.eval()  # adapter BN in eval: logging must not move its running statistics
        try:
            s_readout, fs = readout, student_feat.float()
            if self.pid is not None and self.pid.student_readout is not None:
                s_readout = self.pid.student_readout
            elif self.pid is not None:
                fs = self.pid.adapt(fs)
            elif self.idd is not None:
                fs = self.idd.adapt(fs)
            if fs.shape[1] != s_readout.in_channels:
                return report
            if fs.shape[-2:] != teacher_feat.shape[-2:]:
                fs = nn.functional.interpolate(
                    fs, size=teacher_feat.shape[-2:], mode="bilinear", align_corners=False
                )
            student = position_report(s_readout, fs)
        finally:
            self.train(was_training)
        report.update({f"student_{k}": v for k, v in student.items()})
        return report


def position_information(
    readout: PositionReadout,
    feats: torch.Tensor | Iterable[torch.Tensor],
    adapter: nn.Module | None = None,
) -> dict[str, float]:
    """Position report ({"mse", "corr", "corr_<kind>"}) of feature map(s) read by `readout`,
    through `adapter` (in eval mode) first when given."""
    feats = feats if isinstance(feats, torch.Tensor) else torch.cat(list(feats))
    with torch.no_grad():
        if adapter is not None:
            was_training = adapter.training
            adapter.eval()
            feats = adapter(feats.float())
            adapter.train(was_training)
        return position_report(readout, feats.float())
