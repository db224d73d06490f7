"""Images for INT8 calibration and for verification, through the exact runtime preprocessing.

Calibration reads the dataset's train split, verification its val split, so every
agreement figure is measured on images the quantizer never saw. Each image goes
through `PreprocessSpec.apply` (the same call the runtime makes per frame), never a
torch re-implementation of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from runtime.errors import SegkdError
from runtime.labels import LabelSpec
from runtime.preprocess import Letterbox, PreprocessSpec


@dataclass(frozen=True)
class RawSample:
    """A dataset item as stored: HxWx3 uint8 RGB image, HxW uint8 train ids (255 = ignore)."""

    image: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class Prepared:
    """One network input (1x3xHxW float32) and what is needed to score its prediction."""

    x: np.ndarray
    box: Letterbox
    mask: np.ndarray  # ground truth at the original image size


def load_raw(data_spec: str, split: str, count: int) -> tuple[list[RawSample], LabelSpec]:
    """The first `count` items of `split` (all of them if the split is smaller), and its labels."""
    if count < 1:
        raise SegkdError(f"image count for the {split} split must be >= 1, got {count}")
    from distill.data import build_dataset  # the dataset readers live on the training side

    dataset = build_dataset(data_spec, split)
    n = min(count, len(dataset))
    if n == 0:
        raise SegkdError(f"dataset {data_spec!r} has no images in its {split} split")
    out = []
    for i in range(n):
        image, mask = dataset[i]
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise SegkdError(
                f"dataset {data_spec!r} {split}[{i}]: expected an HxWx3 uint8 image, "
                f"got {image.shape} {image.dtype}"
            )
        out.append(RawSample(image=image, mask=np.asarray(mask, dtype=np.uint8)))
    return out, dataset.labels


def prepare(samples: list[RawSample], preprocess: PreprocessSpec) -> list[Prepared]:
    """Dataset images (RGB) -> network inputs at `preprocess.input_size`."""
    out = []
    for s in samples:
        x, box = preprocess.apply(s.image, input_order="RGB")
        out.append(Prepared(x=x, box=box, mask=s.mask))
    return out


class SampleReader(CalibrationDataReader):
    """onnxruntime's calibration feed over prepared inputs (batch 1, the export size)."""

    def __init__(self, input_name: str, inputs: list[np.ndarray]) -> None:
        if not inputs:
            raise SegkdError("calibration needs at least one image")
        self.input_name = input_name
        self.inputs = inputs
        self._it: Iterator[np.ndarray] = iter(self.inputs)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {self.input_name: x}

    def rewind(self) -> None:
        self._it = iter(self.inputs)

    def __len__(self) -> int:
        return len(self.inputs)
