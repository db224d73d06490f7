"""Network output -> label map at the frame's size -> colours, overlay and legend.

Everything here is a single numpy/OpenCV call per image (argmax, resize, LUT,
addWeighted): no per-pixel Python work, so it keeps up with the network.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from core.labels import LabelSpec
from core.preprocess import Letterbox


def logits_to_labels(logits: np.ndarray) -> np.ndarray:
    """(B,K,H,W) scores of any float dtype -> (B,H,W) uint8 class ids (first max wins on ties)."""
    if logits.ndim != 4:
        raise ValueError(f"expected B x K x H x W logits, got shape {logits.shape}")
    ids = np.argmax(logits, axis=1)
    return ids.astype(np.uint8) if logits.shape[1] <= 256 else ids.astype(np.int32)


def as_label_batch(output: np.ndarray, kind: str) -> np.ndarray:
    """A model's raw output ("logits" or "labels") -> (B,H,W) integer label maps."""
    if np.issubdtype(output.dtype, np.floating):
        if kind == "logits":
            return logits_to_labels(output)
        output = np.rint(output)  # a label map someone cast to float
    if output.ndim == 4 and output.shape[1] == 1:  # ArgMax with keepdims=1
        output = output[:, 0]
    if output.ndim != 3:
        raise ValueError(f"expected a B x H x W label map, got shape {output.shape}")
    if output.dtype == np.uint8:
        return output
    # ArgMax gives int64 (TensorRT: int32); class ids always fit uint8 (K < ignore id 255).
    return output.astype(np.uint8) if int(output.max(initial=0)) < 256 else output.astype(np.int32)


def restore_size(
    labels: np.ndarray,
    box: Letterbox,
    size: tuple[int, int],
    input_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """HxW label map at the network input -> label map at `size` (H, W), undoing letterbox.

    input_size: the network input (H, W) when `labels` is smaller than it (a labels-lowres
    graph, at its output stride): the letterbox is scaled down to the map, and the one
    resize to `size` aligns pixel centres (INTER_NEAREST_EXACT: a label pixel covers the
    input pixels whose centres fall in it, as the bilinear half-pixel upsample would).
    """
    interp = cv2.INTER_NEAREST
    if input_size is not None and labels.shape[:2] != tuple(input_size):
        fy, fx = labels.shape[0] / input_size[0], labels.shape[1] / input_size[1]
        top, left = round(box.top * fy), round(box.left * fx)
        box = Letterbox(
            scale=box.scale,
            top=top,
            left=left,
            height=max(1, min(labels.shape[0] - top, round(box.height * fy))),
            width=max(1, min(labels.shape[1] - left, round(box.width * fx))),
        )
        interp = cv2.INTER_NEAREST_EXACT
    crop = labels[box.top : box.top + box.height, box.left : box.left + box.width]
    h, w = size
    if crop.shape == (h, w):
        return np.ascontiguousarray(crop)
    if crop.dtype not in (np.uint8, np.int32, np.int16, np.uint16):
        crop = crop.astype(np.int32)
    return cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=interp)


