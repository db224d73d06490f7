"""PyTorch backend: runs an nn.Module eagerly (the reference the exports are checked against).

torch is imported only when this backend is built, never when runtime is imported.
The argmax runs on the device so only the uint8 label map crosses back to the host.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from runtime.errors import SegkdError

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


class TorchBackend:
    name = "torch"
    output_kind = "labels"

    def __init__(
        self,
        model: Any,
        *,
        device: str = "auto",
        precision: str = "fp32",
        channels_last: bool = True,
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
        # channels_last lets cuDNN pick NHWC tensor-core kernels; on CPU it rarely helps.
        self._channels_last = channels_last and self._cuda
        model = model.to(dev).eval()
        if self._channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.input_shape = (None, 3, None, None)
        if self._cuda:
            self.device = f"CUDA:{dev.index or 0} {torch.cuda.get_device_name(dev)}"
            self.provider = f"torch {torch.__version__} (CUDA {torch.version.cuda})"
        else:
            self.device = "CPU"
            self.provider = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"

    def _forward(self, batch: np.ndarray) -> Any:
        """Network input -> logits tensor (B,K,H,W) on the device, at the input size."""
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self._cuda:
            x = x.to(self._device)
            if self._channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.precision == "fp16"):
            logits = self.model(x)
        if isinstance(logits, dict):  # a model still in training-output mode
            logits = logits["logits"]
        if logits.shape[-2:] != x.shape[-2:]:
            logits = torch.nn.functional.interpolate(
                logits.float(), size=x.shape[-2:], mode="bilinear", align_corners=False
            )
        return logits

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            labels = self._forward(batch).argmax(1).to(self._torch.uint8)
            return labels.cpu().numpy()

    def run_logits(self, batch: np.ndarray) -> np.ndarray:
        """The float32 logits themselves, for evaluation that upsamples them (costs a copy)."""
        with self._torch.inference_mode():
            return self._forward(batch).float().cpu().numpy()

    def close(self) -> None:
        self.model = None
