"""PNG figures for the pipeline report: per-class IoU, latency, accuracy vs speed, examples.

matplotlib is imported inside the functions (it is an optional dependency) and used
through its object API with an explicit Agg canvas, so no GUI backend or pyplot global
state is touched. Sizes and dpi are fixed per figure kind (growing only with the number
of rows), so the PNGs stay small. Every file is written to a temporary name in the
target folder and moved into place with os.replace: a failed plot never leaves a
half-written PNG where an older good one was.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.labels import IGNORE_INDEX, generated_palette

DPI = 100
WIDTH_IN = 8.0
STAGES = ("preprocess", "inference", "postprocess")
STAGE_COLOURS = ("#9ecae1", "#3182bd", "#fdae6b")
PRECISION_MARKERS = {"fp32": "o", "fp16": "s", "int8": "^"}


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _series_colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _empty(fig: Any, message: str) -> None:
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="0.4")


def plot_class_iou(series: Mapping[str, Mapping[str, float | None]], path: Path) -> Path:
    """Grouped horizontal bars: per-class IoU (%) of each named model; None = no bar.

    More than 10 classes are split over two side-by-side panels to keep the figure short.
    """
    names = list(series)
    classes: list[str] = []
    for ious in series.values():
        classes.extend(c for c in ious if c not in classes)
    n_cls, n_ser = len(classes), len(names)
    panels = 2 if n_cls > 10 else 1
    per_panel = math.ceil(n_cls / panels) if n_cls else 0
    slot = max(0.3, 0.075 * n_ser)  # inches per class row
    legend_h = 0.5 + 0.2 * math.ceil(max(n_ser, 1) / 3)
    fig = _new_figure(WIDTH_IN, min(20.0, 0.6 + legend_h + max(per_panel, 2) * slot))
    if not n_cls or not n_ser:
        _empty(fig, "no per-class IoU to show")
        return _save(fig, path)
    axes = fig.subplots(1, panels, squeeze=False, sharex=True)[0]
    bar_h = 0.8 / n_ser
    colours = _series_colours(n_ser)
    for p, ax in enumerate(axes):
        chunk = classes[p * per_panel : (p + 1) * per_panel]
        y = np.arange(len(chunk), dtype=np.float64)
        for i, (name, colour) in enumerate(zip(names, colours, strict=True)):
            vals = [_finite(series[name].get(c)) for c in chunk]
            ys = [y[k] - 0.4 + bar_h * (i + 0.5) for k, v in enumerate(vals) if v is not None]
            ws = [v * 100.0 for v in vals if v is not None]
            ax.barh(ys, ws, height=bar_h * 0.92, color=colour, label=name if p == 0 else None)
        ax.set_yticks(y, chunk, fontsize=9)
        ax.set_ylim(per_panel - 0.5, -0.5)  # first class on top; panels share row height
        ax.set_xlim(0, 100)
        ax.set_xlabel("IoU (%)")
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    fig.legend(
        loc="outside upper center", ncol=min(n_ser, 3), fontsize=8, frameon=False,
        title="Per-class IoU  (no bar: class absent from that evaluation)", title_fontsize=10,
    )  # fmt: skip
    return _save(fig, path)


def _label(a: Mapping[str, Any]) -> str:
    """Artifact name, with its device where the name does not already say it."""
    name, device = str(a.get("name", "?")), a.get("device")
    return f"{name} ({device})" if device and str(device) not in name else name


def _latency(a: Mapping[str, Any], key: str) -> float | None:
    lat = a.get("latency_ms") or {}
    return _finite(lat.get(key))


def plot_latency(artifacts: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Stacked preprocess / inference / postprocess ms per artifact, p99 marker, FPS label."""
    rows = [a for a in artifacts if a.get("stages_ms") or _latency(a, "p50") is not None]
    fig = _new_figure(WIDTH_IN, 1.6 + 0.5 * max(len(rows), 2))
    if not rows:
        _empty(fig, "no artifact was benchmarked")
        return _save(fig, path)
    ax = fig.add_subplot()
    y = np.arange(len(rows), dtype=np.float64)
    right = 0.0
    no_split = False
    for k, a in enumerate(rows):
        stages = a.get("stages_ms") or {}
        parts = [_finite(stages.get(s)) for s in STAGES]
        left = 0.0
        if any(p is not None for p in parts):
            for p, colour in zip(parts, STAGE_COLOURS, strict=True):
                if p is not None:
                    ax.barh(y[k], p, left=left, height=0.6, color=colour)
                    left += p
        else:  # benchmarked end to end only
            left = _latency(a, "mean") or _latency(a, "p50") or 0.0
            ax.barh(y[k], left, height=0.6, color="0.7")
            no_split = True
        p99 = _latency(a, "p99")
        if p99 is not None:
            ax.plot([p99], [y[k]], marker="|", markersize=18, mew=2, color="black")
        end = max(left, p99 or 0.0)
        right = max(right, end)
        fps = _finite(a.get("fps"))
        note = f"  {left:.1f} ms" if left >= 10 else f"  {left:.2f} ms"
        ax.text(
            end,
            y[k],
            note + (f" · {fps:.1f} FPS" if fps is not None else ""),
            va="center",
            fontsize=9,
        )
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=s) for s, c in zip(STAGES, STAGE_COLOURS, strict=True)]
    if no_split:
        handles.append(Patch(color="0.7", label="end to end (no stage split)"))
    handles.append(
        Line2D([], [], marker="|", markersize=12, mew=2, color="black", ls="", label="p99")
    )
    ax.set_yticks(y, [_label(a) for a in rows], fontsize=9)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(0, max(right, 1e-3) * 1.35)  # room for the ms / FPS labels
    ax.set_xlabel("latency per frame (ms), stacked stages = mean")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    fig.legend(
        handles=handles, loc="outside upper center", ncol=len(handles), fontsize=8,
        frameon=False, title="Latency by stage", title_fontsize=10,
    )  # fmt: skip
    return _save(fig, path)


