"""The pipeline's report: report.md for people, report.json for tools, figures/*.png.

Input is the one dict the pipeline collects (see `write_report`); any part may be None
where its step did not run, and the report says so instead of failing. Conventions:
mIoU / IoU / pixel agreement are fractions in the dict and shown as percent with two
decimals; drops and gains are already in points. Every file is written atomically.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import SegkdError
from pipeline.gain import verdict
from pipeline.supervised_loss import describe_supervised_loss

FIGURES_DIR = "figures"
NA = "–"  # shown where a value is unknown or a step did not run


# ---------------------------------------------------------------- formatting


def _num(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt_pct(x: Any) -> str:
    """A fraction as percent with two decimals: 0.65123 -> '65.12%'."""
    v = _num(x)
    return NA if v is None else f"{v * 100:.2f}%"


def fmt_pts(x: Any, signed: bool = True) -> str:
    """Percentage points: 0.4 -> '+0.40'."""
    v = _num(x)
    return NA if v is None else (f"{v:+.2f}" if signed else f"{v:.2f}")


def fmt_ms(x: Any) -> str:
    """Milliseconds: two decimals below 10 ms, one above."""
    v = _num(x)
    return NA if v is None else (f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}")


def fmt_float(x: Any, decimals: int = 1) -> str:
    v = _num(x)
    return NA if v is None else f"{v:.{decimals}f}"


def fmt_size_mb(x: Any) -> str:
    v = _num(x)
    return NA if v is None else (f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}")


def _cell(x: Any) -> str:
    text = NA if x is None else str(x)
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    """A GitHub-flavoured markdown table; `align` has one 'l'/'r' per column (default l)."""
    align = align.ljust(len(header), "l")
    rule = ["---:" if a == "r" else "---" for a in align[: len(header)]]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- atomic writes


def _write_text(path: Path, text: str) -> Path:
    # same folder, so os.replace is atomic; plain open() keeps the usual file permissions
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def to_jsonable(x: Any) -> Any:
    """Plain JSON data: numpy scalars -> Python, paths -> str, NaN/inf -> None, arrays dropped."""
    if isinstance(x, Mapping):
        return {str(k): to_jsonable(v) for k, v in x.items() if not isinstance(v, np.ndarray)}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x if not isinstance(v, np.ndarray)]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    return str(x)


# ---------------------------------------------------------------- figures


@dataclass(frozen=True)
class _Figure:
    key: str
    title: str
    caption: str


FIGURES = (
    _Figure("class_iou", "Per-class IoU", "IoU of every class, per model and artifact."),
    _Figure(
        "miou_vs_latency",
        "Accuracy vs speed",
        "mIoU against p50 latency per artifact; dashed lines are the models' val mIoU.",
    ),
    _Figure("latency", "Latency by stage", "Mean ms per stage; the bar marks p99 end to end."),
    _Figure("examples", "Examples", "Image, ground truth (black = ignore) and each prediction."),
)


def _model_roles(report: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    roles = (
        ("teacher", "teacher"),
        ("baseline", "student alone"),
        ("student", "distilled student"),
    )
    return [(label, report[key]) for key, label in roles if isinstance(report.get(key), Mapping)]


def iou_series(report: Mapping[str, Any]) -> dict[str, Mapping[str, float | None]]:
    """Per-class IoU of each model (when it carries an "iou" dict) and of each artifact."""
    series = {
        label: m["iou"] for label, m in _model_roles(report) if isinstance(m.get("iou"), Mapping)
    }
    for a in report.get("artifacts") or []:
        if isinstance(a.get("iou"), Mapping):
            series[str(a.get("name"))] = a["iou"]
    return series


def _figure_jobs(report: Mapping[str, Any], fig_dir: Path) -> dict[str, Callable[[], Path]]:
    """The figures this report has data for, each as a deferred plot call."""
    from pipeline import figures

    artifacts = list(report.get("artifacts") or [])
    jobs: dict[str, Callable[[], Path]] = {}
    series = iou_series(report)
    if series:
        jobs["class_iou"] = lambda: figures.plot_class_iou(series, fig_dir / "class_iou.png")
    timed = [a for a in artifacts if _num((a.get("latency_ms") or {}).get("p50")) is not None]
    if any(_num(a.get("miou")) is not None for a in timed):
        refs = {f"{label} (val)": m.get("val_miou") for label, m in _model_roles(report)}
        jobs["miou_vs_latency"] = lambda: figures.plot_miou_vs_latency(
            timed, fig_dir / "miou_vs_latency.png", references=refs
        )
    if timed:
        jobs["latency"] = lambda: figures.plot_latency(timed, fig_dir / "latency.png")
    # report.json keeps only the examples' shapes, so a report re-rendered from it has none.
    examples = [ex for ex in report.get("examples") or [] if ex.get("image") is not None]
    if examples:
        jobs["examples"] = lambda: figures.plot_examples(
            examples,
            list(report.get("class_names") or []),
            list(report.get("palette") or []),
            fig_dir / "examples.png",
        )
    return jobs


def write_figures(report: Mapping[str, Any], out_dir: Path) -> tuple[dict[str, Path], list[dict]]:
    """Plot what the report has data for; returns (written figures, skipped items)."""
    fig_dir = out_dir / FIGURES_DIR
    written: dict[str, Path] = {}
    skipped: list[dict[str, str]] = []
    try:
        import matplotlib  # noqa: F401  (optional dependency: the `train` extra)
    except ImportError:
        return written, [{"what": "figures", "why": "matplotlib is not installed"}]
    jobs = _figure_jobs(report, fig_dir)
    if jobs:
        fig_dir.mkdir(parents=True, exist_ok=True)
    for key, job in jobs.items():
        try:
            written[key] = job()
        except Exception as e:  # a plot must not cost the run its report
            skipped.append({"what": f"figure {key}", "why": f"{type(e).__name__}: {e}"})
    for fig in FIGURES:  # a figure from an earlier run that this run has no data for
        stale = fig_dir / f"{fig.key}.png"
        if fig.key not in written and stale.is_file():
            stale.unlink()
    return written, skipped


# ---------------------------------------------------------------- markdown sections


def _fastest(artifacts: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    timed = [a for a in artifacts if _num(a.get("fps")) is not None]
    return max(timed, key=lambda a: _num(a["fps"]) or 0.0) if timed else None


def _gate_text(report: Mapping[str, Any]) -> str:
    passed, max_drop = report.get("gate_passed"), _num(report.get("max_drop"))
    if passed is None:
        return "not checked (no max drop set)"
    if max_drop is None:
        return "**passed**" if passed else "**FAILED**"
    if passed:
        return f"**passed** (every artifact within {max_drop:.2f} pts of PyTorch)"
    over = [
        str(a.get("name"))
        for a in report.get("artifacts") or []
        if (_num(a.get("drop_vs_torch")) or 0.0) > max_drop
    ]
    names = f": {', '.join(over)}" if over else ""
    return f"**FAILED** (drop above {max_drop:.2f} pts{names})"


def _summary(report: Mapping[str, Any]) -> str:
    student, baseline, teacher = (
        report.get("student"),
        report.get("baseline"),
        report.get("teacher"),
    )
    parts: list[str] = []
    if isinstance(student, Mapping):
        dist = report.get("distillation") or {}
        d_stats, b_stats = dist.get("distilled_stats"), dist.get("baseline_stats")
        n = (d_stats or {}).get("n") or 1
        d_miou = (d_stats or {}).get("mean")
        d_text = fmt_pct(student.get("val_miou")) if d_miou is None else f"{d_miou:.2f}%"
        s = f"Distilled student {student.get('arch', '?')}: **{d_text}** mIoU"
        s += f" (mean of {n} seeds)" if n > 1 else ""
        cmp: list[str] = []
        if isinstance(baseline, Mapping):
            gain = dist.get("gain_vs_baseline")
            if _num(gain) is None and None not in (
                _num(student.get("val_miou")),
                _num(baseline.get("val_miou")),
            ):
                gain = (student["val_miou"] - baseline["val_miou"]) * 100
            b_miou = (b_stats or {}).get("mean")
            b_text = fmt_pct(baseline.get("val_miou")) if b_miou is None else f"{b_miou:.2f}%"
            cmp.append(f"{b_text} alone ({fmt_pts(gain)} pts{_spread_text(dist)})")
        if isinstance(teacher, Mapping):
            cmp.append(f"{fmt_pct(teacher.get('val_miou'))} for teacher {teacher.get('arch', '?')}")
        parts.append(s + (f" vs {' and '.join(cmp)}" if cmp else ""))
    fast = _fastest(report.get("artifacts") or [])
    if fast is not None:
        parts.append(
            f"fastest artifact: {fast['name']} at **{fmt_float(fast['fps'])} FPS** "
            f"({fmt_pct(fast.get('miou'))} mIoU)"
        )
    parts.append(f"accuracy gate: {_gate_text(report)}")
    return "; ".join(parts) + "."


def _models_section(report: Mapping[str, Any]) -> list[str]:
    roles = _model_roles(report)
    if not roles:
        return ["## Models", "", "No model was trained or loaded."]
    rows = []
    for label, m in roles:
        size = m.get("input_size")
        rows.append(
            [
                label,
                m.get("arch"),
                fmt_float(m.get("params_m"), 2),
                fmt_float(m.get("gmacs"), 1),
                "x".join(str(v) for v in size) if size else None,
                fmt_pct(m.get("val_miou")),
                _train_val_text(m.get("train_val")),
                m.get("iters"),
                "yes" if m.get("trained_here") else "no (given)",
            ]
        )
    header = [
        "model",
        "arch",
        "params (M)",
        "GMACs",
        "input (HxW)",
        "val mIoU",
        "training val: native / deploy size",
        "iters",
        "trained here",
    ]
    return ["## Models", "", md_table(header, rows, "llrrlrrrl")]


def _train_val_text(tv: Any) -> str:
    """The trainer's validation of the checkpoint at native and at deploy input size."""
    if not isinstance(tv, Mapping) or _num(tv.get("native")) is None:
        return NA
    return f"{fmt_pct(tv.get('native'))} / {fmt_pct(tv.get('deploy'))}"


