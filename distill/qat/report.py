"""PTQ beside QAT for the pipeline report: agreement, mIoU, drop vs fp32, training cost."""

from __future__ import annotations

from typing import Any

_FILES = {"model.int8.onnx": "TensorRT INT8", "model.int8-cpu.onnx": "CPU INT8"}


def int8_figures(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per INT8 file of an export.json: agreement with fp32, mIoU, drop vs fp32 (points)."""
    out = {}
    for a in manifest.get("artifacts", []):
        if a.get("file") not in _FILES or "agreement" not in a:
            continue
        ag = a["agreement"]
        fp32, int8 = ag.get("fp32_miou_vs_ground_truth"), ag.get("miou_vs_ground_truth")
        out[a["file"]] = {
            "pixel_agreement": ag.get("pixel_agreement"),
            "miou": int8,
            "drop_pts": None if fp32 is None or int8 is None else 100 * (fp32 - int8),
        }
    return out


def comparison(
    ptq: dict[str, Any], qat: dict[str, Any], summary: dict[str, Any], distill_seconds: float | None
) -> dict[str, Any]:
    training = summary["training"]
    return {
        "ptq": int8_figures(ptq),
        "qat": int8_figures(qat),
        "steps": training["steps"],
        "seconds": training["seconds"],
        "total_seconds": summary["total_seconds"],
        "distill_seconds": distill_seconds,
        "scales": training.get("scales"),
        "crop_size": (training.get("options") or {}).get("crop_size"),
        "schedule": (training.get("options") or {}).get("schedule", "constant"),
        "teacher": training.get("teacher"),
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def _pts(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}"


def markdown(section: dict[str, Any]) -> list[str]:
    """The report's "INT8: calibration (PTQ) vs quantization-aware training" section."""
    lines = [
        "## INT8: calibration (PTQ) vs quantization-aware training (QAT)",
        "",
        "| file | PTQ agreement | QAT agreement | PTQ mIoU drop (pts) | QAT mIoU drop (pts) |",
        "|---|---|---|---|---|",
    ]
    for file, name in _FILES.items():
        p, q = section["ptq"].get(file), section["qat"].get(file)
        if p is None or q is None:
            continue
        lines.append(
            f"| {name} | {_pct(p['pixel_agreement'])} | {_pct(q['pixel_agreement'])} | "
            f"{_pts(p['drop_pts'])} | {_pts(q['drop_pts'])} |"
        )
    extra = f"{section['steps']} steps, {section['seconds']:.0f} s of training"
    extra += f" ({section['total_seconds']:.0f} s with calibration and graph export)"
    if section.get("distill_seconds"):
        extra += f"; the distillation took {section['distill_seconds']:.0f} s"
    how = f"Scales: {section.get('scales')}"
    if section.get("schedule") == "cosine":
        how += "; learning rates decayed to 0 (cosine)"
    if section.get("crop_size"):
        how += f"; trained on {section['crop_size'][0]}x{section['crop_size'][1]} crops"
    if section.get("teacher"):
        how += f"; the teacher {section['teacher']} in the loop"
    lines += ["", f"QAT cost: {extra}. {how}. The CPU INT8 file of a QAT checkpoint is the "
              "calibrated one (QAT's scales do not suit its placement).", ""]  # fmt: skip
    return lines
