"""Training and evaluation transforms on (image HxWx3 uint8 RGB, mask HxW uint8) pairs.

numpy + OpenCV only. Masks are only ever resampled with nearest-neighbour lookups, so a
transform can never invent a class id; the only new value it writes is `ignore_index`
(padding).

Seeding: every TrainTransform draws from its own np.random.Generator. Call
`reseed(seed)` to restart it; `distill.data.loader` does this in each DataLoader worker
with torch's per-worker seed, so workers differ from each other and runs repeat.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from core.errors import SegkdError
from core.labels import IGNORE_INDEX
from distill.data.base import Sample


def _size(value: Sequence[int], name: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise SegkdError(f"{name}: expected (height, width), got {value!r}") from None
    if h < 1 or w < 1:
        raise SegkdError(f"{name}: both sides must be positive, got {h}x{w}")
    return h, w


def _check_pair(image: np.ndarray, mask: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.shape} {image.dtype}")
    if mask.shape != image.shape[:2] or mask.dtype != np.uint8:
        raise ValueError(f"mask {mask.shape} {mask.dtype} does not match image {image.shape}")


class TrainTransform:
    """Random scale, pad to the crop size, random crop, horizontal flip, light colour jitter.

    Scale and crop are one affine warp that computes only the cropped pixels (a 2x
    upscale of a 1024x2048 frame is never materialised). Image: bilinear, with
    pixel-centre alignment identical to cv2.resize. Mask: nearest. Where the scaled
    image is smaller than the crop, the bottom/right is padded with `image_pad_value`
    and `ignore_index`.
    """

    def __init__(
        self,
        crop_size: Sequence[int],
        scale_range: Sequence[float] = (0.5, 2.0),
        flip: bool = True,
        photometric: bool = True,
        ignore_index: int = IGNORE_INDEX,
        seed: int | None = None,
        image_pad_value: int | Sequence[int] = 0,
    ) -> None:
        self.crop_size = _size(crop_size, "crop size")
        lo, hi = (float(s) for s in scale_range)
        if not 0 < lo <= hi:
            raise SegkdError(f"scale range: need 0 < low <= high, got {lo}..{hi}")
        self.scale_range = (lo, hi)
        self.flip, self.photometric = bool(flip), bool(photometric)
        self.ignore_index = int(ignore_index)
        pad = (image_pad_value,) * 3 if np.isscalar(image_pad_value) else tuple(image_pad_value)
        self.image_pad_value = tuple(int(v) for v in pad)  # type: ignore[union-attr]
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int | Sequence[int] | None) -> None:
        """Restart the random stream (each DataLoader worker calls this with its own seed)."""
        self.rng = np.random.default_rng(seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> Sample:
        _check_pair(image, mask)
        rng = self.rng
        ch, cw = self.crop_size
        h, w = mask.shape
        s = float(rng.uniform(*self.scale_range))
        sh, sw = max(1, round(h * s)), max(1, round(w * s))
        y0 = int(rng.integers(0, sh - ch + 1)) if sh > ch else 0
        x0 = int(rng.integers(0, sw - cw + 1)) if sw > cw else 0
        # dst pixel (x, y) samples src ((x + x0 + 0.5) * w / sw - 0.5, ...): cv2.resize's mapping.
        fx, fy = sw / w, sh / h
        m = np.array(
            [[fx, 0.0, 0.5 * fx - 0.5 - x0], [0.0, fy, 0.5 * fy - 0.5 - y0]], dtype=np.float64
        )
        img = cv2.warpAffine(
            image, m, (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        lab = cv2.warpAffine(
            mask,
            m,
            (cw, ch),
            flags=cv2.INTER_NEAREST,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=self.ignore_index,
        )
        # Outside the scaled image: padding, not replicated border.
        if sh - y0 < ch:
            img[sh - y0 :] = self.image_pad_value
            lab[sh - y0 :] = self.ignore_index
        if sw - x0 < cw:
            img[:, sw - x0 :] = self.image_pad_value
            lab[:, sw - x0 :] = self.ignore_index
        if self.flip and rng.random() < 0.5:
            img, lab = img[:, ::-1], lab[:, ::-1]
        if self.photometric:
            img = photometric_jitter(img, rng)
        return np.ascontiguousarray(img), np.ascontiguousarray(lab)

    def __repr__(self) -> str:
        return (
            f"TrainTransform(crop_size={self.crop_size}, scale_range={self.scale_range}, "
            f"flip={self.flip}, photometric={self.photometric})"
        )


def photometric_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Light brightness / contrast / saturation / hue jitter, each applied with p = 0.5."""
    out = np.ascontiguousarray(image)
    alpha, beta = 1.0, 0.0
    if rng.random() < 0.5:
        beta = rng.uniform(-24.0, 24.0)
    if rng.random() < 0.5:
        alpha = rng.uniform(0.8, 1.2)
    if alpha != 1.0 or beta != 0.0:
        lut = np.clip(np.arange(256) * alpha + beta, 0, 255).astype(np.uint8)
        out = cv2.LUT(out, lut)
    sat = rng.uniform(0.8, 1.2) if rng.random() < 0.5 else 1.0
    hue = int(rng.integers(-5, 6)) if rng.random() < 0.5 else 0  # OpenCV hue: 0..179, 2 deg/unit
    if sat != 1.0 or hue != 0:
        hch, sch, vch = cv2.split(cv2.cvtColor(out, cv2.COLOR_RGB2HSV))
        if hue:
            hch = cv2.LUT(hch, ((np.arange(256) + hue) % 180).astype(np.uint8))
        if sat != 1.0:
            sch = cv2.LUT(sch, np.clip(np.arange(256) * sat, 0, 255).astype(np.uint8))
        out = cv2.cvtColor(cv2.merge((hch, sch, vch)), cv2.COLOR_HSV2RGB)
    return out


class EvalTransform:
    """Whole image unchanged by default; with `size` (H, W), resize (image bilinear, mask nearest)."""

    def __init__(self, size: Sequence[int] | None = None) -> None:
        self.size = None if size is None else _size(size, "eval size")

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> Sample:
        _check_pair(image, mask)
        if self.size is None or self.size == mask.shape:
            return image, mask
        h, w = self.size
        img = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        lab = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        return img, lab

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size})"
