"""The one preprocessing spec: uint8 frame -> network input. Written into every artifact.

Training, calibration, evaluation, benchmark and demo all call `PreprocessSpec.apply`
(or its torch twin in distill, which reads the same mean/std), so a deployed engine
sees exactly the tensor the network was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import cv2
import numpy as np

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, in 0..255 units
IMAGENET_STD = (58.395, 57.12, 57.375)

ColorOrder = Literal["RGB", "BGR"]
ResizePolicy = Literal["stretch", "letterbox"]


@dataclass(frozen=True)
class Letterbox:
    """Where the content sits inside a letterboxed network input, to undo it afterwards."""

    scale: float
    top: int
    left: int
    height: int  # content height inside the input
    width: int


@dataclass(frozen=True)
class PreprocessSpec:
    input_size: tuple[int, int] = (512, 1024)  # (H, W) the network is exported for
    color_order: ColorOrder = "RGB"  # channel order the network expects
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per channel, in network channel order
    std: tuple[float, float, float] = IMAGENET_STD
    resize: ResizePolicy = "stretch"
    layout: str = "NCHW"
    dtype: str = "float32"
    pad_value: int = 0  # letterbox padding, in uint8 pixel units before normalisation

    def __post_init__(self) -> None:
        h, w = self.input_size
        if h <= 0 or w <= 0:
            raise ValueError(f"input size must be positive, got {h}x{w}")
        if self.color_order not in ("RGB", "BGR"):
            raise ValueError(f"color_order must be RGB or BGR, got {self.color_order!r}")
        if self.resize not in ("stretch", "letterbox"):
            raise ValueError(f"resize must be stretch or letterbox, got {self.resize!r}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std must be positive")

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        d = dict(d)
        d["input_size"] = tuple(int(v) for v in d["input_size"])
        d["mean"] = tuple(float(v) for v in d["mean"])
        d["std"] = tuple(float(v) for v in d["std"])
        return cls(**d)

    def with_input_size(self, size: tuple[int, int]) -> PreprocessSpec:
        return PreprocessSpec.from_dict({**self.to_dict(), "input_size": list(size)})

    # -- the transform ------------------------------------------------------------------
    def _scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        # (x - mean) / std == x * scale + shift, one fused multiply-add per pixel.
        scale = 1.0 / np.asarray(self.std, dtype=np.float32)
        shift = -np.asarray(self.mean, dtype=np.float32) * scale
        return scale, shift

    def resize_frame(self, frame: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """Resize an HxWx3 uint8 frame to the input size by the spec's policy."""
        h, w = self.input_size
        fh, fw = frame.shape[:2]
        if self.resize == "stretch":
            out = (
                frame
                if (fh, fw) == (h, w)
                else cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
            )
            return out, Letterbox(scale=h / fh, top=0, left=0, height=h, width=w)
        scale = min(h / fh, w / fw)
        nh, nw = max(1, round(fh * scale)), max(1, round(fw * scale))
        resized = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
        top, left = (h - nh) // 2, (w - nw) // 2
        out = np.full((h, w, 3), self.pad_value, dtype=np.uint8)
        out[top : top + nh, left : left + nw] = resized
        return out, Letterbox(scale=scale, top=top, left=left, height=nh, width=nw)

    def normalize(self, image: np.ndarray, input_order: ColorOrder = "RGB") -> np.ndarray:
        """HxWx3 uint8 in `input_order` -> 3xHxW float32 normalised in the network's order."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got {image.shape} {image.dtype}")
        if input_order != self.color_order:
            image = image[:, :, ::-1]
        scale, shift = self._scale_shift()
        chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
        chw *= scale[:, None, None]
        chw += shift[:, None, None]
        return chw

    def apply(
        self, frame: np.ndarray, input_order: ColorOrder = "BGR"
    ) -> tuple[np.ndarray, Letterbox]:
        """A camera/OpenCV frame (BGR by default) -> (1x3xHxW float32, letterbox info)."""
        resized, box = self.resize_frame(frame)
        return self.normalize(resized, input_order)[None], box
