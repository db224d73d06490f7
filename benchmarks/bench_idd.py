"""Cost of inter-class distance distillation (and PID) in a distillation step.

(a) The vectorised IDD loss (one-hot bmm + cdist) against a per-image, per-class,
    per-pair Python loop computing the same value, at a Cityscapes-like size
    (19 classes, 1/8 of a 512x1024 input = 64x128 features, 128 -> 512 channels).
(b) The share of the IDD + PID terms (forward and backward, adapter and readout
    included) in a whole distillation step: frozen pspnet_r101 teacher forward,
    pspnet_r18 student forward/backward, KD + IDD + PID + CWD, optimizer step.

Run from the repository root:
    python benchmarks/bench_idd.py [--device cuda] [--step-size 512x1024] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from core.errors import SegkdError
from distill.distillation import DistillConfig, DistillObjective
from distill.losses import PositionReadout, idd_loss
from distill.losses.labels import resize_labels
from runtime.machine import cpu_info
from runtime.sizes import parse_size

IGNORE = 255


def loop_idd(fs: torch.Tensor, ft: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """The straightforward IDD: per image, per present class (mask mean), per pair i < j."""
    size = tuple(ft.shape[-2:])
    lab = resize_labels(labels, size)
    ft = ft.detach()
    total = fs.new_zeros(())
    for b in range(fs.shape[0]):
        present = [c for c in range(k) if (lab[b] == c).any()]
        cen_s = {c: fs[b][:, lab[b] == c].mean(dim=1) for c in present}
        cen_t = {c: ft[b][:, lab[b] == c].mean(dim=1) for c in present}
        pairs = list(itertools.combinations(present, 2))
        if not pairs:
            continue
        sq = [((cen_t[i] - cen_t[j]).norm() - (cen_s[i] - cen_s[j]).norm()) ** 2 for i, j in pairs]
        total = total + torch.stack(sq).mean()
    return total / fs.shape[0]


def cityscapes_like_labels(b: int, h: int, w: int, k: int, seed: int = 0) -> torch.Tensor:
    """Blocky label maps with every class present and ~5 % ignore, like a street scene's."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.randint(0, k, (b, 8, 16), generator=g)
    grid[:, 0, :k] = torch.arange(k)[: grid.shape[-1]]  # make sure all classes occur
    grid[:, 1, : max(0, k - 16)] = torch.arange(16, k)
    labels = F.interpolate(grid[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
    return labels.masked_fill(torch.rand(b, h, w, generator=g) < 0.05, IGNORE)


def timed(fn: Callable[[], object], reps: int, warmup: int, device: torch.device) -> float:
    """Median wall time of fn() in milliseconds."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_vectorised(args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    ih, iw = args.idd_input
    h, w = ih // 8, iw // 8
    g = torch.Generator().manual_seed(0)
    fs = torch.randn(args.batch, args.teacher_channels, h, w, generator=g).to(device)
    ft = (torch.randn(args.batch, args.teacher_channels, h, w, generator=g) * 2 + 1).to(device)
    labels = cityscapes_like_labels(args.batch, ih, iw, args.classes).to(device)
    fs.requires_grad_(True)
    k = args.classes
    with torch.no_grad():
        vec_val = idd_loss(fs, ft, labels, k).item()
        loop_val = loop_idd(fs, ft, labels, k).item()

    def fwd_bwd(fn: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            fs.grad = None
            fn(fs, ft, labels, k).backward()

        return run

    row: dict[str, object] = {
        "batch": args.batch,
        "feature": f"{h}x{w}",
        "input": f"{ih}x{iw}",
        "classes": k,
        "channels": args.teacher_channels,
        "value_vectorised": vec_val,
        "value_loop": loop_val,
        "rel_diff": abs(vec_val - loop_val) / max(abs(loop_val), 1e-12),
    }
    with torch.no_grad():
        row["fwd_ms_vectorised"] = timed(
            lambda: idd_loss(fs, ft, labels, k), args.reps, args.warmup, device
        )
        row["fwd_ms_loop"] = timed(lambda: loop_idd(fs, ft, labels, k), args.reps, 1, device)
    row["fwd_bwd_ms_vectorised"] = timed(fwd_bwd(idd_loss), args.reps, args.warmup, device)
    # The default scale, `normalize`: two more passes over each feature map (its spread).
    normalized = functools.partial(idd_loss, normalize=True)
    with torch.no_grad():
        row["fwd_ms_vectorised_normalize"] = timed(
            lambda: normalized(fs, ft, labels, k), args.reps, args.warmup, device
        )
    row["fwd_bwd_ms_vectorised_normalize"] = timed(
        fwd_bwd(normalized), args.reps, args.warmup, device
    )
    row["fwd_bwd_ms_loop"] = timed(fwd_bwd(loop_idd), args.reps, 1, device)
    row["speedup_fwd"] = row["fwd_ms_loop"] / row["fwd_ms_vectorised"]
    row["speedup_fwd_bwd"] = row["fwd_bwd_ms_loop"] / row["fwd_bwd_ms_vectorised"]
    return row


def bench_step(args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    from distill.models import build_model

    h, w = args.step_size
    k = args.classes
    teacher = build_model("pspnet_r101", k).to(device)
    student = build_model("pspnet_r18", k).to(device).train()
    # A random readout costs the same as a fitted one; only timing is measured here.
    readout = PositionReadout(teacher.feat_channels, 2)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(args.step_batch, 3, h, w, generator=g).to(device)
    labels = cityscapes_like_labels(args.step_batch, h, w, k, seed=1).to(device)
    amp = device.type == "cuda" and args.amp

    def make(losses: tuple[str, ...]) -> Callable[[], None]:
        config = DistillConfig(losses=losses)
        objective = DistillObjective(teacher, student.feat_channels, k, config, readout).to(device)
        params = list(student.parameters()) + [p for p in objective.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9)

        def step() -> None:
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                out = objective(images, labels, student(images))
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()

        return step

    full = make(("kd", "idd", "pid", "cwd"))
    without = make(("kd", "cwd"))

    # IDD + PID alone, on features of this step's size: adapter, IDD, readout, backward.
    objective = DistillObjective(
        teacher, student.feat_channels, k, DistillConfig(losses=("idd", "pid")), readout
    ).to(device)
    fh, fw = h // 8, w // 8
    fs = torch.randn(args.step_batch, student.feat_channels, fh, fw, device=device)
    ft = torch.randn(args.step_batch, teacher.feat_channels, fh, fw, device=device)
    fs.requires_grad_(True)
    cfg = objective.config

    def terms_only() -> None:
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            adapted = objective.idd.adapt(fs)
            loss = cfg.w_idd * objective.idd(adapted, ft, labels, adapted=True)
            loss = loss + cfg.w_pid * objective.pid(adapted, ft, adapted=True)
        fs.grad = None
        loss.backward()

    row: dict[str, object] = {
        "teacher": "pspnet_r101",
        "student": "pspnet_r18",
        "input": f"{h}x{w}",
        "batch": args.step_batch,
        "amp": amp,
        "losses": "kd,idd,pid,cwd",
    }
    row["step_ms"] = timed(full, args.step_reps, 1, device)
    row["step_ms_without_idd_pid"] = timed(without, args.step_reps, 1, device)
    row["idd_pid_ms"] = timed(terms_only, args.reps, args.warmup, device)
    row["idd_pid_share"] = row["idd_pid_ms"] / row["step_ms"]
    row["step_difference_share"] = (row["step_ms"] - row["step_ms_without_idd_pid"]) / row[
        "step_ms"
    ]
    return row


def environment(device: torch.device) -> dict[str, object]:
    env: dict[str, object] = {
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cpu": cpu_info(),
        "cpu_count": os.cpu_count(),
    }
    if hasattr(os, "getloadavg"):
        env["loadavg_1m_at_start"] = round(os.getloadavg()[0], 2)
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--batch", type=int, default=2, help="batch of part (a)")
    p.add_argument("--idd-input", default="512x1024", help="input size of part (a), HxW")
    p.add_argument("--teacher-channels", type=int, default=512, help="feature width of part (a)")
    p.add_argument("--step-size", default=None, help="input of part (b), HxW (CPU 256x512)")
    p.add_argument("--step-batch", type=int, default=2)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--step-reps", type=int, default=3)
    p.add_argument("--no-amp", dest="amp", action="store_false", help="CUDA: fp32 step")
    p.add_argument("--skip-step", action="store_true", help="only part (a)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        args.idd_input = parse_size(args.idd_input, "--idd-input", minimum=8)
        size = args.step_size or ("512x1024" if args.device.startswith("cuda") else "256x512")
        args.step_size = parse_size(size, "--step-size", minimum=8)
    except (SegkdError, ValueError) as e:
        p.error(str(e))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    result: dict[str, object] = {"environment": environment(device)}
    a = bench_vectorised(args, device)
    result["idd_vectorised_vs_loop"] = a
    print(
        f"(a) IDD, {a['classes']} classes, batch {a['batch']}, features {a['feature']} x "
        f"{a['channels']} ch (input {a['input']}), {device}"
    )
    print(f"    {'':18}{'vectorised':>12}{'loop':>12}{'speed-up':>10}")
    for key, name in (("fwd", "forward"), ("fwd_bwd", "forward+backward")):
        print(
            f"    {name:18}{a[f'{key}_ms_vectorised']:>10.2f}ms{a[f'{key}_ms_loop']:>10.2f}ms"
            f"{a[f'speedup_{key}']:>9.1f}x"
        )
    print(
        f"    normalize scale: forward {a['fwd_ms_vectorised_normalize']:.2f}ms, "
        f"forward+backward {a['fwd_bwd_ms_vectorised_normalize']:.2f}ms"
    )
    print(
        f"    values: {a['value_vectorised']:.6g} vs {a['value_loop']:.6g} "
        f"(relative difference {a['rel_diff']:.1e})"
    )
    if not args.skip_step:
        b = bench_step(args, device)
        result["idd_pid_share_of_step"] = b
        print(
            f"(b) distillation step {b['teacher']} -> {b['student']}, input {b['input']}, "
            f"batch {b['batch']}, losses {b['losses']}, amp {b['amp']}, {device}"
        )
        print(f"    whole step                 {b['step_ms']:>10.1f} ms")
        print(f"    step without IDD+PID       {b['step_ms_without_idd_pid']:>10.1f} ms")
        print(
            f"    IDD+PID alone (fwd+bwd)    {b['idd_pid_ms']:>10.1f} ms  "
            f"= {100 * b['idd_pid_share']:.2f} % of the step"
        )
        print(
            f"    step difference            {100 * b['step_difference_share']:>10.2f} % "
            "(noisy on a shared CPU)"
        )
    if hasattr(os, "getloadavg"):
        result["environment"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
