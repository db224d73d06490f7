"""Section 5 of the GPU check: export the CUDA-trained students and run what the GPU offers.

`segkd export`'s library call on each student checkpoint section 2 wrote (fp32, fp16 and
the TensorRT Q/DQ INT8 file; TensorRT engines fp16/fp32/int8 when TensorRT is installed),
its fp32 parity against PyTorch as export.json records it, then the ONNX Runtime CUDA
provider and the TensorRT engines through runtime's loaders: latency (runtime.bench) and
label agreement. What is not installed is skipped with one line saying why.

The students saw only a few steps of random data, so the fp16/INT8 agreement minima
(meant for trained models) are reported, not enforced; fp32 parity keeps its defaults.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from gpu_check_plan import BASE_STUDENT, NUM_CLASSES, Plan, first_line, row

from runtime.bench import benchmark, synthetic_frame

CUDA_EP = "CUDAExecutionProvider"


def student_checkpoints(plan: Plan, out: Path) -> tuple[list[Path], str | None]:
    """Section 2's checkpoints, base student first; else a fresh one, with a note why."""
    found = sorted((out / "students").glob("*.pt"), key=lambda p: (p.stem != BASE_STUDENT, p.stem))
    if found:
        return found, None
    import torch
    from gpu_check_distill import write_student

    from distill.models import build_model

    torch.manual_seed(0)
    model = build_model(BASE_STUDENT, NUM_CLASSES).to("cpu").train()
    write_student(model, BASE_STUDENT, plan, out, torch.device("cpu"))
    return [out / "students" / f"{BASE_STUDENT}.pt"], (
        "section 2 wrote no student checkpoint: exported an untrained pspnet_r18 instead"
    )


def export_one(ckpt: Path, plan: Plan, out: Path) -> tuple[dict[str, Any], list[list[str]]]:
    from export.api import Tolerances, export_checkpoint

    h, w = plan.export_size
    data = f"synthetic:size={h}x{w},train={plan.calib_images},val={plan.verify_images}"
    report = export_checkpoint(
        ckpt,
        out / "export" / ckpt.stem,
        precisions=("fp32", "fp16", "int8"),
        input_size=plan.export_size,
        calib_data=data,
        calib_images=plan.calib_images,
        verify_images=plan.verify_images,
        int8_variants=("tensorrt",),
        tolerances=Tolerances(fp16_min_agreement=0.0, int8_min_agreement=0.0),
        build_engines=True,
    )
    rows = []
    result: dict[str, Any] = {"dir": str(report.out_dir), "seconds": round(report.seconds, 1)}
    for a in report.artifacts:
        check = a.get("parity") or a.get("agreement") or {}
        result[a["file"]] = {
            k: a.get(k) for k in ("precision", "size_bytes", "provider", "build_seconds")
        } | {"check": check}
        agree = check.get("pixel_agreement")
        figures = f"labels = PyTorch fp32 on {100 * agree:.3f} %" if agree is not None else ""
        if a.get("parity"):
            figures += f", max |Δlogit| {check.get('max_abs_logit_diff', float('nan')):.1e}"
        rows.append(row(f"{ckpt.stem} {a['file']}", "ok", figures))
    result["skipped"] = report.skipped
    for s in report.skipped:  # a missing TensorRT gets its own row from tensorrt_engines()
        if s["what"] != "tensorrt engines":
            rows.append(row(f"{ckpt.stem} {s['what']}", "skipped", s["why"]))
    return result, rows


