"""The few images an export folder carries so a device can check an engine on its own.

`segkd export` writes `reference.npz` into the folder: a handful of its held-out
verification images, resized to the network input as the runtime resizes them (uint8
RGB), the fp32 PyTorch label map of each (what every artifact was gated against), and,
where the data has the model's classes, the ground-truth mask at its own size with the
letterbox to undo. `segkd build` on a Jetson feeds these through the engine it built and
gates it on pixel agreement (and mIoU against the ground truth) without the dataset,
torch or ONNX Runtime. numpy's compressed npz: label maps compress to a few KiB, the
images to what their content allows (4 Cityscapes frames at 512x1024: ~4 MiB).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic_io import sha256_of, write_bytes_atomic
from core.errors import SegkdError
from core.metrics import ConfusionMatrix
from core.preprocess import Letterbox, PreprocessSpec
from runtime.postprocess import as_label_batch, restore_size, upsample_labels

REFERENCE_FILE = "reference.npz"
DEFAULT_IMAGES = 4


@dataclass(frozen=True)
class ReferenceSample:
    image: np.ndarray  # (H, W, 3) uint8 RGB at the network input size, letterboxed as run
    labels: np.ndarray  # (H, W) the fp32 reference label map at the network input size
    mask: np.ndarray | None  # ground truth at the original image size, if the classes match
    box: Letterbox


def write_reference_set(path: Path, samples: Sequence[ReferenceSample]) -> Path:
    """One compressed npz (atomically): images, labels, optional masks, letterboxes."""
    if not samples:
        raise ValueError("a reference set needs at least one sample")
    arrays: dict[str, np.ndarray] = {
        "images": np.stack([s.image for s in samples]).astype(np.uint8),
        "labels": np.stack([s.labels for s in samples]).astype(np.uint8),
    }
    boxes = []
    for i, s in enumerate(samples):
        if s.mask is not None:
            arrays[f"mask{i}"] = s.mask.astype(np.uint8)
        b = s.box
        boxes.append([b.scale, b.top, b.left, b.height, b.width])
    arrays["boxes"] = np.asarray(boxes, dtype=np.float64)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return write_bytes_atomic(path, buf.getvalue())


def read_reference_set(path: Path, facts: Mapping[str, Any] | None = None) -> list[ReferenceSample]:
    """The samples of a reference.npz; SegkdError naming the file if it differs from the
    sha256 export.json records for it (`facts`, its "reference" entry) or if its arrays
    are not what `write_reference_set` writes (a mask of another type, values outside
    0..255, counts or shapes that disagree)."""
    expected = (facts or {}).get("sha256")
    if isinstance(expected, str) and sha256_of(path) != expected.lower():
        raise SegkdError(
            f"{path}: sha256 differs from the one export.json records; the file is corrupt "
            "or was changed: copy the export folder again"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            images, labels, boxes = z["images"], z["labels"], z["boxes"]
            masks = {k: z[k] for k in z.files if k.startswith("mask")}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise SegkdError(f"cannot read the reference set {path}: {e}") from None
    problem = _shape_problem(images, labels, boxes, masks)
    if problem:
        raise SegkdError(f"{path}: {problem}; re-export the folder")
    out = []
    for i in range(len(images)):
        s, top, left, h, w = boxes[i]
        box = Letterbox(scale=float(s), top=int(top), left=int(left), height=int(h), width=int(w))
        out.append(ReferenceSample(images[i], labels[i], masks.get(f"mask{i}"), box))
    return out


def _shape_problem(
    images: np.ndarray, labels: np.ndarray, boxes: np.ndarray, masks: dict[str, np.ndarray]
) -> str | None:
    """What in a reference set's arrays `write_reference_set` would never write, or None."""
    n = len(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        return f"images are {images.dtype} {images.shape}, not N x H x W x 3 uint8"
    if labels.dtype != np.uint8 or labels.shape != images.shape[:3]:
        return f"labels are {labels.dtype} {labels.shape}, not {images.shape[:3]} uint8"
    if boxes.shape != (n, 5) or not np.isfinite(boxes).all():
        return f"letterboxes are {boxes.shape} (or not finite), not {n} x 5"
    for key, mask in sorted(masks.items()):
        if key not in {f"mask{i}" for i in range(n)}:
            return f"{key} belongs to no image (it holds {n})"
        if mask.ndim != 2 or mask.dtype.kind not in "ui":
            return f"{key} is {mask.dtype} {mask.shape}; a mask is H x W class ids"
        if mask.size and (mask.min() < 0 or mask.max() > 255 or mask.dtype != np.uint8):
            return (
                f"{key} is {mask.dtype} with values {int(mask.min())}..{int(mask.max())}; "
                "a mask holds uint8 class ids 0..255"
            )
    return None


@dataclass(frozen=True)
class ReferenceScore:
    images: int
    pixel_agreement: float
    miou_vs_fp32: float
    miou_vs_ground_truth: float | None
    fp32_miou_vs_ground_truth: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def score_on_reference(
    run: Callable[[np.ndarray], np.ndarray],
    samples: Sequence[ReferenceSample],
    pre: PreprocessSpec,
    output_kind: str,
    num_classes: int,
    ignore_index: int,
) -> ReferenceScore:
    """Feed each reference image through `run` (network input -> raw output) and compare.

    The input is made by the runtime's own PreprocessSpec.to_input from the stored
    resized image: the same bytes `segkd export` verified with.
    """
    for i, s in enumerate(samples):
        if s.mask is None:
            continue
        bad = np.unique(s.mask[(s.mask >= num_classes) & (s.mask != ignore_index)])
        if bad.size:
            raise SegkdError(
                f"the reference set's mask{i} holds {bad[:10].tolist()}, neither classes of "
                f"{num_classes} nor ignore ({ignore_index}); re-export the folder"
            )
    same = total = 0
    vs_ref = ConfusionMatrix(num_classes, ignore_index)
    with_gt = all(s.mask is not None for s in samples)
    vs_gt = ConfusionMatrix(num_classes, ignore_index) if with_gt else None
    ref_gt = ConfusionMatrix(num_classes, ignore_index) if with_gt else None
    for s in samples:
        x = pre.to_input(s.image, "RGB")[None]
        labels = as_label_batch(run(x), output_kind)
        if output_kind == "labels-lowres":  # scored at the input size, as export does
            labels = upsample_labels(labels, s.labels.shape)
        got = labels[0]
        if got.shape != s.labels.shape:
            raise SegkdError(
                f"the engine's label map is {got.shape}, the reference's {s.labels.shape}"
            )
        same += int((got == s.labels).sum())
        total += int(got.size)
        vs_ref.update(got, s.labels)
        if vs_gt is not None and ref_gt is not None and s.mask is not None:
            vs_gt.update(restore_size(got, s.box, s.mask.shape), s.mask)
            ref_gt.update(restore_size(s.labels, s.box, s.mask.shape), s.mask)
    return ReferenceScore(
        images=len(samples),
        pixel_agreement=same / total if total else 0.0,
        miou_vs_fp32=vs_ref.summary().miou,
        miou_vs_ground_truth=vs_gt.summary().miou if vs_gt is not None else None,
        fp32_miou_vs_ground_truth=ref_gt.summary().miou if ref_gt is not None else None,
    )