def _spread_text(dist: Mapping[str, Any]) -> str:
    """', seed spread 1.20: larger than the spread' for the summary ('' with one seed)."""
    spread, said = _num(dist.get("spread")), verdict(dict(dist))
    if spread is None or said is None:
        return ", one seed: not a measurement"
    return f", seed spread {spread:.2f}: {said}"


def _gain_lines(
    dist: Mapping[str, Any], student: Mapping[str, Any], baseline: Mapping[str, Any]
) -> list[str]:
    """Per-seed table of both rows, their mean +- std, and what the gain amounts to."""
    seeds, gains = dist.get("seeds") or [], dist.get("gain_per_seed") or []
    base, dist_miou = dist.get("baseline_miou") or [], dist.get("distilled_miou") or []
    if not (seeds and len(seeds) == len(base) == len(dist_miou) == len(gains)):
        gain = dist.get("gain_vs_baseline")  # a report from before seeds were recorded
        return [
            f"Student alone: {fmt_pct(baseline.get('val_miou'))} mIoU; distilled: "
            f"{fmt_pct(student.get('val_miou'))}; distillation adds **{fmt_pts(gain)} pts** "
            "(one run each: not a measurement)."
        ]
    rows = [
        [f"seed {seed}", fmt_pct(b), fmt_pct(d), fmt_pts(g)]
        for seed, b, d, g in zip(seeds, base, dist_miou, gains, strict=True)
    ]

    def stats(key: str) -> str:
        st = dist.get(key) or {}
        mean, std = _num(st.get("mean")), _num(st.get("std"))
        if mean is None:
            return NA
        return f"{mean:.2f}%" + (f" ± {std:.2f}" if std is not None else "")

    gain = dist.get("gain_vs_baseline")
    rows.append(["mean ± std", stats("baseline_stats"), stats("distilled_stats"), fmt_pts(gain)])
    spread, said = _num(dist.get("spread")), verdict(dict(dist))
    if spread is None or said is None:
        finding = (
            "One seed per row: a gap smaller than the seed-to-seed spread of such runs is "
            "noise; set `student_seeds` to two or more seeds to measure it."
        )
    else:
        finding = (
            f"Distillation adds **{fmt_pts(gain)} pts ± {spread:.2f}** (mean gain ± seed "
            f"spread, the larger max - min of the two rows over {len(seeds)} seeds): **{said}**."
        )
    exported = f"The exported student is seed {seeds[0]}'s distilled one."
    return [
        md_table(["run", "student alone", "distilled", "gain (pts)"], rows, "lrrr"),
        "",
        f"{finding} {exported}",
    ]


