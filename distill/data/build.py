"""SPEC + split -> a dataset object (torch-free)."""

from __future__ import annotations

from distill.data.ade20k import ADE20KDataset
from distill.data.base import SegDataset, Transform
from distill.data.cityscapes import CityscapesDataset
from distill.data.folder import FolderDataset
from distill.data.spec import SYNTHETIC_DEFAULTS, DatasetSpec, parse_dataset_spec
from distill.data.synthetic import SyntheticDataset
from distill.data.voc import VOCDataset

_FILE_READERS = {
    "cityscapes": CityscapesDataset,
    "voc": VOCDataset,
    "ade20k": ADE20KDataset,
    "folder": FolderDataset,
}


def build_dataset(
    spec: str | DatasetSpec, split: str, transform: Transform | None = None
) -> SegDataset:
    """The `split` of the dataset named by `spec`, with `transform(image, mask)` applied per item."""
    parsed = parse_dataset_spec(spec)
    if parsed.kind == "synthetic":
        return SyntheticDataset(
            split, **{**SYNTHETIC_DEFAULTS, **parsed.options}, transform=transform
        )
    assert parsed.path is not None  # parse_dataset_spec guarantees a path for file datasets
    return _FILE_READERS[parsed.kind](parsed.path, split, transform=transform)
