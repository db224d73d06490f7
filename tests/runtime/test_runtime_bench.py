from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import SegkdError
from runtime.bench import (
    STAGES,
    BenchResult,
    LatencyStats,
    benchmark,
    format_table,
    synthetic_frame,
)
from runtime.loader import open_segmenter


def test_bench_json_has_every_field(model_dir: Path) -> None:
    seg = open_segmenter(model_dir / "model.onnx")
    calls: list[tuple[int, int]] = []
    res = benchmark(
        seg, frame_size=(96, 160), iters=6, warmup=2, on_iteration=lambda d, t: calls.append((d, t))
    )
    assert calls[-1] == (8, 8) and len(calls) == 8
    d = json.loads(json.dumps(res.to_dict()))  # JSON-serialisable as is
    expected = {f.name for f in dataclasses.fields(BenchResult)} | {"host_share"}
    assert set(d) == expected
    pre, post, e2e = (d[k]["mean_ms"] for k in ("preprocess", "postprocess", "end_to_end"))
    assert d["host_share"] == pytest.approx((pre + post) / e2e)
    assert (d["input_kind"], d["output_kind"]) == ("float32 NCHW", "logits")
    for key in ("model", "backend", "device", "provider", "precision", "host", "arch"):
        assert isinstance(d[key], str) and d[key]
    assert d["input_size"] == [64, 64] and d["frame_size"] == [96, 160]
    assert (d["batch"], d["iters"], d["warmup"]) == (1, 6, 2)
    stat_fields = {f.name for f in dataclasses.fields(LatencyStats)}
    for stage in STAGES:
        s = d[stage]
        assert set(s) == stat_fields
        assert 0 < s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]
        assert s["fps"] == pytest.approx(1e3 / s["mean_ms"])
    # end to end covers the three stages
    parts = sum(d[s]["mean_ms"] for s in ("preprocess", "inference", "postprocess"))
    assert d["end_to_end"]["mean_ms"] >= parts * 0.99


def test_batched_bench_counts_frames_per_second(model_dir: Path, torch_loader: Any) -> None:
    seg = open_segmenter(model_dir / "model.pt", torch_model_loader=torch_loader)
    frames = [synthetic_frame((64, 128), seed=s) for s in range(3)]
    res = benchmark(seg, frames, iters=3, warmup=1, batch=2)
    assert res.batch == 2 and res.backend == "torch" and res.frame_size == (64, 128)
    assert res.end_to_end.fps == pytest.approx(2e3 / res.end_to_end.mean_ms)


def test_format_table_shows_one_row_per_model(model_dir: Path, torch_loader: Any) -> None:
    from rich.console import Console

    a = benchmark(open_segmenter(model_dir / "model.onnx"), frame_size=(64, 64), iters=2, warmup=0)
    b = benchmark(
        open_segmenter(model_dir / "model.pt", torch_model_loader=torch_loader),
        frame_size=(64, 64),
        iters=2,
        warmup=0,
    )
    console = Console(record=True, width=200)
    console.print(format_table([a, b]))
    text = console.export_text()
    assert "model.onnx" in text and "model.pt" in text
    assert "onnxruntime" in text and "torch" in text
    assert f"{a.end_to_end.fps:.1f}" in text


def test_synthetic_frame_is_a_textured_bgr_image() -> None:
    f = synthetic_frame((256, 512))
    assert f.shape == (256, 512, 3) and f.dtype == np.uint8
    assert f.std() > 20 and len(np.unique(f.reshape(-1, 3), axis=0)) > 100
    np.testing.assert_array_equal(f, synthetic_frame((256, 512)))  # deterministic


def test_bench_argument_errors(model_dir: Path) -> None:
    seg = open_segmenter(model_dir / "model.onnx")
    with pytest.raises(SegkdError, match="iters >= 1"):
        benchmark(seg, iters=0)