def _distillation_section(report: Mapping[str, Any]) -> list[str]:
    student, baseline = report.get("student"), report.get("baseline")
    dist = report.get("distillation") or {}
    out = ["## Distillation", ""]
    if not isinstance(student, Mapping):
        return [*out, "No student was distilled."]
    losses = student.get("losses") or []
    out.append(f"Losses: {', '.join(f'`{x}`' for x in losses) if losses else NA}.")
    if isinstance(dist.get("supervised_loss"), Mapping):
        out.append("")
        out.append(
            "Supervised loss of the student alone and of the distilled student: "
            f"{describe_supervised_loss(dist['supervised_loss'])}."
        )
    out.append("")
    if isinstance(baseline, Mapping):
        out += _gain_lines(dist, student, baseline)
    else:
        out.append("No student-alone baseline was trained, so the gain is not measured.")
    pos = dist.get("position_information")
    if isinstance(pos, Mapping) and pos:
        out += [
            "",
            "Position information (readout of the ramp maps; lower MSE / higher correlation "
            "= more position information encoded):",
            "",
            md_table(
                ["network", "readout MSE", "correlation"],
                [
                    [name, fmt_float((v or {}).get("mse"), 4), fmt_float((v or {}).get("corr"), 3)]
                    for name, v in pos.items()
                ],
                "lrr",
            ),
        ]
    return out


