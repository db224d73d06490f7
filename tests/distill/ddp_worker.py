"""One rank of a 2-process gloo run, started by tests/distill/test_ddp_ranks.py without
torchrun (no agent kills the survivors: a rank that is not told about a failure hangs).

python -m tests.distill.ddp_worker SCENARIO OUT
  adapters: distil a pspnet_r18 student from a wider deeplabv3_r18 teacher (IDD adapter and
            PID student readout trainable) and dump this rank's objective state to
            OUT/rank<R>.pt
  nan:      the loss turns NaN at iteration 2 on rank 1 only
A SegkdError ends the rank as in `segkd`: one `error: <message>` line, exit 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from distill.distillation import DistillConfig, DistillObjective
from distill.losses.pid import PositionReadout
from distill.models import build_model
from distill.training import TrainConfig, train
from distill.training.trainer import SupervisedObjective
from runtime.errors import SegkdError

DATA = "synthetic:size=64x128,train=16,val=4"


def config(out: Path, iters: int) -> TrainConfig:
    return TrainConfig(
        data=DATA, model="pspnet_r18", out=str(out), iters=iters, batch_size=2,
        crop_size=(64, 64), lr=0.01, log_interval=1, num_workers=0, device="cpu",
        eval_interval=iters, scale_range=(1.0, 1.0), seed=0,
    )  # fmt: skip


class NaNOnRank1(SupervisedObjective):
    def forward(self, images, labels, student_out):  # type: ignore[no-untyped-def]
        terms = super().forward(images, labels, student_out)
        self.calls = getattr(self, "calls", 0) + 1
        if os.environ["RANK"] == "1" and self.calls == 3:
            terms["loss"] = terms["loss"] * float("nan")
        return terms


def run_adapters(out: Path) -> None:
    holder: dict[str, torch.nn.Module] = {}

    def factory(student, labels, device):  # type: ignore[no-untyped-def]
        # The teacher and its readout are files in real runs: the same on every rank, and
        # loading them leaves the global generator alone (the adapters draw from it).
        with torch.random.fork_rng():
            torch.manual_seed(123)
            teacher = build_model("deeplabv3_r18", labels.num_classes, aux=False).eval()
            readout = PositionReadout(teacher.feat_channels, 3)
        dcfg = DistillConfig(
            losses=("kd", "idd", "pid"), idd_scale="adapter", pid_mode="student_readout"
        )
        objective = DistillObjective(
            teacher, student.feat_channels, labels.num_classes, dcfg, readout
        )
        assert objective.idd.adapter is not None and objective.pid.student_readout is not None
        holder["objective"] = objective
        return objective

    train(config(out, iters=3), objective_factory=factory)
    state = {k: v.detach().clone() for k, v in holder["objective"].state_dict().items()}
    torch.save(state, out / f"rank{os.environ['RANK']}.pt")


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    try:
        if scenario == "adapters":
            run_adapters(out)
        elif scenario == "nan":
            train(config(out, iters=4), objective_factory=lambda m, lab, dev: NaNOnRank1(0.4, 255))
        else:
            raise SystemExit(f"unknown scenario {scenario}")
    except SegkdError as e:
        from cli import _fail

        _fail(str(e), 2)  # what `segkd` prints: one `error:` line, exit 2


if __name__ == "__main__":
    main()
