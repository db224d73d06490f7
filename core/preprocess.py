"""The one preprocessing spec: uint8 frame -> network input. Written into every artifact.

Training, calibration, evaluation, benchmark and demo all call `PreprocessSpec.apply`
(or its torch twin in distill, which reads the same mean/std), so a deployed engine
sees exactly the tensor the network was trained on.

A spec describes the input of the graph it is stored with. `dtype` "float32" (layout
NCHW): the host normalises. `dtype` "uint8" (`segkd export --input-dtype uint8`): the
graph takes the resized frame's pixels as they are (layout NHWC, channels in
`input_order`) and does the cast, the channel flip, the mean and the std itself; `mean`,
`std` and `color_order` then say what the graph applies inside, so the host only resizes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import cv2
import numpy as np

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, in 0..255 units
IMAGENET_STD = (58.395, 57.12, 57.375)

ColorOrder = Literal["RGB", "BGR"]
ResizePolicy = Literal["stretch", "letterbox"]
INPUT_DTYPES = ("float32", "uint8")
LAYOUTS = ("NCHW", "NHWC")


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
    # Channel order of a uint8 graph input (the graph flips it to color_order itself);
    # None: color_order. Only uint8 inputs take raw pixels, so only they have one.
    input_order: ColorOrder | None = None

    def __post_init__(self) -> None:
        h, w = self.input_size
        if h <= 0 or w <= 0:
            raise ValueError(f"input size must be positive, got {h}x{w}")
        if self.color_order not in ("RGB", "BGR"):
            raise ValueError(f"color_order must be RGB or BGR, got {self.color_order!r}")
        if self.resize not in ("stretch", "letterbox"):
            raise ValueError(f"resize must be stretch or letterbox, got {self.resize!r}")
        if not all(np.isfinite(v) for v in (*self.mean, *self.std)):  # NaN passes `<= 0`
            raise ValueError(f"mean and std must be finite, got mean {self.mean} std {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std must be positive")
        if self.dtype not in INPUT_DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(INPUT_DTYPES)}, got {self.dtype!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.input_order not in (None, "RGB", "BGR"):
            raise ValueError(f"input_order must be RGB, BGR or null, got {self.input_order!r}")
        if self.dtype == "float32" and self.input_order not in (None, self.color_order):
            raise ValueError("a float32 input is normalised on the host: it has no input_order")

    @property
    def raw_pixels(self) -> bool:
        """Whether the graph takes uint8 pixels and normalises them itself."""
        return self.dtype == "uint8"

    @property
    def graph_order(self) -> ColorOrder:
        """Channel order of the graph's input tensor."""
        return self.input_order or self.color_order

    def input_shape(self, batch: int) -> tuple[int, int, int, int]:
        h, w = self.input_size
        return (batch, h, w, 3) if self.layout == "NHWC" else (batch, 3, h, w)

    def uint8_input(self, input_order: ColorOrder = "BGR") -> PreprocessSpec:
        """This spec for a graph that takes uint8 NHWC pixels (OpenCV's BGR by default)."""
        return replace(self, dtype="uint8", layout="NHWC", input_order=input_order)

    def float_input(self) -> PreprocessSpec:
        """The host-normalised float32 NCHW spec a uint8-input graph carries inside."""
        return replace(self, dtype="float32", layout="NCHW", input_order=None)

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

    def pixels(self, image: np.ndarray, input_order: ColorOrder = "RGB") -> np.ndarray:
        """HxWx3 uint8 in `input_order` -> the uint8 graph input of one image (no batch axis).

        No float work: at most a channel flip (when the frame's order is not the graph's)
        and, for an NCHW uint8 graph, a transpose.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got {image.shape} {image.dtype}")
        if input_order != self.graph_order:
            image = image[:, :, ::-1]
        if self.layout == "NCHW":
            return np.ascontiguousarray(image.transpose(2, 0, 1))
        return np.ascontiguousarray(image)

    def to_input(self, resized: np.ndarray, input_order: ColorOrder = "RGB") -> np.ndarray:
        """A frame already at the input size -> this spec's graph input (no batch axis)."""
        if self.raw_pixels:
            return self.pixels(resized, input_order)
        chw = self.normalize(resized, input_order)
        return np.ascontiguousarray(chw.transpose(1, 2, 0)) if self.layout == "NHWC" else chw

    def apply(
        self, frame: np.ndarray, input_order: ColorOrder = "BGR"
    ) -> tuple[np.ndarray, Letterbox]:
        """A camera/OpenCV frame (BGR by default) -> (1x3xHxW float32 or the spec's uint8
        input, letterbox info)."""
        resized, box = self.resize_frame(frame)
        return self.to_input(resized, input_order)[None], box