def _artifacts_section(report: Mapping[str, Any]) -> list[str]:
    artifacts = report.get("artifacts") or []
    out = ["## Artifacts", ""]
    if not artifacts:
        return [*out, "No artifact was exported or evaluated."]
    header = [
        "artifact", "backend", "precision", "device", "size (MB)", "mIoU",
        "drop vs PyTorch (pts)", "p50 (ms)", "p99 (ms)", "FPS", "pixel agreement",
    ]  # fmt: skip
    rows = []
    for a in artifacts:
        lat = a.get("latency_ms") or {}
        rows.append(
            [
                a.get("name"), a.get("backend"), a.get("precision"), a.get("device"),
                fmt_size_mb(a.get("size_mb")), fmt_pct(a.get("miou")),
                fmt_pts(a.get("drop_vs_torch")), fmt_ms(lat.get("p50")), fmt_ms(lat.get("p99")),
                fmt_float(a.get("fps")), fmt_pct(a.get("pixel_agreement")),
            ]
        )  # fmt: skip
    out.append(md_table(header, rows, "llllrrrrrrr"))
    out += ["", f"Accuracy gate: {_gate_text(report)}."]
    return out


def _class_iou_section(report: Mapping[str, Any]) -> list[str]:
    series = iou_series(report)
    classes = list(report.get("class_names") or [])
    for ious in series.values():  # classes named only in the IoU dicts
        classes.extend(c for c in ious if c not in classes)
    if not series or not classes:
        return []
    rows = [[c, *(fmt_pct(ious.get(c)) for ious in series.values())] for c in classes]
    return [
        "<details><summary>Per-class IoU (models on their val set, artifacts on the eval set)</summary>",
        "",
        md_table(["class", *series], rows, "l" + "r" * len(series)),
        "",
        "</details>",
    ]