def upsample_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(B,h,w) label maps -> (B,H,W) at `size`, pixel centres aligned (INTER_NEAREST_EXACT)."""
    h, w = size
    if labels.shape[1:] == (h, w):
        return labels
    return np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST_EXACT) for m in labels])


# cv2.resize takes at most this many channels per call (OpenCV 5 refuses 150).
_RESIZE_CHANNELS = 64


def upsample_argmax(logits: np.ndarray, box: Letterbox, size: tuple[int, int]) -> np.ndarray:
    """KxHxW scores at the network input -> HxW class ids at `size`, the literature's way.

    The letterbox content is resized bilinearly (half-pixel centres, as PyTorch's
    align_corners=False and mmsegmentation's resize) to the label size, then argmax:
    Cityscapes' and CIRKD's evaluation. Channels go through in groups with a running
    max, so the K x label-size array is never held at once (ADE20K: 150 classes).
    """
    if logits.ndim != 3:
        raise ValueError(f"expected K x H x W logits, got shape {logits.shape}")
    crop = logits[:, box.top : box.top + box.height, box.left : box.left + box.width]
    h, w = size
    best: np.ndarray | None = None
    ids: np.ndarray | None = None
    for start in range(0, crop.shape[0], _RESIZE_CHANNELS):
        part = np.ascontiguousarray(
            crop[start : start + _RESIZE_CHANNELS].transpose(1, 2, 0), dtype=np.float32
        )
        up = cv2.resize(part, (w, h), interpolation=cv2.INTER_LINEAR)
        up = up.reshape(h, w, part.shape[2])  # cv2 drops a single channel's axis
        arg = up.argmax(axis=2)
        top = np.take_along_axis(up, arg[..., None], axis=2)[..., 0]
        if best is None or ids is None:
            best, ids = top, arg
        else:  # strictly greater: the first maximum wins, as in one argmax over all K
            better = top > best
            best = np.where(better, top, best)
            ids = np.where(better, arg + start, ids)
    assert ids is not None
    return ids.astype(np.uint8) if logits.shape[0] <= 256 else ids.astype(np.int32)


def bgr_lut(spec: LabelSpec) -> np.ndarray:
    """256x1x3 uint8 BGR table for cv2.LUT (OpenCV images are BGR; the spec's palette is RGB)."""
    return np.ascontiguousarray(spec.color_lut()[:, :, ::-1])


def colorize(labels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """HxW class ids -> HxWx3 colours through a 256-entry LUT (ids >= 256 clip to 255)."""
    if labels.dtype != np.uint8:
        labels = np.clip(labels, 0, 255).astype(np.uint8)
    return cv2.LUT(cv2.merge((labels, labels, labels)), lut)


def overlay(
    frame_bgr: np.ndarray, labels: np.ndarray, lut: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """Blend the coloured label map over the frame; labels must already be at frame size."""
    if labels.shape[:2] != frame_bgr.shape[:2]:
        raise ValueError(
            f"labels {labels.shape[:2]} and frame {frame_bgr.shape[:2]} differ in size"
        )
    return cv2.addWeighted(frame_bgr, 1.0 - alpha, colorize(labels, lut), alpha, 0.0)


def present_classes(labels: np.ndarray, num_classes: int) -> list[int]:
    """Class ids that occur in a label map, cheaply (a histogram, not np.unique's sort)."""
    lab = labels if labels.dtype == np.uint8 else np.clip(labels, 0, 255).astype(np.uint8)
    hist = cv2.calcHist([lab], [0], None, [256], [0, 256]).ravel()
    return [i for i in range(num_classes) if hist[i] > 0]


def draw_text(
    image: np.ndarray, text: str, org: tuple[int, int] = (10, 30), scale: float | None = None
) -> np.ndarray:
    """White text on a dark box, readable on any background; draws in place."""
    scale = scale if scale is not None else max(0.5, image.shape[0] / 720.0)
    thick = max(1, round(scale * 2))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    x, y = org
    cv2.rectangle(image, (x - 4, y - th - 4), (x + tw + 4, y + base + 2), (0, 0, 0), cv2.FILLED)
    cv2.putText(
        image, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA
    )
    return image


def draw_legend(
    image: np.ndarray,
    spec: LabelSpec,
    class_ids: Iterable[int] | None = None,
    corner: str = "right",
) -> np.ndarray:
    """Colour swatch + class name per class (all, or only `class_ids`), stacked in a corner."""
    ids = list(range(spec.num_classes)) if class_ids is None else list(class_ids)
    if not ids:
        return image
    h, w = image.shape[:2]
    scale = max(0.35, h / 1800.0)
    thick = max(1, round(scale * 2))
    row = int(cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][1] * 1.9) + 2
    ids = ids[: max(1, (h - 10) // row)]  # as many as fit
    text_w = max(
        cv2.getTextSize(spec.names[i], cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0] for i in ids
    )
    box_w = row + 8 + text_w + 8
    x0 = w - box_w - 8 if corner == "right" else 8
    y0 = 8
    panel = image[y0 : y0 + row * len(ids) + 8, max(0, x0) : x0 + box_w]
    panel[:] = cv2.convertScaleAbs(panel, alpha=0.35)  # darken behind the legend for contrast
    for n, i in enumerate(ids):
        top = y0 + 4 + n * row
        r, g, b = spec.palette[i]
        cv2.rectangle(
            image, (x0 + 4, top + 2), (x0 + row - 2, top + row - 4), (b, g, r), cv2.FILLED
        )
        cv2.putText(
            image,
            spec.names[i],
            (x0 + row + 4, top + row - 6),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            thick,
            cv2.LINE_AA,
        )
    return image
