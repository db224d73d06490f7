"""mIoU of a `Segmenter` over labelled samples, optionally saving its predictions.

The caller (cli) reads the dataset and passes `(image_rgb, mask, sample_id)` tuples;
this module never imports a dataset. Predictions are scored at the label's resolution,
through exactly the preprocessing the model's metadata prescribes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np

from core.errors import SegkdError
from core.labels import LabelSpec
from core.metrics import ConfusionMatrix, SegMetrics
from runtime.postprocess import bgr_lut, overlay
from runtime.segmenter import Segmenter
from runtime.slide import describe_mode

log = logging.getLogger(__name__)

Sample = tuple[np.ndarray, np.ndarray, str]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

# How a prediction reaches the label's resolution. "logits" is the literature's
# convention; "labels" is what a deployed label-map engine produces, and the only one
# an artifact with an in-graph ArgMax allows.
CONVENTIONS = {
    "logits": "logits resized bilinearly to the label size, then argmax",
    "labels": "argmax at the network input size, label map resized (nearest) to the label size",
}


def resolve_convention(segmenter: Segmenter, requested: str = "auto") -> str:
    """'auto' -> 'logits' where the model outputs logits, else 'labels'; checks the rest."""
    if requested == "auto":
        return "logits" if segmenter.outputs_logits else "labels"
    if requested not in CONVENTIONS:
        raise SegkdError(f"--convention must be auto, logits or labels, got {requested!r}")
    if requested == "logits" and not segmenter.outputs_logits:
        raise SegkdError(
            f"--convention logits: {segmenter.model_path} outputs label maps, not logits "
            "(re-export with --output logits, or score it with --convention labels)"
        )
    return requested


@dataclass(frozen=True)
class EvalResult:
    metrics: SegMetrics
    num_samples: int
    seconds: float
    model: dict[str, Any]  # Segmenter.describe(): path, backend, device, precision ...
    confusion: np.ndarray  # rows = ground truth, columns = prediction
    convention: str = "labels"  # a CONVENTIONS key
    mode: str = "whole"  # whole images, or runtime.slide.describe_mode's sliding window

    @property
    def miou(self) -> float:
        return self.metrics.miou

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.metrics.to_dict(),
            "num_samples": self.num_samples,
            "seconds": self.seconds,
            "model": self.model,
            "convention": self.convention,
            "convention_detail": CONVENTIONS[self.convention],
            "mode": self.mode,
            "confusion": self.confusion.tolist(),
        }


def _miou_of(x: EvalResult | Mapping[str, Any]) -> float:
    if isinstance(x, EvalResult):
        return x.miou
    if "miou" in x:
        return float(x["miou"])
    if isinstance(x.get("metrics"), Mapping) and "miou" in x["metrics"]:
        return float(x["metrics"]["miou"])
    raise SegkdError("reference result has no 'miou' entry")


def compare(
    result: EvalResult | Mapping[str, Any], reference: EvalResult | Mapping[str, Any]
) -> float:
    """mIoU drop of `result` below `reference` in points (positive = result is worse)."""
    return (_miou_of(reference) - _miou_of(result)) * 100.0


def class_drops(result: EvalResult, reference: EvalResult) -> dict[str, float | None]:
    """Per-class IoU drop in points; None where either side has no IoU for the class."""
    out: dict[str, float | None] = {}
    for name, ref in reference.metrics.iou.items():
        got = result.metrics.iou.get(name)
        out[name] = None if ref is None or got is None else (ref - got) * 100.0
    return out


def _relative_path(sample_id: str) -> PurePosixPath:
    """A sample id as a path inside the output folder, never escaping it."""
    parts = [p for p in str(sample_id).replace("\\", "/").split("/") if p not in ("", ".", "..")]
    if not parts:
        raise SegkdError(f"sample id {sample_id!r} cannot name an output file")
    return PurePosixPath(*parts)


def write_image(path: Path, image: np.ndarray) -> None:
    """Encode in memory, then write to a temporary name and rename: no half-written files,
    and a full disk or a read-only folder raises (cv2.imwrite may only return False)."""
    from core.atomic_io import write_bytes_atomic

    try:
        ok, encoded = cv2.imencode(path.suffix, image)
    except cv2.error as e:
        ok = False
        log.debug("imencode failed: %s", e)
    if not ok:
        raise SegkdError(
            f"cannot write {path}: OpenCV cannot encode a {image.dtype} image as {path.suffix}"
        )
    write_bytes_atomic(path, encoded.tobytes(), fsync=False)


def evaluate(
    segmenter: Segmenter,
    samples: Iterable[Sample],
    labels: LabelSpec | None = None,
    save_predictions: str | Path | None = None,
    encode_label: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    max_samples: int | None = None,
    on_sample: Callable[[int], None] | None = None,
    convention: str = "auto",
    slide: tuple[tuple[int, int], tuple[int, int]] | None = None,
) -> EvalResult:
    """Score the segmenter on `(image_rgb uint8 HxWx3, mask HxW ids, sample_id)` samples.

    labels: the dataset's label spec (default: the model's); class counts must agree.
    save_predictions: a folder; writes labels/<id>.png (through `encode_label`, e.g.
      Cityscapes trainId -> labelId, else raw class ids) and overlays/<id>.jpg.
    on_sample(n) is called after each sample (progress).
    convention: "logits", "labels" or "auto" (logits where the model outputs them), see
      CONVENTIONS; the result records the one used.
    slide: (crop, stride) for mmseg's sliding-window test (runtime.slide), logits only;
      None: whole images. The result records which mode ran.
    """
    convention = resolve_convention(segmenter, convention)
    if slide is not None and convention != "logits":
        raise SegkdError("--mode slide averages logits: it needs the logits convention")
    spec = labels or segmenter.labels
    model_spec = segmenter.labels
    if spec.num_classes != model_spec.num_classes:
        raise SegkdError(
            f"{segmenter.model_path}: model predicts {model_spec.num_classes} classes, "
            f"the dataset has {spec.num_classes}"
        )
    if spec.names != model_spec.names:
        log.warning("model and dataset name their classes differently; scoring by class id")
    out_dir = Path(save_predictions) if save_predictions is not None else None
    lut = bgr_lut(model_spec)
    cm = ConfusionMatrix(spec.num_classes, spec.ignore_index)
    n, t0 = 0, time.perf_counter()
    for image, mask, sample_id in samples:
        if max_samples is not None and n >= max_samples:
            break
        if mask.ndim != 2:
            raise SegkdError(
                f"sample {sample_id}: mask must be HxW class ids, got shape {mask.shape}"
            )
        if slide is not None:
            pred = segmenter.predict_slide(
                image, *slide, input_order="RGB", out_size=mask.shape[:2]
            )
        elif convention == "logits":
            pred = segmenter.predict_upsampled(image, input_order="RGB", out_size=mask.shape[:2])
        else:
            pred = segmenter.predict(image, input_order="RGB", out_size=mask.shape[:2])
        try:
            cm.update(pred, mask)
        except ValueError as e:
            raise SegkdError(f"sample {sample_id}: {e}") from None
        if out_dir is not None:
            _save(out_dir, sample_id, image, pred, lut, encode_label)
        n += 1
        if on_sample is not None:
            on_sample(n)
    if n == 0:
        raise SegkdError("evaluation got no samples (empty split or wrong dataset path?)")
    return EvalResult(
        metrics=cm.summary(spec.names),
        num_samples=n,
        seconds=time.perf_counter() - t0,
        model=segmenter.describe(),
        confusion=cm.matrix.copy(),
        convention=convention,
        mode=describe_mode(slide),
    )


def _save(
    out_dir: Path,
    sample_id: str,
    image_rgb: np.ndarray,
    pred: np.ndarray,
    lut: np.ndarray,
    encode_label: Callable[[np.ndarray], np.ndarray] | None,
) -> None:
    rel = _relative_path(sample_id)
    if rel.suffix.lower() in IMAGE_SUFFIXES:  # an id that is a file name: drop its extension
        rel = rel.with_suffix("")
    encoded = encode_label(pred) if encode_label is not None else pred
    if encoded.dtype not in (np.uint8, np.uint16):
        encoded = encoded.astype(np.uint16 if int(encoded.max(initial=0)) > 255 else np.uint8)
    write_image(out_dir / "labels" / rel.parent / (rel.name + ".png"), encoded)
    bgr = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    if bgr.shape[:2] != pred.shape:  # masks may be coarser than images: draw at mask size
        bgr = cv2.resize(bgr, (pred.shape[1], pred.shape[0]), interpolation=cv2.INTER_AREA)
    write_image(out_dir / "overlays" / rel.parent / (rel.name + ".jpg"), overlay(bgr, pred, lut))
