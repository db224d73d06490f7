"""What every inference backend provides to `Segmenter` (numpy in, numpy out)."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Backend(Protocol):
    name: str  # "onnxruntime", "tensorrt", "torch"
    device: str  # human description of where it really runs
    provider: str  # the engine inside the backend that really ran (ORT provider, TRT version)
    precision: str  # "fp32", "fp16", "int8"
    output_kind: str  # "logits" (B,K,H,W) or "labels" (B,H,W) returned by `run`
    # NCHW input shape; None where the model accepts any size.
    input_shape: tuple[int | None, int | None, int | None, int | None]

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Bx3xHxW float32 network input -> the model's raw output."""
        ...

    def close(self) -> None: ...
