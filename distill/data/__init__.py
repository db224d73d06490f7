"""Datasets for training and evaluation: readers, the synthetic street scenes, transforms.

Everything here except `distill.data.loader` imports only numpy, OpenCV and Pillow, so
`segkd eval` can read datasets on a device without torch.
"""

from distill.data.base import SegDataset
from distill.data.build import build_dataset
from distill.data.spec import DatasetSpec, dataset_defaults, parse_dataset_spec
from distill.data.transforms import EvalTransform, TrainTransform

__all__ = [
    "DatasetSpec",
    "EvalTransform",
    "SegDataset",
    "TrainTransform",
    "build_dataset",
    "dataset_defaults",
    "parse_dataset_spec",
]