def _figures_section(figs: Mapping[str, Path], out_dir: Path) -> list[str]:
    out = ["## Figures", ""]
    if not figs:
        return [*out, "No figures (nothing to plot)."]
    for fig in FIGURES:
        if fig.key in figs:
            rel = figs[fig.key].relative_to(out_dir).as_posix()
            out += [f"### {fig.title}", "", fig.caption, "", f"![{fig.title}]({rel})", ""]
    return out[:-1]


def _skipped_section(skipped: Sequence[Mapping[str, Any]]) -> list[str]:
    out = ["## Skipped", ""]
    if not skipped:
        return [*out, "Nothing was skipped."]
    return out + [f"- **{_cell(s.get('what'))}**: {_cell(s.get('why'))}" for s in skipped]


def _steps_section(steps: Sequence[Mapping[str, Any]]) -> list[str]:
    out = ["## Steps", ""]
    if not steps:
        return [*out, "No step record."]
    rows = [
        [
            s.get("step"),
            "ran" if s.get("ran") else "up to date (skipped)",
            fmt_float(s.get("seconds")),
        ]
        for s in steps
    ]
    total = sum(_num(s.get("seconds")) or 0.0 for s in steps)
    rows.append(["**total**", f"{sum(bool(s.get('ran')) for s in steps)} ran", f"{total:.1f}"])
    return [*out, md_table(["step", "status", "seconds"], rows, "llr")]


def _machine_section(machine: Mapping[str, Any] | None) -> list[str]:
    out = ["## Machine", ""]
    if not machine:
        return [*out, "Not recorded."]
    labels = {
        "cpu": "CPU", "cpu_flags": "CPU flags", "cores": "cores", "gpu": "GPU", "python": "Python", "torch": "PyTorch",
        "onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT",
    }  # fmt: skip
    rows = [[labels.get(k, k), v if v is not None else "not available"] for k, v in machine.items()]
    return [*out, md_table(["", ""], rows)]  # a key/value table: no header text


def _qat_section(qat: Mapping[str, Any] | None) -> list[str]:
    if not qat:
        return []
    from distill.qat.report import markdown

    return markdown(dict(qat))


def render_markdown(report: Mapping[str, Any], figs: Mapping[str, Path], out_dir: Path) -> str:
    head = [f"# {report.get('title') or 'segkd pipeline report'}", ""]
    meta = [f"created {report['created']}" if report.get("created") else None]
    meta.append(f"data `{report['data']}`" if report.get("data") else None)
    if any(meta):
        head += [" · ".join(m for m in meta if m), ""]
    sections = [
        [*head, _summary(report)],
        _models_section(report),
        _distillation_section(report),
        _artifacts_section(report),
        _qat_section(report.get("qat")),
        _class_iou_section(report),
        _figures_section(figs, out_dir),
        _skipped_section(report.get("skipped") or []),
        _steps_section(report.get("steps") or []),
        _machine_section(report.get("machine")),
    ]
    return "\n\n".join("\n".join(s) for s in sections if s) + "\n"


# ---------------------------------------------------------------- entry point


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    """Write out_dir/report.md, out_dir/report.json and out_dir/figures/*.png.

    Returns {"markdown": ..., "json": ..., <figure key>: ...} for the files written.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SegkdError(f"--out: {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    figs, fig_skipped = write_figures(report, out_dir)
    full = dict(report)
    full["skipped"] = list(report.get("skipped") or []) + fig_skipped

    data = to_jsonable({k: v for k, v in full.items() if k != "examples"})
    data["examples"] = [
        {
            "shape": list(np.asarray(ex["image"]).shape[:2])
            if ex.get("image") is not None
            else None,
            "predictions": list(ex.get("predictions") or {}),
        }
        for ex in report.get("examples") or []
    ]
    data["figures"] = {k: p.relative_to(out_dir).as_posix() for k, p in figs.items()}
    json_path = _write_text(
        out_dir / "report.json", json.dumps(data, indent=2, allow_nan=False) + "\n"
    )
    md_path = _write_text(out_dir / "report.md", render_markdown(full, figs, out_dir))
    return {"markdown": md_path, "json": json_path, **figs}
