"""One command that runs and measures every CUDA path segkd has (`make gpu-check`).

Sections, each in its own process so that a CUDA fault, an out-of-memory kill or a hang
costs that section only (its one-line reason goes into the report) and the rest still run:
  env        GPU, driver, CUDA, torch, onnx, onnxruntime + providers, TensorRT, modules
  distill    pspnet_r101 -> pspnet_r18 (+ registered real-time students), AMP fp16/bf16
  torchrun   `torchrun --nproc-per-node 1`: segkd distill + NCCL all_reduce and DDP
  inference  torch eager fp32 / fp16 / fp16 + CUDA graph at two sizes
  export     ONNX export + parity, ONNX Runtime CUDA provider, TensorRT engines
A global time budget (--budget-s) ends the check cleanly: sections not started by then
are recorded as skipped. Writes OUT/gpu_check.json and OUT/gpu_check.md.

    python benchmarks/gpu_check.py --device cuda --out runs/gpu_check      # about 3-5 min
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gc      # the test's run

Exit status 0 when no item failed, 1 otherwise (a goal not met is not a failure).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(HERE.parents[1]))
    sys.path.insert(0, str(HERE.parent))

from gpu_check_plan import Plan, Skipped, first_line, make_plan, run_group  # noqa: E402

from core.atomic_io import write_json_atomic  # noqa: E402

SECTIONS = ("env", "distill", "torchrun", "inference", "export")
MIN_SECTION_S = 5.0  # a section is not started with less than this left of the budget
GRACE_S = 20.0  # past the deadline before a section's process is killed
FAILED = ("FAILED",)
STATE_DIRS = ("sections", "logs", "students", "torchrun", "export")


def section_function(name: str) -> Any:
    if name == "env":
        from gpu_check_env import section_env as fn
    elif name == "distill":
        from gpu_check_distill import section_distill as fn
    elif name == "torchrun":
        from gpu_check_torchrun import section_torchrun as fn
    elif name == "inference":
        from gpu_check_infer import section_inference as fn
    else:
        from gpu_check_export import section_export as fn
    return fn


def run_section_here(name: str, plan: Plan, out: Path, deadline: float) -> dict[str, Any]:
    """One section in this process: {"status", "reason", "seconds", "result"}."""
    t0 = time.perf_counter()
    try:
        result = section_function(name)(plan, out, deadline)
        failed = [r for r in result.get("rows", []) if r[1] in FAILED]
        status, reason = ("failed", f"{len(failed)} item(s) failed") if failed else ("ok", None)
    except Skipped as e:
        result, status, reason = {}, "skipped", str(e)
    except Exception as e:  # the section's one-line reason; the other sections still run
        result, status, reason = {}, "failed", first_line(e)
    return {
        "status": status,
        "reason": reason,
        "seconds": round(time.perf_counter() - t0, 1),
        "result": result,
    }


def section_command(name: str, args: argparse.Namespace, deadline: float) -> list[str]:
    cmd = [sys.executable, str(HERE), "--section", name, "--device", args.device]
    cmd += ["--out", str(args.out), "--deadline", f"{deadline:.3f}"]
    return cmd + (["--quick"] if args.quick else [])


def run_section_process(name: str, args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    """A section in a child process, killed GRACE_S after the deadline."""
    out: Path = args.out
    result_file = out / "sections" / f"{name}.json"
    result_file.unlink(missing_ok=True)
    log = out / "logs" / f"{name}.log"
    t0 = time.perf_counter()
    with log.open("w") as f:
        code = run_group(
            section_command(name, args, deadline),
            timeout=max(1.0, deadline - time.time() + GRACE_S),
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    if result_file.is_file():
        return json.loads(result_file.read_text())
    seconds = round(time.perf_counter() - t0, 1)
    if code is None:
        why = f"killed {GRACE_S:g} s past its time limit, after {seconds} s"
    else:
        lines = log.read_text(errors="replace").strip().splitlines()
        why = f"process exited with code {code}: {(lines or ['no output'])[-1][:200]}"
    return {"status": "failed", "reason": why, "seconds": seconds, "result": {}}


def cell(text: Any) -> str:
    """A markdown table cell: one line, and a '|' in a figure (max |Δlogit|) escaped."""
    return str(text if text is not None else "").replace("\n", " ").replace("|", "\\|")


def markdown(report: dict[str, Any]) -> str:
    env = report["sections"].get("env", {}).get("result", {})
    gpu = env.get("gpu", {}).get("name", "no GPU")
    lines = [
        "# segkd GPU check",
        "",
        f"{report['started']}, device {report['plan']['device']}"
        f"{' (quick)' if report['plan']['quick'] else ''}, {gpu}; CPU: {report['cpu']}; "
        f"commit {env.get('segkd_commit') or 'unknown'}; {report['seconds']} s in all",
        "",
        "| section | item | status | figures |",
        "| --- | --- | --- | --- |",
    ]
    for name, sec in report["sections"].items():
        rows = sec.get("result", {}).get("rows", [])
        if sec["status"] != "ok" or not rows:
            lines.append(f"| {name} | (section) | {sec['status']} | {cell(sec.get('reason'))} |")
        for item, status, figures in rows:
            lines.append(f"| {name} | {cell(item)} | {status} | {cell(figures)} |")
    return "\n".join(lines) + "\n"


def run_all(args: argparse.Namespace) -> int:
    from runtime.machine import describe_cpu

    plan = make_plan(args.device, args.quick, args.budget_s)
    args.budget_s = plan.budget_s
    out: Path = args.out
    for sub in STATE_DIRS:  # an earlier check's students or results must not be reused
        shutil.rmtree(out / sub, ignore_errors=True)
    for sub in ("sections", "logs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    started = time.time()
    deadline = started + plan.budget_s
    report: dict[str, Any] = {
        "tool": "benchmarks/gpu_check.py",
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "plan": plan.to_dict(),
        "cpu": describe_cpu(),
        "sections": {},
    }
    for name in args.sections:
        left = deadline - time.time()
        if left < MIN_SECTION_S:
            sec = {
                "status": "skipped",
                "reason": f"time budget of {plan.budget_s:g} s spent before this section",
                "seconds": 0.0,
                "result": {},
            }
        else:
            cap = plan.section_caps_s.get(name)
            env = report["sections"].get("env", {}).get("result", {})
            if name == "export" and env.get("tensorrt", {}).get("available"):
                cap = None  # engine builds take minutes: the export may use what is left
            until = min(deadline, time.time() + cap) if cap else deadline
            print(f"[gpu-check] {name} ({until - time.time():.0f} s for it)", flush=True)
            sec = run_section_process(name, args, until)
        report["sections"][name] = sec
        print(f"[gpu-check] {name}: {sec['status']} ({sec['seconds']} s)"
              f"{': ' + sec['reason'] if sec.get('reason') else ''}", flush=True)  # fmt: skip
    report["seconds"] = round(time.time() - started, 1)
    report["failures"] = [
        f"{n}: {s['reason']}" for n, s in report["sections"].items() if s["status"] == "failed"
    ]
    write_json_atomic(report, out / "gpu_check.json")
    text = markdown(report)
    (out / "gpu_check.md").write_text(text)
    print(text)
    print(f"[gpu-check] wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return 1 if report["failures"] else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes: the CPU test's run")
    p.add_argument("--out", type=Path, default=Path("runs/gpu_check"))
    p.add_argument("--budget-s", type=float, default=None, help="[450 GPU, 300 quick]")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma list, in order")
    p.add_argument("--section", help=argparse.SUPPRESS)  # internal: one section, this process
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    p.add_argument("--torchrun-worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in args.sections + ([args.section] if args.section else []) if s not in SECTIONS]
    if bad:
        p.error(f"--sections: unknown {bad[0]!r}; choose from {', '.join(SECTIONS)}")
    if args.budget_s is not None and not args.budget_s > 0:
        p.error("--budget-s must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OPENCV_LOG_LEVEL", "FATAL")
    if args.torchrun_worker is not None:
        from gpu_check_torchrun import worker

        return worker(make_plan(args.device, args.quick), args.torchrun_worker)
    if args.section is not None:
        plan = make_plan(args.device, args.quick)
        deadline = args.deadline or time.time() + plan.budget_s
        sec = run_section_here(args.section, plan, args.out, deadline)
        write_json_atomic(sec, args.out / "sections" / f"{args.section}.json")
        return 0
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
