"""Section 4 of the GPU check: torch inference latency, eager fp32 vs fp16 vs fp16 + CUDA graph.

pspnet_r18 through runtime's TorchBackend (the code `segkd bench --backend torch` runs),
timed on the device: a normalised street frame already on the GPU -> uint8 labels on the
GPU, synchronised after every call, so p50/p99 are the model's latency without the host
copies. Labels of fp16 and of the graph are compared with fp32's, pixel by pixel.
The random weights get BatchNorm statistics from two passes over the frame first, so the
logits have a trained network's scale rather than an unnormalised one's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from gpu_check_plan import BASE_STUDENT, NUM_CLASSES, Plan, Skipped, first_line, row

from core.preprocess import PreprocessSpec
from distill.data.synthetic import render_street
from distill.models import build_model
from runtime.backends.torch import TorchBackend
from runtime.bench import LatencyStats

MODES = (
    ("fp32 eager", "fp32", False),
    ("fp16 eager", "fp16", False),
    ("fp16 + CUDA graph", "fp16", True),
)
MIN_AGREEMENT = 0.999
GOAL_SPEEDUP = 3.0  # fp16 + CUDA graph vs eager fp32 at 512x1024 (the goal)


def calibrate_batchnorm(model: torch.nn.Module, x: torch.Tensor, passes: int = 2) -> None:
    """Running statistics from `x` and its mirror image (cumulative average), then eval mode.

    Two images: the pyramid's 1x1 bin holds one value per channel and image, and BatchNorm
    in training mode needs more than one."""
    x = torch.cat([x, x.flip(-1)])
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(passes):
            model(x)
    model.eval()


def street_input(size: tuple[int, int], device: str) -> torch.Tensor:
    image, _ = render_street(0, "val", 0, size)
    x = PreprocessSpec(input_size=size).normalize(image, "RGB")
    return torch.from_numpy(x)[None].to(device)


def latency(backend: TorchBackend, x: torch.Tensor, warmup: int, iters: int) -> LatencyStats:
    def call() -> None:
        backend.labels_on_device(x)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)

    for _ in range(warmup):
        call()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return LatencyStats.from_seconds(samples, batch=1)


def one_size(
    model: torch.nn.Module, size: tuple[int, int], plan: Plan
) -> tuple[dict[str, Any], list[list[str]]]:
    x = street_input(size, plan.device)
    tag = f"{size[0]}x{size[1]}"
    result: dict[str, Any] = {"size": list(size), "modes": {}}
    rows: list[list[str]] = []
    ref = None
    for name, precision, graph in MODES:
        try:
            backend = TorchBackend(model, device=plan.device, precision=precision, cuda_graph=graph)
            stats = latency(backend, x, plan.infer_warmup, plan.infer_iters)
            labels = backend.labels_on_device(x)
            entry: dict[str, Any] = {
                "p50_ms": round(stats.p50_ms, 3),
                "p99_ms": round(stats.p99_ms, 3),
                "mean_ms": round(stats.mean_ms, 3),
                # What really ran: the backend falls back to fp32 / eager where it must.
                "precision_run": backend.precision,
                "cuda_graph_used": backend.uses_cuda_graph,
                "provider": backend.provider,
            }
            if ref is None:
                ref = labels
            agree = float((labels == ref).float().mean().item())
            entry["label_agreement_vs_fp32"] = agree
            backend.close()
        except Exception as e:
            result["modes"][name] = {"error": first_line(e)}
            rows.append(row(f"{BASE_STUDENT} {tag} {name}", "FAILED", first_line(e)))
            continue
        result["modes"][name] = entry
        ok = agree >= MIN_AGREEMENT
        ran = f"{entry['precision_run']}{' + graph' if entry['cuda_graph_used'] else ''}"
        rows.append(
            row(
                f"{BASE_STUDENT} {tag} {name}",
                "ok" if ok else "FAILED",
                f"p50 {entry['p50_ms']} ms, p99 {entry['p99_ms']} ms (ran {ran}), "
                f"labels = fp32 on {100 * agree:.3f} %",
            )
        )
    base = result["modes"].get("fp32 eager", {}).get("p50_ms")
    ratios = {}
    for name in ("fp16 eager", "fp16 + CUDA graph"):
        p50 = result["modes"].get(name, {}).get("p50_ms")
        if base and p50:
            ratios[f"fp32 / {name}"] = round(base / p50, 2)
    result["speedup_p50"] = ratios
    if ratios:
        rows.append(
            row(
                f"{BASE_STUDENT} {tag} speed-up",
                "ok",
                ", ".join(f"{k}: {v}x" for k, v in ratios.items()),
            )
        )
    return result, rows


def section_inference(plan: Plan, out: Path, deadline: float) -> dict[str, Any]:
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise Skipped("no CUDA GPU visible to torch")
    torch.manual_seed(0)
    model = build_model(BASE_STUDENT, NUM_CLASSES, aux=False).to(plan.device)
    calibrate_batchnorm(model, street_input(plan.infer_sizes[0], plan.device))
    result: dict[str, Any] = {"model": BASE_STUDENT, "sizes": {}}
    rows: list[list[str]] = []
    for size in plan.infer_sizes:
        tag = f"{size[0]}x{size[1]}"
        if time.time() > deadline:
            rows.append(row(f"{BASE_STUDENT} {tag}", "skipped", "time budget spent"))
            continue
        result["sizes"][tag], more = one_size(model, size, plan)
        rows.extend(more)
    first = f"{plan.infer_sizes[0][0]}x{plan.infer_sizes[0][1]}"
    speedup = result["sizes"].get(first, {}).get("speedup_p50", {}).get("fp32 / fp16 + CUDA graph")
    if speedup is not None and plan.device == "cuda":
        result["goal_graph_speedup_3x"] = speedup >= GOAL_SPEEDUP
        rows.append(
            row(
                f"goal: fp16 + CUDA graph >= {GOAL_SPEEDUP:g}x eager fp32 at {first}",
                "met" if speedup >= GOAL_SPEEDUP else "NOT met",
                f"{speedup}x",
            )
        )
    result["rows"] = rows
    return result
