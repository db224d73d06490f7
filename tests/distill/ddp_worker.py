"""One rank of a 2-process gloo run, started by tests/distill/test_ddp_ranks.py without
torchrun (no agent kills the survivors: a rank that is not told about a failure hangs).

python -m tests.distill.ddp_worker SCENARIO OUT
  adapters: distil a pspnet_r18 student from a wider deeplabv3_r18 teacher (IDD adapter and
            PID student readout trainable) and dump this rank's objective state to
            OUT/rank<R>.pt
  nan:      the loss turns NaN at iteration 2 on rank 1 only
  crash:    rank 1 raises in its forward at iteration 2 while rank 0 sits in a collective
            inside its own forward (as in SyncBatchNorm, which is GPU-only in torch)
  syncs:    count host reads and collectives per training step into OUT/syncs<R>.json
A SegkdError ends the rank as in `segkd`: one `error: <message>` line, exit 2.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

import torch
import torch.distributed as dist

from core.errors import SegkdError
from distill.distillation import DistillConfig, DistillObjective
from distill.losses.pid import PositionReadout
from distill.models import build_model
from distill.training import TrainConfig, train
from distill.training.trainer import SupervisedObjective

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


class CrashOnRank1(SupervisedObjective):
    """Every forward holds a collective, like SyncBatchNorm's all_gather; rank 1 fails
    before its third one, so rank 0 waits in it."""

    def forward(self, images, labels, student_out):  # type: ignore[no-untyped-def]
        self.calls = getattr(self, "calls", 0) + 1
        if os.environ["RANK"] == "1" and self.calls == 3:
            raise SegkdError("bad batch: a broken image file")
        dist.all_reduce(torch.ones(1))
        return super().forward(images, labels, student_out)


HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__")
COLLECTIVES = ("all_reduce", "all_gather_object", "barrier", "broadcast", "all_gather")


def run_syncs(out: Path) -> None:
    """Per training iteration: host reads made by segkd's own code (torch's sampler reading
    its CPU permutation is not one) and every Python-level collective call."""
    import distill.training.trainer as trainer

    counts: dict[str, Counter] = defaultdict(Counter)
    current = ["prepare"]
    set_lr = trainer.set_learning_rate

    def marked(run, it):  # type: ignore[no-untyped-def]
        current[0] = str(it)  # set_learning_rate starts every iteration
        return set_lr(run, it)

    def counted(name: str, fn, only_ours: bool):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if not only_ours or caller.startswith("distill"):
                counts[current[0]][name] += 1
            return fn(*args, **kwargs)

        return wrapper

    trainer.set_learning_rate = marked
    for name in HOST_READS:
        setattr(torch.Tensor, name, counted(name, getattr(torch.Tensor, name), True))
    for name in COLLECTIVES:
        setattr(dist, name, counted(name, getattr(dist, name), False))
    cfg = config(out, iters=7)
    cfg.log_interval, cfg.eval_interval = 3, 7
    train(cfg)
    (out / f"syncs{os.environ['RANK']}.json").write_text(json.dumps(counts))


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
        elif scenario == "crash":
            cfg = config(out, iters=4)
            cfg.log_interval = 4  # the failure happens between two checks
            train(cfg, objective_factory=lambda m, lab, dev: CrashOnRank1(0.4, 255))
        elif scenario == "syncs":
            run_syncs(out)
        else:
            raise SystemExit(f"unknown scenario {scenario}")
    except SegkdError as e:
        from cli import _fail

        _fail(str(e), 2)  # what `segkd` prints: one `error:` line, exit 2


if __name__ == "__main__":
    main()
