"""Latency and throughput of a `Segmenter`, split into preprocess / inference / postprocess.

What is timed is what a deployment runs: a full-size BGR frame goes through
`Segmenter.predict_batch`: preprocess (resize + normalise; for a uint8-input graph the
resize alone), inference (the backend, host<->device copies included; for TensorRT also
the CUDA graph launch), postprocess (argmax when the model outputs logits, label map
resized back to the frame). Each result names the input and output path it timed and
the host's share (pre + post over end to end).
`time.perf_counter` around each stage; warm-up iterations are run and discarded first.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.errors import SegkdError
from core.schema.bench import BENCH
from runtime.jetson_facts import clocks_warning, power_meter, read_jetson_facts
from runtime.machine import cpu_info, describe_cpu
from runtime.segmenter import Segmenter

log = logging.getLogger(__name__)

STAGES = ("preprocess", "inference", "postprocess", "end_to_end")


@dataclass(frozen=True)
class LatencyStats:
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    fps: float  # frames per second at the mean latency (batch / mean)

    @classmethod
    def from_seconds(cls, samples: Sequence[float], batch: int) -> LatencyStats:
        ms = np.asarray(samples, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        mean = float(ms.mean())
        return cls(
            mean_ms=mean,
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            min_ms=float(ms.min()),
            max_ms=float(ms.max()),
            fps=batch * 1e3 / mean if mean > 0 else float("inf"),
        )


@dataclass(frozen=True)
class BenchResult:
    model: str | None
    arch: str
    backend: str
    device: str
    provider: str
    precision: str
    input_size: tuple[int, int]  # network input (H, W)
    frame_size: tuple[int, int]  # frames fed in (H, W)
    batch: int
    iters: int
    warmup: int
    preprocess: LatencyStats
    inference: LatencyStats
    postprocess: LatencyStats
    end_to_end: LatencyStats
    host: str
    cpu: dict[str, Any]  # model, cores and ISA flags (runtime.machine)
    input_kind: str = "float32 NCHW"  # the graph input: dtype and layout
    output_kind: str = "logits"  # logits | labels | labels-lowres
    variant: str | None = None  # export.json's variant (portable, tensorrt, cpu)
    # On a Jetson (runtime/jetson_facts.py): release, power mode, clocks; power drawn during
    # the timed loop (mean W, mJ per frame). None elsewhere.
    jetson: dict[str, Any] | None = None
    power: dict[str, Any] | None = None

    @property
    def host_share(self) -> float:
        """(pre + post) / end to end, on the means: the host's part of a frame."""
        e2e = self.end_to_end.mean_ms
        return (self.preprocess.mean_ms + self.postprocess.mean_ms) / e2e if e2e > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["frame_size"] = list(self.frame_size)
        d["host_share"] = self.host_share
        return d


