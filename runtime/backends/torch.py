"""PyTorch backend: runs an nn.Module (the reference the exports are checked against).

torch is imported only when this backend is built, never when runtime is imported.
The argmax runs on the device so only the uint8 label map crosses back to the host.
On CUDA, `cuda_graph=True` records forward + argmax once per input shape and replays it:
one launch instead of hundreds, which is what small-batch real-time inference is bound by.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from core.errors import SegkdError
from runtime.backends.base import Runner, TensorInfo

log = logging.getLogger(__name__)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise SegkdError(
            "the torch backend needs PyTorch (pip install 'segkd[train]'); on a deployment "
            "machine run an exported .onnx or .engine instead"
        ) from None
    return torch


def resolve_device(device: str) -> str:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a concrete torch device string."""
    torch = _import_torch()
    kind, _, index = device.lower().partition(":")
    if kind == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise SegkdError(f"--device {device}: this PyTorch sees no CUDA GPU")
        n = int(index) if index.isdigit() else 0
        if n >= torch.cuda.device_count():
            raise SegkdError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
        return f"cuda:{n}"
    raise SegkdError(f"--device {device!r}: the torch backend takes auto, cpu or cuda[:N]")


class TorchBackend(Runner):
    """Outputs "labels" (uint8, the main one: argmax on the device) and "logits" (float32,
    at the input size, for evaluation that resizes them; asking for them costs a copy)."""

    name = "torch"
    inputs = (TensorInfo("input", (None, 3, None, None), np.dtype(np.float32)),)
    outputs = (
        TensorInfo("labels", (None, None, None), np.dtype(np.uint8)),
        TensorInfo("logits", (None, None, None, None), np.dtype(np.float32)),
    )
    output_kinds = {"labels": "labels", "logits": "logits"}  # noqa: RUF012 (read only)

    def __init__(
        self,
        model: Any,
        *,
        device: str = "auto",
        precision: str = "fp32",
        channels_last: bool = True,
        cuda_graph: bool = False,
    ) -> None:
        torch = self._torch = _import_torch()
        dev = torch.device(resolve_device(device))
        self._device = dev
        self._cuda = dev.type == "cuda"
        if precision not in ("fp32", "fp16"):
            raise SegkdError(f"--precision {precision}: the torch backend runs fp32 or fp16")
        if precision == "fp16" and not self._cuda:
            log.warning("fp16 autocast needs CUDA; the torch backend runs fp32 on the CPU")
            precision = "fp32"
        self.precision = precision
        if cuda_graph and not self._cuda:
            log.warning("CUDA graphs need CUDA; the torch backend runs eagerly on the CPU")
            cuda_graph = False
        self.cuda_graph = cuda_graph
        self._graph: Any = None  # (input shape, CUDAGraph, static input, static labels)
        # channels_last lets cuDNN pick NHWC tensor-core kernels; on CPU it rarely helps.
        self._channels_last = channels_last and self._cuda
        model = model.to(dev).eval()
        if self._channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        if self._cuda:
            self.device = f"CUDA:{dev.index or 0} {torch.cuda.get_device_name(dev)}"
            self.provider = f"torch {torch.__version__} (CUDA {torch.version.cuda})"
        else:
            self.device = "CPU"
            self.provider = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"

    def infer(
        self, feed: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        wanted = self._wanted(outputs)
        x = self._to_device(self._input_batch(feed))
        with self._torch.inference_mode():
            if wanted == ["labels"]:  # the deployment path: only labels leave the device
                return {"labels": self.labels_on_device(x).cpu().numpy()}
            logits = self._logits(x)
            labels = logits.argmax(1).to(self._torch.uint8) if "labels" in wanted else None
            return {n: (logits.float() if n == "logits" else labels).cpu().numpy() for n in wanted}

    def _to_device(self, batch: np.ndarray) -> Any:
        x = self._torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        return x.to(self._device) if self._cuda else x

    def labels_on_device(self, x: Any) -> Any:
        """Bx3xHxW float tensor on this backend's device -> BxHxW uint8 labels, on the device."""
        with self._torch.inference_mode():
            if self.cuda_graph:
                return self._replay(x)
            return self._forward(x)

    @property
    def uses_cuda_graph(self) -> bool:
        return self._graph is not None

    def _logits(self, x: Any) -> Any:
        """Network input tensor -> logits (B,K,H,W) on the device, at the input size."""
        torch = self._torch
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # The cast cache would keep fp16 weight copies made during a capture: off for graphs.
        with torch.autocast(
            "cuda",
            dtype=torch.float16,
            enabled=self.precision == "fp16",
            cache_enabled=not self.cuda_graph,
        ):
            logits = self.model(x)
        if isinstance(logits, dict):  # a model still in training-output mode
            logits = logits["logits"]
        if logits.shape[-2:] != x.shape[-2:]:
            logits = torch.nn.functional.interpolate(
                logits.float(), size=x.shape[-2:], mode="bilinear", align_corners=False
            )
        return logits

    def _forward(self, x: Any) -> Any:
        return self._logits(x).argmax(1).to(self._torch.uint8)

    def _replay(self, x: Any) -> Any:
        shape = tuple(x.shape)
        if self._graph is None or self._graph[0] != shape:
            self._graph = None  # the old graph's memory pool goes before a new one is recorded
            self._graph = self._capture(x)
            if self._graph is None:  # capture failed: keep running eagerly
                self.cuda_graph = False
                return self._forward(x)
        _, graph, static_in, static_out = self._graph
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()  # the next replay overwrites static_out

    def _capture(self, x: Any) -> Any:
        """Record forward + argmax at x's shape (after warm-up on a side stream, as torch asks)."""
        torch = self._torch
        static_in = x.clone()
        try:
            side = torch.cuda.Stream(self._device)
            side.wait_stream(torch.cuda.current_stream(self._device))
            with torch.cuda.stream(side):
                for _ in range(3):  # cuDNN autotuning and lazy allocations happen here
                    self._forward(static_in)
            torch.cuda.current_stream(self._device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.warning("CUDA graph capture failed (%s); running eagerly", first[:160])
            return None
        return tuple(x.shape), graph, static_in, static_out

    def close(self) -> None:
        self._graph = None
        self.model = None
