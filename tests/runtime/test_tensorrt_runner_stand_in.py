"""The TensorRT runner's own logic, against stand-ins for the tensorrt and cuda-python modules.

No machine here has TensorRT or a GPU (`test_runtime_tensorrt.py` skips), so these
stand-ins check what the runner asks of the documented APIs and what it does with the
answers: the engine's I/O read once (runtime/backends/tensorrt_io.py), the GPU named
through runtime/gpu.py, buffers bound per input shape and the profile checked, only the
outputs asked for copied back, the CUDA graph recorded after one warm run. The stand-in
engine computes real logits (a fixed 1x1 convolution of the input) from the bytes the
runner copied into its "device" memory, so what comes back is checked against numpy.
"""

from __future__ import annotations

import ctypes
import json
import sys
import types
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import SegkdError
from runtime.backends.tensorrt import TensorRTBackend
from runtime.loader import open_segmenter
from tests.runtime.rt_models import INPUT_SIZE, NUM_CLASSES, sample_frames, segkd_meta

WEIGHTS = np.random.default_rng(3).normal(size=(NUM_CLASSES, 3)).astype(np.float32)
PLAN = b"stand-in engine plan"
PROFILE = ((1, 3, 16, 16), (1, 3, *INPUT_SIZE), (4, 3, 128, 128))


def _array(address: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    count = int(np.prod(shape))
    raw = (ctypes.c_byte * (count * np.dtype(dtype).itemsize)).from_address(address)
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


class FakeCudart(types.ModuleType):
    """cuda-python's runtime: (error, *values) tuples, memory that is host memory."""

    class cudaMemcpyKind(IntEnum):
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode(IntEnum):
        cudaStreamCaptureModeThreadLocal = 1

    def __init__(self) -> None:
        super().__init__("cuda.bindings.runtime")
        self.blocks: dict[int, Any] = {}
        self.copies: list[int] = []  # kinds, in order
        self.capturing: list[Any] | None = None
        self.launches = 0

    def _alloc(self, n: int) -> tuple[int, int]:
        buf = ctypes.create_string_buffer(n)
        self.blocks[ctypes.addressof(buf)] = buf
        return 0, ctypes.addressof(buf)

    cudaMalloc = cudaMallocHost = _alloc

    def cudaFree(self, ptr: int) -> tuple[int]:
        del self.blocks[ptr]
        return (0,)

    cudaFreeHost = cudaFree

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: int, stream: int) -> tuple[int]:
        ctypes.memmove(dst, src, n)
        self.copies.append(int(kind))
        return (0,)

    def cudaGetDeviceCount(self) -> tuple[int, int]:
        return 0, 1

    def cudaSetDevice(self, index: int) -> tuple[int]:
        return (0,)

    def cudaGetDeviceProperties(self, index: int) -> tuple[int, Any]:
        return 0, types.SimpleNamespace(name=b"Stand-in GPU\x00", major=8, minor=7, integrated=1)

    def cudaMemGetInfo(self) -> tuple[int, int, int]:
        return 0, 6 * 2**30, 8 * 2**30

    def cudaGetErrorName(self, err: int) -> tuple[int, bytes]:
        return 0, b"cudaErrorStandIn"

    def cudaStreamCreate(self) -> tuple[int, int]:
        return 0, 7

    def cudaStreamSynchronize(self, stream: int) -> tuple[int]:
        return (0,)

    def cudaStreamDestroy(self, stream: int) -> tuple[int]:
        return (0,)

    def cudaStreamBeginCapture(self, stream: int, mode: int) -> tuple[int]:
        self.capturing = []
        return (0,)

    def cudaStreamEndCapture(self, stream: int) -> tuple[int, Any]:
        graph, self.capturing = self.capturing, None
        return 0, graph

    def cudaGraphInstantiate(self, graph: Any, flags: int) -> tuple[int, Any]:
        return 0, graph

    def cudaGraphLaunch(self, graph: Any, stream: int) -> tuple[int]:
        self.launches += 1
        for work in graph:
            work()
        return (0,)

    def cudaGraphDestroy(self, graph: Any) -> tuple[int]:
        return (0,)

    cudaGraphExecDestroy = cudaGraphDestroy

    def cudaGetLastError(self) -> tuple[int]:
        return (0,)


def fake_tensorrt(cudart: FakeCudart) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"
    trt.TensorIOMode = IntEnum("TensorIOMode", {"INPUT": 0, "OUTPUT": 1}, start=0)
    trt.DataType = IntEnum("DataType", {"FLOAT": 0}, start=0)
    trt.nptype = lambda dt: {0: np.float32}[int(dt)]

    class ILogger:
        Severity = IntEnum("Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2}, start=0)

        def __init__(self) -> None:
            pass

    class Context:
        def __init__(self) -> None:
            self.shape: tuple[int, ...] | None = None
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            self.shape = tuple(shape)
            return True

        def infer_shapes(self) -> list[str]:
            return []

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            b, _, h, w = self.shape
            return self.shape if name == "input" else (b, NUM_CLASSES, h, w)

        def set_tensor_address(self, name: str, ptr: int) -> bool:
            self.addresses[name] = ptr
            return True

        def _compute(self) -> None:
            b, _, h, w = self.shape
            x = _array(self.addresses["input"], self.shape, np.float32)
            out = _array(self.addresses["logits"], (b, NUM_CLASSES, h, w), np.float32)
            out[...] = np.einsum("kc,bchw->bkhw", WEIGHTS, x)

        def execute_async_v3(self, stream: int) -> bool:
            if cudart.capturing is not None:
                cudart.capturing.append(self._compute)
            else:
                self._compute()
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i: int) -> str:
            return ("input", "logits")[i]

        def get_tensor_mode(self, name: str) -> Any:
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (-1, 3, -1, -1) if name == "input" else (-1, NUM_CLASSES, -1, -1)

        def get_tensor_dtype(self, name: str) -> Any:
            return trt.DataType.FLOAT

        def get_tensor_profile_shape(self, name: str, profile: int) -> tuple[tuple[int, ...], ...]:
            return PROFILE

        def create_execution_context(self) -> Context:
            return Context()

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, plan: bytes) -> Engine | None:
            if plan != PLAN:
                self.logger.log(ILogger.Severity.ERROR, "stand-in: serialization mismatch")
                return None
            return Engine()

    trt.ILogger, trt.Runtime = ILogger, Runtime
    return trt


