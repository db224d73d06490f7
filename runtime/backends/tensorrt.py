"""TensorRT backend for serialized engines (TensorRT 10.x on JetPack 6, 11.x on desktops).

Written against the documented name-based I/O API only (num_io_tensors, get_tensor_*,
set_input_shape, set_tensor_address, execute_async_v3); the binding-index API is gone
since 10.0. Memory, stream and CUDA graphs go through cuda-python (NVIDIA's own
samples use it since 10.14; pycuda and torch can fight over CUDA contexts).

NOT RUN HERE: no machine this project could reach has TensorRT, so this module has
only been checked against the API documentation; its tests skip without tensorrt.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import SegkdError
from runtime.backends.base import Runner
from runtime.backends.tensorrt_io import engine_io
from runtime.gpu import cuda_call, gpu_identity, import_cudart

log = logging.getLogger(__name__)


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise SegkdError(
            "the tensorrt backend needs the TensorRT Python package (JetPack ships it; "
            "desktop: pip install tensorrt) and an NVIDIA GPU; use --backend onnxruntime "
            "with the .onnx file instead"
        ) from None
    return tensorrt


def tensorrt_available() -> bool:
    try:
        import_tensorrt()
    except SegkdError:
        return False
    return True


class _Cuda:
    """cuda-python's runtime, each call checked (runtime/gpu.py's cuda_call)."""

    def __init__(self) -> None:
        self.rt = import_cudart()

    def __call__(self, result: Any) -> Any:
        return cuda_call(self.rt, result)


class _Buffer:
    """A pinned host array and a device allocation of the same size for one I/O tensor."""

    def __init__(self, cuda: _Cuda, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.cuda, self.shape, self.dtype = cuda, shape, dtype
        self.nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
        self.host_ptr = int(cuda(cuda.rt.cudaMallocHost(self.nbytes)))
        self.device_ptr = int(cuda(cuda.rt.cudaMalloc(self.nbytes)))
        raw = (ctypes.c_byte * self.nbytes).from_address(self.host_ptr)
        self.host = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape))).reshape(shape)

    def free(self) -> None:
        if self.device_ptr:
            self.cuda.rt.cudaFree(self.device_ptr)
            self.device_ptr = 0
        if self.host_ptr:
            self.host = None  # type: ignore[assignment]
            self.cuda.rt.cudaFreeHost(self.host_ptr)
            self.host_ptr = 0


class TensorRTBackend(Runner):
    name = "tensorrt"

    def __init__(
        self,
        path: Path | str,
        *,
        device: str = "auto",
        precision: str = "fp16",
        output_kind: str = "logits",
        input_name: str | None = None,
        output_name: str | None = None,
        cuda_graph: bool = True,
        built_with: dict[str, Any] | None = None,
    ) -> None:
        # Set first so close() works on an instance whose __init__ failed half way.
        self._cuda: _Cuda | None = None
        self._stream: Any = None
        self._buffers: dict[str, _Buffer] = {}
        self._graph_exec: Any = None
        self.context = self.engine = None
        self._trt = import_tensorrt()
        self.path = Path(path)
        self.precision = precision
        self._cuda = _Cuda()
        gpu_name = self._use_gpu(device)
        self.provider = f"TensorRT {self._trt.__version__}"
        self._load(built_with, gpu_name)
        self._describe_io(input_name, output_name, output_kind)
        # non-default stream: required for graph capture
        self._stream = self._cuda(self._cuda.rt.cudaStreamCreate())
        self._bound: tuple[int, ...] | None = None
        self._use_graph = cuda_graph
        self._runs = 0

    # -- setup -------------------------------------------------------------------------
    def _use_gpu(self, device: str) -> str:
        """Make the GPU `device` names current (runtime/gpu.py); returns its name."""
        kind, _, index = device.lower().partition(":")
        if kind not in ("auto", "cuda", "tensorrt"):
            raise SegkdError(f"--device {device}: a TensorRT engine runs only on a CUDA GPU")
        try:
            gpu = gpu_identity(int(index) if index.isdigit() else 0)
        except SegkdError as e:
            raise SegkdError(f"--device {device}: {e}") from None
        self.device = f"CUDA:{gpu.index} {gpu.name}"
        return gpu.name

    def _load(self, built_with: dict[str, Any] | None, gpu_name: str) -> None:
        trt = self._trt
        self._errors: list[str] = []
        self._logger = self._make_logger()
        self._runtime = trt.Runtime(self._logger)
        try:
            plan = self.path.read_bytes()
        except OSError as e:
            raise SegkdError(f"cannot read engine {self.path}: {e}") from None
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise SegkdError(self._rebuild_message(built_with, gpu_name))
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise SegkdError(
                f"{self.path}: TensorRT could not create an execution context (GPU memory?)"
            )

    def _describe_io(
        self, input_name: str | None, output_name: str | None, output_kind: str
    ) -> None:
        """The runner's inputs and outputs from the engine (tensorrt_io), checked against
        the names segkd's metadata gives; the main output first."""
        inputs, outputs = engine_io(self._trt, self.engine, self.path)
        in_names, out_names = [i.name for i in inputs], [o.name for o in outputs]
        if len(inputs) != 1 or not outputs:
            raise SegkdError(
                f"{self.path}: expected one input and an output, got {in_names} / {out_names}"
            )
        if input_name and input_name != in_names[0]:
            raise SegkdError(
                f"{self.path}: metadata names input {input_name!r}, engine has {in_names}"
            )
        if output_name and output_name not in out_names:
            raise SegkdError(
                f"{self.path}: metadata names output {output_name!r}, engine has {out_names}"
            )
        if len(inputs[0].shape) != 4:
            raise SegkdError(
                f"{self.path}: input {in_names[0]!r} is {list(inputs[0].shape)}, "
                "expected N x 3 x H x W"
            )
        main = output_name or out_names[0]
        self.inputs = tuple(inputs)
        self.outputs = tuple(sorted(outputs, key=lambda o: o.name != main))
        self.output_kinds = {main: output_kind}
        self._dtypes = {t.name: t.dtype for t in (*inputs, *outputs)}

    def _make_logger(self) -> Any:
        trt, errors = self._trt, self._errors

        class _Logger(trt.ILogger):  # keeps TensorRT's own reason for a failed load
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                sev = trt.ILogger.Severity
                if severity in (sev.ERROR, sev.INTERNAL_ERROR):
                    errors.append(msg)
                    log.error("TensorRT: %s", msg)
                elif severity == sev.WARNING:
                    log.warning("TensorRT: %s", msg)

        return _Logger()

    def _rebuild_message(self, built_with: dict[str, Any] | None, gpu_name: str) -> str:
        here = f"TensorRT {self._trt.__version__} on {gpu_name}"
        built = built_with or {}
        there = ", ".join(f"{k} {v}" for k, v in built.items() if v) or "an unknown TensorRT/GPU"
        reason = self._errors[-1][:200] if self._errors else "deserialization failed"
        return (
            f"{self.path}: this engine does not load on {here} (built for {there}: {reason}); "
            "engines are tied to one TensorRT version and GPU: rebuild it here from the export "
            "folder with `segkd build FOLDER`"
        )

    def _bind(self, shape: tuple[int, ...]) -> None:
        """Set the input shape, (re)allocate every I/O buffer and register its address."""
        ctx = self.context
        fixed = self.input_shape
        for got, want in zip(shape, fixed, strict=True):
            if want is not None and got != want:
                raise SegkdError(f"{self.path}: engine input is fixed at {fixed}, got {shape}")
        if None in fixed:
            lo, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
            if any(s < a or s > b for s, a, b in zip(shape, lo, hi, strict=True)):
                raise SegkdError(
                    f"{self.path}: input {shape} is outside the engine's profile {tuple(lo)}..{tuple(hi)}"
                )
            if not ctx.set_input_shape(self.input_name, shape):
                raise SegkdError(f"{self.path}: TensorRT rejected input shape {shape}")
        missing = ctx.infer_shapes()
        if missing:
            raise SegkdError(
                f"{self.path}: shapes of {missing} are still unknown; unsupported engine"
            )
        self._release_graph()
        for buf in self._buffers.values():
            buf.free()
        self._buffers = {}
        for name, dtype in self._dtypes.items():
            dims = tuple(int(d) for d in ctx.get_tensor_shape(name))
            buf = _Buffer(self._cuda, dims, dtype)
            self._buffers[name] = buf
            if not ctx.set_tensor_address(name, buf.device_ptr):
                raise RuntimeError(f"TensorRT refused the address for {name!r}")
        self._bound = shape
        self._runs = 0

    # -- execution ---------------------------------------------------------------------
    def _enqueue(self) -> None:
        if self._graph_exec is not None:
            self._cuda(self._cuda.rt.cudaGraphLaunch(self._graph_exec, self._stream))
        elif not self.context.execute_async_v3(int(self._stream)):
            raise RuntimeError(f"TensorRT execution failed for {self.path}")

    def _capture_graph(self) -> None:
        """Record one enqueue as a CUDA graph; on any failure keep plain execution."""
        rt, cuda = self._cuda.rt, self._cuda
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        graph = None
        try:
            cuda(rt.cudaStreamBeginCapture(self._stream, mode))
            try:
                ok = self.context.execute_async_v3(int(self._stream))
            finally:
                graph = cuda(rt.cudaStreamEndCapture(self._stream))
            if not ok:
                raise RuntimeError("execute_async_v3 failed while capturing")
            try:  # CUDA 12+: (graph, flags); CUDA 11 bindings: (graph, log buffer, size)
                self._graph_exec = cuda(rt.cudaGraphInstantiate(graph, 0))
            except TypeError:
                self._graph_exec = cuda(rt.cudaGraphInstantiate(graph, b"", 0))[0]
        except Exception as e:  # some engines (e.g. with data-dependent shapes) cannot be captured
            log.info("%s: CUDA graph capture failed (%s); running without", self.path, e)
            rt.cudaGetLastError()  # clear the sticky capture error
            self._graph_exec = None
            self._use_graph = False
        finally:
            if graph is not None:
                rt.cudaGraphDestroy(graph)

    def _release_graph(self) -> None:
        if self._graph_exec is not None:
            self._cuda.rt.cudaGraphExecDestroy(self._graph_exec)
            self._graph_exec = None

    def infer(
        self, feed: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        rt, cuda = self._cuda.rt, self._cuda
        batch, names = self._input_batch(feed), self._wanted(outputs)
        if tuple(batch.shape) != self._bound:
            self._bind(tuple(int(s) for s in batch.shape))
        inp = self._buffers[self.input_name]
        np.copyto(inp.host, batch, casting="same_kind")  # fp16 engines take a cast here
        h2d, d2h = (
            rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
            rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
        )
        cuda(rt.cudaMemcpyAsync(inp.device_ptr, inp.host_ptr, inp.nbytes, h2d, self._stream))
        self._enqueue()
        for out in (self._buffers[n] for n in names):  # only what was asked leaves the GPU
            cuda(rt.cudaMemcpyAsync(out.host_ptr, out.device_ptr, out.nbytes, d2h, self._stream))
        cuda(rt.cudaStreamSynchronize(self._stream))
        self._runs += 1
        # Graphs fix shapes and addresses: capture only after one warm run at this shape.
        if self._use_graph and self._graph_exec is None and self._runs == 1:
            self._capture_graph()
        return {n: self._buffers[n].host.copy() for n in names}

    @property
    def uses_cuda_graph(self) -> bool:
        return self._graph_exec is not None

    def close(self) -> None:
        if self._cuda is None:  # failed before CUDA was touched
            return
        self._release_graph()
        for buf in self._buffers.values():
            buf.free()
        self._buffers = {}
        if self._stream is not None:
            self._cuda.rt.cudaStreamDestroy(self._stream)
            self._stream = None
        self.context = self.engine = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