def plot_miou_vs_latency(
    artifacts: Sequence[Mapping[str, Any]],
    path: Path,
    references: Mapping[str, float | None] | None = None,
) -> Path:
    """Scatter of mIoU (%) against p50 latency (ms): up and left is better.

    `references` (e.g. {"teacher val": 0.72}) draw dashed horizontal mIoU lines.
    """
    pts = [
        (a, _latency(a, "p50"), _finite(a.get("miou")))
        for a in artifacts
        if _latency(a, "p50") is not None and _finite(a.get("miou")) is not None
    ]
    refs = {k: v for k, v in (references or {}).items() if _finite(v) is not None}
    fig = _new_figure(WIDTH_IN, 4.8)
    if not pts:
        _empty(fig, "no artifact has both an mIoU and a latency")
        return _save(fig, path)
    ax = fig.add_subplot()
    colours = _series_colours(len(pts))
    for (a, lat, miou), colour in zip(pts, colours, strict=True):
        marker = PRECISION_MARKERS.get(str(a.get("precision", "")).lower(), "D")
        ax.scatter(
            [lat], [miou * 100.0], s=90, marker=marker, color=colour,
            edgecolor="black", linewidth=0.6, label=_label(a), zorder=3,
        )  # fmt: skip
    for (name, value), style in zip(refs.items(), ("--", ":", "-."), strict=False):
        ax.axhline(float(value) * 100.0, ls=style, color="0.45", lw=1, label=name)
    lats = [p[1] for p in pts]
    if min(lats) > 0 and max(lats) / min(lats) > 10:  # e.g. CPU and TensorRT side by side
        from matplotlib.ticker import ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
    ys = [p[2] * 100.0 for p in pts] + [float(v) * 100.0 for v in refs.values()]
    pad = max(1.0, (max(ys) - min(ys)) * 0.15)
    ax.set_ylim(max(0.0, min(ys) - pad), min(100.0, max(ys) + pad))
    xmax = max(lats)
    if ax.get_xscale() == "linear":
        ax.set_xlim(0, xmax * 1.15)
    ax.text(
        0.01, 0.98, "better: up and left", transform=ax.transAxes, va="top", fontsize=8, color="0.4"
    )
    ax.set_xlabel("latency p50 (ms per frame, end to end)")
    ax.set_ylabel("mIoU (%)")
    ax.grid(alpha=0.3)
    ax.set_title("Accuracy vs speed", fontsize=11)
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    return _save(fig, path)