@pytest.fixture
def cudart(monkeypatch: pytest.MonkeyPatch) -> FakeCudart:
    rt = FakeCudart()
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = rt
    cuda = types.ModuleType("cuda")
    cuda.bindings = bindings
    for name, module in (
        ("cuda", cuda),
        ("cuda.bindings", bindings),
        ("cuda.bindings.runtime", rt),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(rt))
    return rt


@pytest.fixture
def engine(tmp_path: Path) -> Path:
    path = tmp_path / "model.fp32.engine"
    path.write_bytes(PLAN)
    meta = {**segkd_meta("logits", "fp32"), "tensorrt_version": "10.3.0"}
    (tmp_path / "model.fp32.engine.json").write_text(json.dumps(meta))
    return path


def test_the_runner_keeps_the_contract(cudart: FakeCudart, engine: Path) -> None:
    with TensorRTBackend(engine, device="cuda:0", precision="fp32", cuda_graph=False) as r:
        assert (r.name, r.device, r.provider) == (
            "tensorrt",
            "CUDA:0 Stand-in GPU",
            "TensorRT 10.3.0",
        )
        assert (r.input_name, r.output_name, r.output_kind) == ("input", "logits", "logits")
        assert r.input_shape == (None, 3, None, None) and r.logits_output == "logits"
        assert r.outputs[0].dtype == np.float32
        x = np.random.default_rng(0).normal(size=(2, 3, *INPUT_SIZE)).astype(np.float32)
        got = r.infer({"input": x})
        assert list(got) == ["logits"]
        np.testing.assert_allclose(got["logits"], np.einsum("kc,bchw->bkhw", WEIGHTS, x), rtol=1e-5)
        small = x[:1, :, :32, :48]  # another shape: buffers bound again
        np.testing.assert_allclose(
            r.run(small), np.einsum("kc,bchw->bkhw", WEIGHTS, small), rtol=1e-5
        )
        with pytest.raises(SegkdError, match="outside the engine's profile"):
            r.run(x[:, :, :8])
        with pytest.raises(SegkdError, match="feed names"):
            r.infer({"pixels": x})
        with pytest.raises(SegkdError, match="no output"):
            r.infer({"input": x}, ["labels"])
    assert not cudart.blocks  # every buffer freed on close


def test_a_cuda_graph_is_recorded_after_one_warm_run(cudart: FakeCudart, engine: Path) -> None:
    r = TensorRTBackend(engine, device="auto", precision="fp32")
    x = np.random.default_rng(1).normal(size=(1, 3, *INPUT_SIZE)).astype(np.float32)
    first = r.run(x)
    assert r.uses_cuda_graph and cudart.launches == 0
    again = r.run(x + 1)  # replayed: the graph reads the new input from the same buffer
    assert cudart.launches == 1
    np.testing.assert_allclose(again, np.einsum("kc,bchw->bkhw", WEIGHTS, x + 1), rtol=1e-5)
    assert not np.allclose(first, again)
    r.close()


def test_metadata_names_are_checked_and_foreign_engines_ask_for_a_rebuild(
    cudart: FakeCudart, engine: Path
) -> None:
    with pytest.raises(SegkdError, match="metadata names output 'labels'"):
        TensorRTBackend(engine, output_name="labels")
    with pytest.raises(SegkdError, match="runs only on a CUDA GPU"):
        TensorRTBackend(engine, device="cpu")
    other = engine.with_name("other.engine")
    other.write_bytes(b"an engine from elsewhere")
    with pytest.raises(SegkdError, match=r"serialization mismatch.*segkd build"):
        TensorRTBackend(other, built_with={"tensorrt_version": "10.7.0", "gpu": "Orin"})


def test_a_segmenter_runs_through_the_tensorrt_runner(cudart: FakeCudart, engine: Path) -> None:
    seg = open_segmenter(engine, backend="tensorrt", cuda_graph=False)
    assert seg.backend_name == "tensorrt" and seg.outputs_logits
    batch, _ = seg.preprocess_frames(sample_frames(2))
    want = np.einsum("kc,bchw->bkhw", WEIGHTS, batch).argmax(1)
    np.testing.assert_array_equal(seg.infer(batch), want)
    frame = sample_frames(1)[0]
    assert seg.predict(frame).shape == frame.shape[:2]
    assert seg.predict_upsampled(frame).shape == frame.shape[:2]
    seg.close()
