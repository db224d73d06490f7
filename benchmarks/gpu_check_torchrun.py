"""Section 3 of the GPU check: `torchrun --nproc-per-node 1` over NCCL (gloo on the CPU).

The launched worker first runs `segkd distill` exactly as a user would (the CLI's own
command, in the worker process): a few AMP steps on synthetic data at the plan's size and
a validation pass. Then it joins a process group with the plan's backend itself and
checks an all_reduce and two DDP steps, because the trainer treats a world of one as
no process group at all, so the CLI run alone would not touch NCCL.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

from gpu_check_plan import NUM_CLASSES, Plan, Skipped, first_line, row, run_group

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_teacher(plan: Plan, path: Path) -> None:
    import torch

    from core.preprocess import PreprocessSpec
    from distill.checkpoint import atomic_torch_save, make_checkpoint
    from distill.data import build_dataset
    from distill.models import build_model

    torch.manual_seed(0)
    labels = build_dataset("synthetic", "val").labels  # distill refuses a teacher of other classes
    teacher = build_model(plan.torchrun_teacher, labels.num_classes)
    ckpt = make_checkpoint(
        model=teacher,
        arch=plan.torchrun_teacher,
        model_kwargs=teacher.model_kwargs,
        labels=labels,
        preprocess=PreprocessSpec(input_size=plan.train_size),
        config={"data": "synthetic"},
        role="teacher",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(ckpt, path)


def distill_args(plan: Plan, teacher: Path, run_dir: Path) -> list[str]:
    h, w = plan.train_size
    size = f"{h}x{w}"
    return [
        "distill",
        "--teacher", str(teacher),
        "--data", f"synthetic:size={size},train={4 * plan.batch},val=2",
        "--student", "pspnet_r18",
        "--iters", str(plan.torchrun_iters),
        "--eval-interval", str(plan.torchrun_iters),
        "--batch-size", str(plan.batch),
        "--crop-size", size,
        "--export-size", size,
        "--readout-iters", str(plan.readout_iters),
        "--num-workers", str(plan.torchrun_workers),
        "--device", plan.device,
        "--out", str(run_dir),
    ]  # fmt: skip


def nccl_probe(plan: Plan) -> dict[str, Any]:
    """all_reduce and two DDP steps in the process group torchrun describes."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from distill.models import build_model

    cuda = plan.device == "cuda"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend=plan.dist_backend)
    try:
        t = torch.ones(4, device=device)
        dist.all_reduce(t)
        model = build_model("pspnet_r18", NUM_CLASSES, aux=False).to(device).train()
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if cuda else None)
        opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
        h, w = plan.train_size
        x = torch.randn(2, 3, h // 2, w // 2, device=device)
        y = torch.randint(0, NUM_CLASSES, (2, h // 2, w // 2), device=device)
        losses = []
        for _ in range(2):
            out = ddp(x)["logits"]
            loss = F.cross_entropy(F.interpolate(out, size=y.shape[-2:], mode="bilinear"), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        dist.barrier()
        return {
            "backend": dist.get_backend(),
            "world_size": dist.get_world_size(),
            "all_reduce_ok": bool((t == dist.get_world_size()).all().item()),
            "ddp_losses": losses,
            "ddp_ok": all(map(lambda v: v == v and abs(v) != float("inf"), losses)),
        }
    finally:
        dist.destroy_process_group()


def worker(plan: Plan, workdir: Path) -> int:
    """What torchrun launches: the CLI distillation, then the NCCL probe; writes worker.json."""
    from cli import app

    result: dict[str, Any] = {}
    try:
        app(args=distill_args(plan, workdir / "teacher.pt", workdir / "run"), standalone_mode=False)
        result["distill"] = {"ok": True}
    except Exception as e:
        result["distill"] = {"ok": False, "error": first_line(e)}
    try:
        result["probe"] = nccl_probe(plan)
    except Exception as e:
        result["probe"] = {"error": first_line(e)}
    (workdir / "worker.json").write_text(json.dumps(result, indent=2))
    return 0


def section_torchrun(plan: Plan, out: Path, deadline: float) -> dict[str, Any]:
    import time

    import torch

    if plan.device == "cuda" and not torch.cuda.is_available():
        raise Skipped("no CUDA GPU visible to torch")
    if plan.device == "cuda" and not torch.distributed.is_nccl_available():
        raise Skipped("this torch build has no NCCL")
    workdir = out / "torchrun"
    shutil.rmtree(workdir, ignore_errors=True)  # the trainer refuses to start over a run
    workdir.mkdir(parents=True)
    write_teacher(plan, workdir / "teacher.pt")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        str(HERE.with_name("gpu_check.py")), "--torchrun-worker", str(workdir),
        "--device", plan.device, *(["--quick"] if plan.quick else []),
    ]  # fmt: skip
    log = workdir / "torchrun.log"
    with log.open("w") as f:
        code = run_group(
            cmd, max(10.0, deadline - time.time()), cwd=ROOT, env=env, stdout=f, stderr=f
        )
    if code is None:
        raise RuntimeError("torchrun did not finish within the section's time; killed")
    if not (workdir / "worker.json").is_file():
        lines = log.read_text(errors="replace").strip().splitlines() or ["no output"]
        raise RuntimeError(f"torchrun exited {code} without a result: {lines[-1][:200]}")
    worker_result = json.loads((workdir / "worker.json").read_text())
    result: dict[str, Any] = {"returncode": code, **worker_result}
    rows = []
    d = worker_result["distill"]
    summary_path = workdir / "run" / "summary.json"
    if d["ok"] and summary_path.is_file():
        s = json.loads(summary_path.read_text())
        result["summary"] = {
            k: s.get(k) for k in ("iters", "world_size", "device", "train_time_s", "best_miou")
        }
        result["summary"]["val_pixels"] = s.get("final", {}).get("val_pixels")
        done = s.get("iters") == plan.torchrun_iters and s.get("final", {}).get("val_pixels")
        rows.append(
            row(
                "torchrun segkd distill",
                "ok" if done else "FAILED",
                f"{s.get('iters')} steps + validation ({s['final'].get('val_pixels')} pixels) on "
                f"{s.get('device')}, world size {s.get('world_size')}, {s.get('train_time_s', 0):.1f} s",
            )
        )
    else:
        rows.append(row("torchrun segkd distill", "FAILED", d.get("error", "no summary.json")))
    p = worker_result["probe"]
    if "error" in p:
        rows.append(row(f"process group ({plan.dist_backend})", "FAILED", p["error"]))
    else:
        ok = p["all_reduce_ok"] and p["ddp_ok"]
        rows.append(
            row(
                f"process group ({p['backend']})",
                "ok" if ok else "FAILED",
                f"world {p['world_size']}: all_reduce {'ok' if p['all_reduce_ok'] else 'WRONG'}, "
                f"2 DDP steps, losses {', '.join(f'{v:.3f}' for v in p['ddp_losses'])}",
            )
        )
    result["rows"] = rows
    return result
