"""The trainer on tiny synthetic data: it learns, resumes, and stops cleanly on NaN."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.errors import SegkdError
from distill.checkpoint import load_checkpoint
from distill.training import TrainConfig, train
from distill.training.trainer import SupervisedObjective

DATA = "synthetic:size=64x128,train=24,val=4"


def _cfg(out: Path, **kw) -> TrainConfig:  # type: ignore[no-untyped-def]
    base = dict(
        data=DATA, model="pspnet_r18", out=str(out), iters=6, batch_size=2, crop_size=(64, 64),
        lr=0.01, log_interval=1, num_workers=0, seed=0, scale_range=(1.0, 1.0),
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_short_run_lowers_the_loss_and_writes_checkpoints(tmp_path: Path) -> None:
    torch.manual_seed(0)
    out = tmp_path / "run"
    summary = train(_cfg(out, iters=14, eval_interval=14, lr=0.02))
    losses = [r["loss"] for r in _log(out) if "loss" in r]
    assert len(losses) == 14
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    for name in ("best.pt", "last.pt", "resume.pt", "summary.json"):
        assert (out / name).is_file()
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["iteration"] == 14 and "train_state" not in ckpt  # student-only artifact
    assert 0.0 <= summary["best_miou"] <= 1.0


def test_resume_continues_from_the_saved_iteration(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(_cfg(out, iters=4, eval_interval=2))
    with pytest.raises(SegkdError, match="--resume"):
        train(_cfg(out, iters=6))  # refuses to overwrite a run silently
    train(_cfg(out, iters=6, eval_interval=2, resume=True))
    log = _log(out)
    starts = [r["iter"] for r in log if r.get("event") == "start"]
    assert starts == [0, 4]
    steps = [r["iter"] for r in log if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # nothing repeated, nothing skipped
    assert load_checkpoint(out / "resume.pt")["train_state"]["iteration"] == 6


class NaNAfter(SupervisedObjective):
    def __init__(self, calls: int) -> None:
        super().__init__(aux_weight=0.4, ignore_index=255)
        self.calls, self.left = calls, calls

    def forward(self, images, labels, student_out):  # type: ignore[no-untyped-def]
        terms = super().forward(images, labels, student_out)
        self.left -= 1
        if self.left < 0:
            terms["loss"] = terms["loss"] * float("nan")
        return terms


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(SegkdError, match=r"loss became nan at iteration 3 .*last\.pt is intact"):
        train(
            _cfg(out, iters=6, eval_interval=2), objective_factory=lambda m, lab, dev: NaNAfter(3)
        )
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["iteration"] == 2
    assert all(
        torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()
    )


def test_invalid_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SegkdError, match="--iters must be positive"):
        train(_cfg(tmp_path / "a", iters=-3))
    with pytest.raises(SegkdError, match="--batch-size must be at least 2"):
        train(_cfg(tmp_path / "b", batch_size=1))
    with pytest.raises(SegkdError, match="unknown dataset"):
        train(_cfg(tmp_path / "c", data="imagenet:/nowhere"))


def test_every_evaluation_that_can_pick_best_scores_the_same_images(tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = train(_cfg(out, iters=4, eval_interval=2, val_images=2))
    evals = [r for r in _log(out) if r.get("event") == "eval"]
    assert [e["iter"] for e in evals] == [2, 4]
    # Periodic and final evaluations: the same 2 images (same labelled pixel count) ...
    assert len({e["val_pixels"] for e in evals}) == 1
    assert {e["val_images"] for e in evals} == {2}
    # ... spread over the split, not its first files; the whole split only for the record.
    assert summary["selection"] == {
        "metric": "val_miou", "images": 2, "of": 4, "indices": [0, 2], "deploy_size": [64, 128],
    }  # fmt: skip
    assert evals[-1]["val_images_all"] == 4 and "val_images_all" not in evals[0]
    best = next(e for e in evals if e["iter"] == summary["best_iter"])
    assert summary["best_miou"] == best["val_miou"] == max(e["val_miou"] for e in evals)
    assert load_checkpoint(out / "best.pt")["metrics"]["val_miou"] == best["val_miou"]


def test_validation_also_scores_the_deploy_input_size(tmp_path: Path) -> None:
    # Native val images are 64x128; the export ships 32x64. The deploy figure must be what
    # the shipped checkpoint scores through the runtime (resize in, label map back out).
    from pipeline.artifacts import evaluate_on_dataset

    out = tmp_path / "run"
    summary = train(_cfg(out, iters=2, eval_interval=2, export_size=(32, 64)))
    final = summary["final"]
    assert final["val_images"] == 4 and summary["selection"]["deploy_size"] == [32, 64]
    shipped = evaluate_on_dataset(
        out / "last.pt", DATA, "val", backend="torch", device="cpu", convention="labels"
    )  # the deploy path: label map at the input size, resized back to the image
    assert shipped.num_samples == 4
    assert final["val_miou_deploy"] == pytest.approx(shipped.miou, abs=1e-9)
    assert final["val_pixel_acc_deploy"] == pytest.approx(shipped.metrics.pixel_acc, abs=1e-9)
    assert final["val_miou_deploy"] != final["val_miou"]  # a different figure, not a copy
    assert summary["best"]["val_miou_deploy"] == final["val_miou_deploy"]
