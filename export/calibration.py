"""Images for INT8 calibration and for verification, through the exact runtime preprocessing.

Calibration reads the dataset's train split, verification its val split, so every
agreement figure is measured on images the quantizer never saw. Both are a seeded
random sample of the whole split (the first N sorted files would be 2 of Cityscapes'
18 cities), and export.json records which images were drawn. Each image goes through
`PreprocessSpec.apply` (the same call the runtime makes per frame), never a torch
re-implementation of it. Calibration images are read one at a time as the calibrator
asks for them, so memory does not grow with their number.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from core.errors import SegkdError
from core.labels import LabelSpec
from core.preprocess import Letterbox, PreprocessSpec
from core.schema.export import EXPORT

DEFAULT_SEED = EXPORT.default("sample_seed")


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


def sample_indices(total: int, count: int, seed: int) -> list[int]:
    """`count` distinct indices drawn uniformly from range(total) (all if fewer), ascending."""
    if total <= count:
        return list(range(total))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(total, size=count, replace=False))


class SampledSplit:
    """A seeded random subset of a dataset split, read lazily, one item at a time."""

    def __init__(self, data_spec: str, split: str, count: int, seed: int = DEFAULT_SEED) -> None:
        if count < 1:
            raise SegkdError(f"image count for the {split} split must be >= 1, got {count}")
        from distill.data import build_dataset  # the dataset readers live on the training side

        self.data_spec, self.split, self.seed = data_spec, split, seed
        self.dataset = build_dataset(data_spec, split)
        if len(self.dataset) == 0:
            raise SegkdError(f"dataset {data_spec!r} has no images in its {split} split")
        self.indices = sample_indices(len(self.dataset), count, seed)

    @property
    def labels(self) -> LabelSpec:
        return self.dataset.labels

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, position: int) -> RawSample:
        i = self.indices[position]
        image, mask = self.dataset[i]
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise SegkdError(
                f"dataset {self.data_spec!r} {self.split}[{i}]: expected an HxWx3 uint8 image, "
                f"got {image.shape} {image.dtype}"
            )
        return RawSample(image=image, mask=np.asarray(mask, dtype=np.uint8))

    def __iter__(self) -> Iterator[RawSample]:
        return (self.load(p) for p in range(len(self)))

    def describe(self) -> dict[str, Any]:
        """What export.json records: the draw (seed, population) and the images drawn."""
        out: dict[str, Any] = {
            "data": self.data_spec,
            "split": self.split,
            "images": len(self),
            "sampling": "uniform without replacement over the whole split",
            "seed": self.seed,
            "split_size": len(self.dataset),
            "indices": list(self.indices),
            "ids": [self.dataset.sample_id(i) for i in self.indices],
        }
        image_path = getattr(self.dataset, "image_path", None)
        if callable(image_path):
            out["files"] = [str(image_path(i)) for i in self.indices]
        return out


def load_raw(
    data_spec: str, split: str, count: int, seed: int = DEFAULT_SEED
) -> tuple[list[RawSample], LabelSpec]:
    """`count` seeded random items of `split` (all if it is smaller), read now, and its labels."""
    sampled = SampledSplit(data_spec, split, count, seed)
    return list(sampled), sampled.labels


def prepare(samples: list[RawSample], preprocess: PreprocessSpec) -> list[Prepared]:
    """Dataset images (RGB) -> network inputs at `preprocess.input_size`."""
    out = []
    for s in samples:
        x, box = preprocess.apply(s.image, input_order="RGB")
        out.append(Prepared(x=x, box=box, mask=s.mask))
    return out


class SampleReader(CalibrationDataReader):
    """onnxruntime's calibration feed (batch 1, the export size), preprocessing on demand.

    `source` is either prepared network inputs or a `SampledSplit` plus the spec to
    prepare its images with; the latter holds one image in memory at a time.
    """

    def __init__(
        self,
        input_name: str,
        source: list[np.ndarray] | SampledSplit,
        preprocess: PreprocessSpec | None = None,
    ) -> None:
        if len(source) == 0:
            raise SegkdError("calibration needs at least one image")
        if isinstance(source, SampledSplit) and preprocess is None:
            raise ValueError("a SampledSplit source needs the PreprocessSpec to apply")
        self.input_name = input_name
        self.source = source
        self.preprocess = preprocess
        self._next = 0

    def _input(self, position: int) -> np.ndarray:
        if isinstance(self.source, SampledSplit):
            assert self.preprocess is not None
            x, _ = self.preprocess.apply(self.source.load(position).image, input_order="RGB")
            return x
        return self.source[position]

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self):
            return None
        x = self._input(self._next)
        self._next += 1
        return {self.input_name: x}

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return len(self.source)


class ChunkReader(CalibrationDataReader):
    """At most `size` items of another reader: one `collect_data` call's worth."""

    def __init__(self, reader: CalibrationDataReader, size: int) -> None:
        self.reader, self.left = reader, size

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.left <= 0:
            return None
        self.left -= 1
        return self.reader.get_next()
