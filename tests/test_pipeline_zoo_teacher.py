"""`segkd pipeline` with a model-zoo teacher (an mmsegmentation file): every step that
touches the teacher reads it as `segkd distill --teacher` and `segkd eval` do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import SegkdError
from distill.data.synthetic import SYNTHETIC
from pipeline.config import load_config
from pipeline.run import run_pipeline
from pipeline.steps import sha256_file
from tests.distill.zoo.files import save_mmseg_pspnet_r18
from tests.test_pipeline import TINY

ROOT = Path(__file__).resolve().parents[1]
DATA = next(o.split("=", 1)[1] for o in TINY if o.startswith("data="))
# One seed and the fp32 export only: the teacher is what this module is about.
ZOO_TINY = [*TINY, "student_seeds=[0]", "export.precisions=[fp32]"]


def _segkd(*args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "cli.py", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def zoo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mmseg PSPNet-R18-d8 naming the synthetic set's 12 classes (scored at mmseg's 512x512)."""
    folder = tmp_path_factory.mktemp("zoo")
    return save_mmseg_pspnet_r18(folder / "pspnet_r18-d8_synthetic.pth", SYNTHETIC.names, 23)


@pytest.fixture(scope="module")
def finished(zoo_file: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pipeline-zoo")
    cfg = load_config(None, [*ZOO_TINY, f"teacher.checkpoint=mmseg:{zoo_file}"])
    return out, run_pipeline(cfg, out, log=lambda _m: None)


@pytest.mark.slow
def test_a_zoo_teacher_runs_the_whole_pipeline(
    finished: tuple[Path, dict], zoo_file: Path, tmp_path: Path
) -> None:
    out, _ = finished
    assert not (out / "teacher").exists()  # given, not trained
    saved = json.loads((out / "report.json").read_text())
    teacher = saved["teacher"]
    assert teacher["source"] == "mmseg" and teacher["arch"] == "mmseg_pspnet_r18"
    assert teacher["checkpoint"] == f"mmseg:{zoo_file}" and teacher["trained_here"] is False
    assert teacher["input_size"] == [512, 512]  # the zoo's own input, not the student's
    # Params: every learnt tensor of the file (aux head included, as for segkd's teachers).
    import torch

    state = torch.load(zoo_file, weights_only=True)["state_dict"]
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    learnt = sum(t.numel() for k, t in state.items() if not k.endswith(buffers))
    assert teacher["params_m"] == pytest.approx(learnt / 1e6, abs=1e-9)
    assert teacher["gmacs"] > saved["student"]["gmacs"] > 0  # at 512x512 vs 64x128
    assert "mmseg_pspnet_r18 (given)" in saved["title"]
    assert "mmseg_pspnet_r18" in (out / "report.md").read_text()
    assert len(saved["examples"]) == 2 and (out / "figures" / "examples.png").is_file()

    # The report's teacher mIoU is what `segkd eval` gives on the same images and convention.
    e = tmp_path / "e.json"
    r = _segkd("eval", f"mmseg:{zoo_file}", "--data", DATA, "--max-images", "4",
               "--backend", "torch", "--device", "cpu", "--convention", "labels", "--json", e)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(e.read_text())["miou"] == pytest.approx(teacher["val_miou"], abs=1e-12)

    # The distilled student records the zoo file it learnt from.
    from distill.checkpoint import load_checkpoint

    info = load_checkpoint(out / "student" / "best.pt")["distillation"]["teacher"]
    assert info["source"] == "mmseg" and info["sha256"] == sha256_file(zoo_file)


@pytest.mark.slow
def test_a_changed_zoo_file_reruns_distillation_and_its_eval(
    finished: tuple[Path, dict], zoo_file: Path
) -> None:
    """The steps' input is the file the SPEC names (mmseg:FILE itself is no file)."""
    out, _ = finished
    cfg = load_config(None, [*ZOO_TINY, f"teacher.checkpoint=mmseg:{zoo_file}"])
    again = run_pipeline(cfg, out, log=lambda _m: None)
    assert not any(s["ran"] for s in again["steps"]), again["steps"]

    save_mmseg_pspnet_r18(zoo_file, SYNTHETIC.names, 29)  # other weights, same layout
    ran = {s["step"]: s["ran"] for s in run_pipeline(cfg, out, log=lambda _m: None)["steps"]}
    assert ran["distill"] and ran["eval-teacher"] and not ran["baseline"], ran
    info = json.loads((out / "report.json").read_text())
    assert info["teacher"]["checkpoint"] == f"mmseg:{zoo_file}"


def _error_before_training(cfg_teacher: str, out: Path) -> str:
    cfg = load_config(None, [*ZOO_TINY, f"teacher.checkpoint={cfg_teacher}"])
    with pytest.raises(SegkdError) as e:
        run_pipeline(cfg, out, log=lambda _m: None)
    assert not (out / "baseline").exists() and not (out / "student").exists()
    text = str(e.value)
    assert "\n" not in text and text.startswith("teacher.checkpoint")
    return text


def test_a_missing_zoo_file_fails_before_any_step(tmp_path: Path) -> None:
    missing = tmp_path / "pspnet_r101-d8_missing.pth"
    text = _error_before_training(f"mmseg:{missing}", tmp_path / "run")
    assert "file not found" in text and str(missing) in text


def test_a_forced_wrong_source_fails_before_any_step(zoo_file: Path, tmp_path: Path) -> None:
    text = _error_before_training(f"cirkd:{zoo_file}", tmp_path / "run")
    assert str(zoo_file) in text and "forced as cirkd" in text


def test_cli_names_the_teacher_option_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "deeplabv3_resnet50_coco.pth"
    r = _segkd("pipeline", "--teacher", f"torchvision:deeplabv3_resnet50:{missing}",
               "--out", tmp_path / "run", *(a for o in ZOO_TINY for a in ("--set", o)))  # fmt: skip
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1, r.stderr[-2000:]
    assert "teacher.checkpoint" in errors[0] and str(missing) in errors[0]
    assert not (tmp_path / "run" / "baseline").exists()


def test_a_plain_zoo_path_is_detected_and_foreign_classes_are_refused(tmp_path: Path) -> None:
    """No prefix: the source comes from the keys, as for `segkd distill --teacher FILE`; a
    teacher whose classes do not cover the dataset's fails before any step too."""
    from pipeline.run import check_given_teacher

    plain = save_mmseg_pspnet_r18(tmp_path / "pspnet_r18-d8.pth", SYNTHETIC.names, 31)
    assert check_given_teacher(str(plain), DATA) == str(plain)
    other = save_mmseg_pspnet_r18(tmp_path / "pspnet_r18-d8_abc.pth", ("a", "b", "c"), 31)
    text = _error_before_training(str(other), tmp_path / "run")
    assert str(other) in text and "do not cover" in text


def test_a_read_only_teacher_folder_fails_before_any_step_when_pid_needs_its_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PID's readout is cached beside the teacher (<file>.readout.pt): a folder that cannot
    take it fails now, not in the distill step after the baseline trained. (os.access is
    patched: these tests may run as root, for whom every folder is writable.)"""
    import pipeline.run as run

    folder = tmp_path / "models"
    folder.mkdir()
    teacher = save_mmseg_pspnet_r18(folder / "pspnet_r18-d8_synthetic.pth", SYNTHETIC.names, 37)
    real = os.access
    monkeypatch.setattr(
        run.os, "access", lambda p, mode: False if Path(p) == folder else real(p, mode)
    )
    text = _error_before_training(f"mmseg:{teacher}", tmp_path / "run")
    assert "not writable" in text and str(folder) in text
    assert "pspnet_r18-d8_synthetic.readout.pt" in text
    # Without pid nothing is cached there, and the folder's mode does not matter.
    assert run.check_given_teacher(f"mmseg:{teacher}", DATA, pid=False)