def ort_cuda(export_dir: Path, plan: Plan) -> tuple[dict[str, Any], list[list[str]]]:
    import onnxruntime as ort

    from runtime.loader import open_segmenter

    providers = ort.get_available_providers()
    if plan.device == "cuda" and CUDA_EP not in providers:
        why = (
            f"onnxruntime {ort.__version__} offers {', '.join(providers)}: the CPU wheel, "
            "no CUDAExecutionProvider (onnxruntime-gpu is not installed)"
        )
        return {"skipped": why}, [row("ONNX Runtime CUDA provider", "skipped", why)]
    # On --device cpu the same calls run with the CPU provider, so this code cannot rot.
    device = "cuda" if plan.device == "cuda" else "cpu"
    frame = synthetic_frame(plan.export_size)
    result, rows = {}, []
    for file in ("model.onnx", "model.fp16.onnx"):
        cpu = open_segmenter(export_dir / file, backend="onnxruntime", device="cpu")
        gpu = open_segmenter(export_dir / file, backend="onnxruntime", device=device)
        agree = float(np.mean(cpu.predict(frame) == gpu.predict(frame)))
        bench = benchmark(gpu, [frame], iters=plan.ort_iters, warmup=3)
        result[file] = {
            "provider": gpu.provider,
            "label_agreement_vs_ort_cpu": agree,
            "inference_p50_ms": round(bench.inference.p50_ms, 3),
            "inference_p99_ms": round(bench.inference.p99_ms, 3),
            "end_to_end_p50_ms": round(bench.end_to_end.p50_ms, 3),
        }
        rows.append(
            row(
                f"ONNX Runtime {gpu.provider} {file}",
                "ok",
                f"inference p50 {result[file]['inference_p50_ms']} ms, p99 "
                f"{result[file]['inference_p99_ms']} ms; labels = ORT CPU on {100 * agree:.3f} %",
            )
        )
    return result, rows


def tensorrt_engines(export_dir: Path, plan: Plan) -> tuple[dict[str, Any], list[list[str]]]:
    from runtime.backends.tensorrt_builder import tensorrt_unavailable_reason
    from runtime.loader import open_segmenter

    reason = tensorrt_unavailable_reason()
    if reason is not None:
        return {"skipped": reason}, [row("TensorRT engines", "skipped", reason)]
    frame = synthetic_frame(plan.export_size)
    result, rows = {}, []
    for engine in sorted(export_dir.glob("*.engine")):
        seg = open_segmenter(engine, backend="tensorrt")
        bench = benchmark(seg, [frame], iters=plan.ort_iters, warmup=3)
        result[engine.name] = {
            "inference_p50_ms": round(bench.inference.p50_ms, 3),
            "inference_p99_ms": round(bench.inference.p99_ms, 3),
            "end_to_end_p50_ms": round(bench.end_to_end.p50_ms, 3),
        }
        rows.append(
            row(
                f"TensorRT {engine.name}",
                "ok",
                f"inference p50 {result[engine.name]['inference_p50_ms']} ms, p99 "
                f"{result[engine.name]['inference_p99_ms']} ms (agreement: export rows)",
            )
        )
    return result, rows


def section_export(plan: Plan, out: Path, deadline: float) -> dict[str, Any]:
    ckpts, note = student_checkpoints(plan, out)
    result: dict[str, Any] = {"students": {}, "note": note}
    rows = [row("student checkpoints", "note", note)] if note else []
    last_s = 0.0  # the previous student's export took this long: the next one will too
    for ckpt in ckpts:
        if deadline - time.time() < 1.2 * last_s or time.time() > deadline:
            rows.append(row(f"{ckpt.stem} export", "skipped", "time budget spent"))
            continue
        started = time.time()
        entry: dict[str, Any] = {}
        result["students"][ckpt.stem] = entry
        try:
            entry["export"], more = export_one(ckpt, plan, out)
            rows.extend(more)
        except Exception as e:  # a failed verification is a finding, not the end of the check
            entry["export"] = {"error": first_line(e)}
            rows.append(row(f"{ckpt.stem} export", "FAILED", first_line(e)))
            continue
        export_dir = out / "export" / ckpt.stem
        for name, fn in (("ort_cuda", ort_cuda), ("tensorrt", tensorrt_engines)):
            try:
                entry[name], more = fn(export_dir, plan)
            except Exception as e:
                entry[name], more = {"error": first_line(e)}, [row(name, "FAILED", first_line(e))]
            rows.extend(row(f"{ckpt.stem}: {r[0]}", r[1], r[2]) for r in more)
        last_s = time.time() - started
    result["rows"] = rows
    return result
