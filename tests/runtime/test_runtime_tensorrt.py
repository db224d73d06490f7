"""TensorRT backend on a real GPU: engine from the tiny ONNX, parity with ONNX Runtime.

These tests need the tensorrt and cuda-python packages and an NVIDIA GPU. No machine
this project has run on so far has them, so here they skip with the reason below.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import SegkdError
from runtime.loader import open_segmenter
from tests.runtime.rt_models import INPUT_SIZE, sample_frames, segkd_meta

trt = pytest.importorskip(
    "tensorrt",
    reason="TensorRT is not installed (no wheel reachable here, no NVIDIA GPU); the tensorrt "
    "backend is written against the documented 10.x/11.x API and is untested until it runs on one",
)
pytestmark = pytest.mark.tensorrt


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        cudart = pytest.importorskip("cuda.cudart", reason="cuda-python is not installed")
    return cudart


@pytest.fixture(scope="module")
def engine_path(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cudart = _cudart()
    err, count = cudart.cudaGetDeviceCount()
    if int(getattr(err, "value", err)) != 0 or count < 1:
        pytest.skip("TensorRT is installed but no CUDA GPU is visible")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode since 10.0
    parser = trt.OnnxParser(network, logger)
    assert parser.parse((model_dir / "model.onnx").read_bytes()), [
        str(parser.get_error(i)) for i in range(parser.num_errors)
    ]
    config = builder.create_builder_config()
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # true fp32, to compare labels exactly
    profile = builder.create_optimization_profile()
    h, w = INPUT_SIZE
    profile.set_shape("input", (1, 3, h, w), (1, 3, h, w), (4, 3, h, w))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None, "engine build failed"
    path = tmp_path_factory.mktemp("trt") / "model.fp32.engine"
    path.write_bytes(bytes(plan))
    meta = {**segkd_meta("logits", "fp32"), "tensorrt_version": trt.__version__}
    (path.parent / (path.name + ".json")).write_text(json.dumps(meta))
    return path


def test_engine_matches_onnxruntime_and_uses_a_cuda_graph(
    model_dir: Path, engine_path: Path
) -> None:
    ref = open_segmenter(model_dir / "model.onnx", device="cpu")
    seg = open_segmenter(engine_path, backend="tensorrt")
    assert seg.backend_name == "tensorrt" and seg.device.startswith("CUDA:0")
    assert seg.provider == f"TensorRT {trt.__version__}"
    for frame in sample_frames():
        np.testing.assert_array_equal(seg.predict(frame), ref.predict(frame))
    assert seg._backend.uses_cuda_graph  # captured after the first run at this shape
    batch, _ = ref.preprocess_frames(sample_frames(2))  # a new shape: rebind, recapture
    np.testing.assert_array_equal(seg.infer(batch), ref.infer(batch))
    seg.close()


def test_engine_without_cuda_graph(model_dir: Path, engine_path: Path) -> None:
    ref = open_segmenter(model_dir / "model.onnx", device="cpu")
    seg = open_segmenter(engine_path, cuda_graph=False)
    frame = sample_frames(1)[0]
    for _ in range(2):
        np.testing.assert_array_equal(seg.predict(frame), ref.predict(frame))
    assert not seg._backend.uses_cuda_graph


def test_a_foreign_or_broken_engine_asks_for_a_rebuild(engine_path: Path, tmp_path: Path) -> None:
    bad = tmp_path / "other.engine"
    bad.write_bytes(b"ptrt" + bytes(range(256)) * 4)
    meta = {**segkd_meta("logits", "fp16"), "tensorrt_version": "0.0.1", "gpu": "Imaginary GPU"}
    (tmp_path / "other.engine.json").write_text(json.dumps(meta))
    with pytest.raises(SegkdError, match="rebuild it here") as e:
        open_segmenter(bad)
    assert str(bad) in str(e.value) and "0.0.1" in str(e.value)