def synthetic_frame(size: tuple[int, int] = (1024, 2048), seed: int = 0) -> np.ndarray:
    """A street-like BGR frame (sky, buildings, road, cars, texture noise), not a flat array."""
    h, w = size
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), dtype=np.uint8)
    sky = np.linspace(235, 160, h // 3, dtype=np.float32)[:, None]
    img[: h // 3] = np.stack([np.broadcast_to(sky, (h // 3, w))] * 3, axis=-1).astype(np.uint8)
    img[: h // 3, :, 1] -= 20  # bluish (BGR)
    img[: h // 3, :, 2] -= 60
    img[h // 3 :] = (90, 90, 95)
    for _ in range(12):  # buildings
        x0 = int(rng.integers(0, w))
        bw, bh = int(rng.integers(w // 20, w // 6)), int(rng.integers(h // 6, h // 2))
        color = tuple(int(c) for c in rng.integers(40, 200, 3))
        cv2.rectangle(img, (x0, h // 2 - bh), (x0 + bw, h // 2), color, cv2.FILLED)
    road = np.array([[0, h], [w, h], [w * 3 // 5, h // 2], [w * 2 // 5, h // 2]], np.int32)
    cv2.fillPoly(img, [road], (128, 64, 128))
    for _ in range(6):  # cars
        cx, cy = int(rng.integers(0, w)), int(rng.integers(h // 2, h - h // 10))
        s = max(4, cy * w // (8 * h))
        cv2.rectangle(img, (cx, cy - s // 2), (cx + s, cy), (142, 0, 0), cv2.FILLED)
    noise = rng.integers(-12, 13, size=(h, w, 1), dtype=np.int16)
    return np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _host() -> str:
    return f"{platform.system()}, {describe_cpu()}, Python {platform.python_version()}"


def benchmark(
    segmenter: Segmenter,
    frames: Sequence[np.ndarray] | None = None,
    *,
    frame_size: tuple[int, int] = (1024, 2048),
    iters: int = BENCH.default("iters"),
    warmup: int = BENCH.default("warmup"),
    batch: int = 1,
    on_iteration: Callable[[int, int], None] | None = None,
    device_root: Path | str = "/",
) -> BenchResult:
    """Time `iters` calls of `predict_batch` on `batch` frames each (after `warmup` calls).

    frames: BGR uint8 frames to cycle through; default one synthetic street frame of
    `frame_size` (H, W), Cityscapes' 1024x2048 unless told otherwise.
    on_iteration(done, total) is called after each call (warm-up included), for progress.
    device_root: where the Jetson's /etc, /proc and /sys are (tests pass a fixture tree);
    on a Jetson the INA3221 rails are sampled through the timed iterations.
    """
    if iters < 1 or warmup < 0 or batch < 1:
        raise SegkdError(
            f"bench needs iters >= 1, warmup >= 0, batch >= 1 (got {iters}, {warmup}, {batch})"
        )
    fixed = segmenter.fixed_batch
    if fixed and fixed != batch:
        raise SegkdError(
            f"{segmenter.model_path}: model is exported for batch {fixed}; run bench with --batch {fixed}"
        )
    pool = list(frames) if frames else [synthetic_frame(frame_size)]
    sizes = {f.shape[:2] for f in pool}
    frame_hw = pool[0].shape[:2] if len(sizes) == 1 else (-1, -1)  # -1: mixed sizes
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    total, cursor = warmup + iters, 0
    jetson = read_jetson_facts(device_root)
    meter = power_meter(device_root) if jetson is not None else None
    warning = clocks_warning(jetson)
    if warning:
        log.warning(warning)
    for i in range(total):
        if i == warmup and meter is not None:
            meter.start()
        chunk = [pool[(cursor + k) % len(pool)] for k in range(batch)]
        cursor += batch
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        segmenter.predict_batch(chunk, timings=t)
        e2e = time.perf_counter() - t0
        if i >= warmup:
            times["preprocess"].append(t["preprocess"])
            times["inference"].append(t["infer"])
            times["postprocess"].append(t["postprocess"])
            times["end_to_end"].append(e2e)
        if on_iteration is not None:
            on_iteration(i + 1, total)
    power = meter.stop(frames=iters * batch) if meter is not None else None
    stats = {s: LatencyStats.from_seconds(v, batch) for s, v in times.items()}
    path = segmenter.model_path
    return BenchResult(
        model=str(path) if path else None,
        arch=segmenter.arch,
        backend=segmenter.backend_name,
        device=segmenter.device,
        provider=segmenter.provider,
        precision=segmenter.precision,
        input_size=segmenter.input_size,
        frame_size=(int(frame_hw[0]), int(frame_hw[1])),
        batch=batch,
        iters=iters,
        warmup=warmup,
        host=_host(),
        cpu=cpu_info(),
        input_kind=f"{segmenter.preprocess.dtype} {segmenter.preprocess.layout}",
        output_kind=segmenter.output_kind,
        variant=segmenter.meta.extra.get("variant"),
        jetson=jetson.to_dict() if jetson is not None else None,
        power=power,
        **stats,
    )


def _short_names(results: Sequence[BenchResult]) -> list[str]:
    """File names, with the parent folder where two results share one (model.onnx ...)."""
    names = [Path(r.model).name if r.model else "-" for r in results]
    return [
        str(Path(*Path(r.model).parts[-2:])) if r.model and names.count(n) > 1 else n
        for r, n in zip(results, names, strict=True)
    ]


def format_table(results: Sequence[BenchResult], title: str | None = "segkd bench") -> Any:
    """A rich Table, one row per result, for side-by-side comparison (print it with rich)."""
    from rich.table import Table  # rich only where a table is drawn: runtime imports without it

    table = Table(title=title, caption="milliseconds per batch; FPS = frames/s end to end")
    for col in ("model", "backend", "device", "prec", "input", "in/out", "batch"):
        table.add_column(col, overflow="fold")
    cols = ("pre", "infer", "infer p90", "infer p99", "post", "e2e", "e2e p99", "host %", "FPS")
    for col in cols:
        table.add_column(col, justify="right")
    for name, r in zip(_short_names(results), results, strict=True):
        table.add_row(
            name,
            r.backend,
            r.device,
            r.precision,
            f"{r.input_size[0]}x{r.input_size[1]}",
            f"{r.input_kind.split()[0]}/{r.output_kind}",
            str(r.batch),
            f"{r.preprocess.mean_ms:.2f}",
            f"{r.inference.mean_ms:.2f}",
            f"{r.inference.p90_ms:.2f}",
            f"{r.inference.p99_ms:.2f}",
            f"{r.postprocess.mean_ms:.2f}",
            f"{r.end_to_end.mean_ms:.2f}",
            f"{r.end_to_end.p99_ms:.2f}",
            f"{100 * r.host_share:.1f}",
            f"{r.end_to_end.fps:.1f}",
        )
    return table