def _palette_lut(n_classes: int, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """256x3 uint8 RGB lookup; ignore (255) and unknown ids stay black."""
    colours = [tuple(int(v) for v in c) for c in palette][:n_classes]
    if len(colours) < n_classes:  # fill a short palette deterministically
        colours += list(generated_palette(n_classes))[len(colours) :]
    lut = np.zeros((256, 3), dtype=np.uint8)
    if colours:
        lut[: len(colours)] = np.asarray(colours, dtype=np.uint8)
    return lut


def _fit(arr: np.ndarray, size: tuple[int, int], labels: bool) -> np.ndarray:
    h, w = size
    if arr.shape[:2] == (h, w):
        return arr
    interp = cv2.INTER_NEAREST if labels else cv2.INTER_AREA
    return cv2.resize(arr, (w, h), interpolation=interp)


def _classes_shown(examples: Sequence[Mapping[str, Any]], n_classes: int) -> list[int]:
    """Class ids that occur in any ground truth or prediction shown (all when none does)."""
    seen = np.zeros(256, dtype=bool)
    for ex in examples:
        maps = [ex.get("ground_truth"), *(ex.get("predictions") or {}).values()]
        for lab in maps:
            if lab is not None:
                seen[np.unique(np.asarray(lab, dtype=np.uint8))] = True
    ids = [i for i in range(n_classes) if seen[i]]
    return ids or list(range(n_classes))


def plot_examples(
    examples: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    palette: Sequence[Sequence[int]],
    path: Path,
    max_cell_px: int = 240,
) -> Path:
    """Grid: image | ground truth | one column per prediction, colourised; class legend below."""
    pred_names: list[str] = []
    for ex in examples:
        pred_names.extend(n for n in (ex.get("predictions") or {}) if n not in pred_names)
    cols = ["image", "ground truth", *pred_names]
    n_rows, n_cols = len(examples), len(cols)
    cell_w = min(2.4, 16.0 / n_cols)
    width = cell_w * n_cols
    first = np.asarray(examples[0]["image"]) if examples else np.zeros((1, 2, 3), np.uint8)
    aspect = first.shape[0] / max(first.shape[1], 1)
    shown = _classes_shown(examples, len(class_names))
    legend_cols = max(1, min(len(shown) + 1, int(width / 1.3)))
    legend_h = 0.25 + 0.2 * math.ceil((len(shown) + 1) / legend_cols)
    fig = _new_figure(width, 0.3 + legend_h + n_rows * (cell_w * aspect + 0.08))
    lut = _palette_lut(len(class_names), palette)
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.01, hspace=0.01)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    ignore_seen = False
    for r, ex in enumerate(examples):
        image = np.asarray(ex["image"])
        if image.ndim == 2:  # a grey image: imshow would colour-map it
            image = np.repeat(image[..., None], 3, axis=2)
        h, w = image.shape[:2]
        scale = min(1.0, max_cell_px / max(h, w))  # keep the PNG small
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        tiles: list[np.ndarray | None] = [_fit(image, size, labels=False)]
        gt = ex.get("ground_truth")
        if gt is not None:
            gt = np.asarray(gt)
            ignore_seen |= bool((gt == IGNORE_INDEX).any())
        for lab in (gt, *((ex.get("predictions") or {}).get(n) for n in pred_names)):
            tiles.append(None if lab is None else lut[_fit(np.asarray(lab, np.uint8), size, True)])
        for c, tile in enumerate(tiles):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if tile is None:  # a blank tile of the same shape keeps the grid aligned
                ax.imshow(np.full((*size, 3), 235, np.uint8))
                ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.imshow(tile, interpolation="nearest")
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor=tuple(lut[i] / 255.0), edgecolor="0.5", label=class_names[i]) for i in shown
    ]
    if ignore_seen:
        handles.append(Patch(facecolor="black", edgecolor="0.5", label="ignore"))
    if handles:
        fig.legend(
            handles=handles, loc="outside lower center", ncol=legend_cols, fontsize=8, frameon=False
        )
    return _save(fig, path)
