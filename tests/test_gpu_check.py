"""benchmarks/gpu_check.py: the CPU quick mode walks every section's code, so the GPU check
cannot rot between GPU visits; a failing section costs only itself; the budget skips cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def gpu_check(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rows(report: dict, section: str) -> dict[str, list[str]]:
    return {r[0]: r for r in report["sections"][section]["result"]["rows"]}


@pytest.mark.slow
def test_quick_cpu_run_covers_every_section(tmp_path: Path) -> None:
    out = tmp_path / "gc"
    # The budget is generous here: a loaded 2-core CI machine, not the 8-minute GPU target.
    r = gpu_check("--device", "cpu", "--quick", "--out", str(out), "--budget-s", "800")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert list(report["sections"]) == ["env", "distill", "torchrun", "inference", "export"]
    assert all(s["status"] == "ok" for s in report["sections"].values()), report["failures"]

    env = report["sections"]["env"]["result"]
    assert "CPUExecutionProvider" in env["onnxruntime_providers"]
    assert env["missing_modules"] == []

    distill = report["sections"]["distill"]["result"]["students"]["pspnet_r18"]
    for amp in ("fp16", "bf16"):
        run = distill["runs"][amp]
        assert run["losses_finite"] and run["images_per_s"] > 0
        assert 0 <= run["idd_pid_share"] < 1
    assert distill["runs"]["fp16"]["grad_scaler"] and not distill["runs"]["bf16"]["grad_scaler"]
    assert distill["checkpoint"]["ok"] and distill["checkpoint"]["keys_match_student"]
    step = report["sections"]["distill"]["result"]["step_before_after"]
    assert step["step_ms"]["before"] > 0 and step["step_ms"]["after"] > 0

    torchrun = report["sections"]["torchrun"]["result"]
    assert torchrun["summary"]["iters"] == 2 and torchrun["summary"]["val_pixels"] > 0
    assert torchrun["probe"]["backend"] == "gloo" and torchrun["probe"]["all_reduce_ok"]

    infer = report["sections"]["inference"]["result"]["sizes"]
    assert set(infer) == {"64x128", "128x256"}
    for size in infer.values():
        for mode in size["modes"].values():
            assert mode["p50_ms"] > 0 and mode["p99_ms"] >= mode["p50_ms"]
            # On the CPU fp16 and the graph fall back to fp32 eager: identical labels.
            assert mode["label_agreement_vs_fp32"] == 1.0 and not mode["cuda_graph_used"]

    export = report["sections"]["export"]["result"]["students"]["pspnet_r18"]
    parity = export["export"]["model.onnx"]["check"]
    assert parity["pixel_agreement"] >= 0.999
    assert export["ort_cuda"]["model.onnx"]["provider"] == "CPUExecutionProvider"
    assert "not installed" in export["tensorrt"]["skipped"]
    table = (out / "gpu_check.md").read_text()
    assert "| export | pspnet_r18: TensorRT engines | skipped |" in table


def test_a_failing_section_costs_only_itself(tmp_path: Path) -> None:
    """--device cuda on a machine without CUDA: env fails with one line, the next section
    still runs (and skips, saying why), the report is written and the exit status is 1."""
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the failure this test provokes does not happen")
    out = tmp_path / "gc"
    r = gpu_check("--device", "cuda", "--sections", "env,inference", "--out", str(out))
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    env, infer = report["sections"]["env"], report["sections"]["inference"]
    assert env["status"] == "failed" and "is_available() is False" in env["reason"]
    assert "\n" not in env["reason"]
    assert infer["status"] == "skipped" and infer["reason"] == "no CUDA GPU visible to torch"
    assert report["failures"] == [f"env: {env['reason']}"]


def test_time_budget_skips_the_remaining_sections(tmp_path: Path) -> None:
    out = tmp_path / "gc"
    r = gpu_check("--device", "cpu", "--quick", "--budget-s", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert [s["status"] for s in report["sections"].values()] == ["skipped"] * 5
    assert all("time budget of 1 s spent" in s["reason"] for s in report["sections"].values())
    assert "| distill | (section) | skipped |" in (out / "gpu_check.md").read_text()


def test_unknown_section_is_one_error_line(tmp_path: Path) -> None:
    r = gpu_check("--sections", "env,warp", "--out", str(tmp_path))
    assert r.returncode == 2
    assert "unknown 'warp'" in r.stderr and "Traceback" not in r.stderr


def test_step_before_after_runs_both_paths_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU check's before/after step (gpu_check_step.py) in its CPU quick plan: both
    variants train, the uint8 batch is a fifth of the float32+int64 one."""
    torch = pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from gpu_check_plan import BASE_STUDENT, NUM_CLASSES, make_plan
    from gpu_check_step import Variant, host_batches, step_before_after

    from distill.losses import PositionReadout
    from distill.models import build_model

    plan = make_plan("cpu", quick=True)
    cpu = torch.device("cpu")
    teacher = build_model(plan.teacher, NUM_CLASSES).eval()
    readout = PositionReadout(teacher.feat_channels, 2)
    result, rows = step_before_after(plan, teacher, readout, cpu)
    assert result["student"] == BASE_STUDENT and min(result["step_ms"].values()) > 0
    wire = result["batch_bytes_host_to_device"]
    assert wire["after"] * 5 == wire["before"]  # 3+1 bytes a pixel vs 12+8
    assert rows[0][1] == "ok"
    # The two variants see the same network input: the "after" path normalises on the
    # device exactly what the "before" path normalised on the host.
    batches = host_batches(plan, cpu)
    after_images, after_labels = Variant(True, teacher, readout, cpu).to_input(batches["after"])
    assert torch.equal(after_images, batches["before"][0])
    assert torch.equal(after_labels, batches["before"][1])
