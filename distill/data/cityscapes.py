"""Cityscapes: leftImg8bit/<split>/<city>/*_leftImg8bit.png + gtFine/.../*_gtFine_labelIds.png.

Label ids (0..33) are mapped to the 19 train ids with the official table
(cityscapesScripts/helpers/labels.py); every other id is ignore (255).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.errors import SegkdError
from core.labels import CITYSCAPES, IGNORE_INDEX
from distill.data.base import FilePair, FileSegDataset, LabelMapping, Transform, check_train_ids

# labelId of each train id 0..18, from the official table.
TRAIN_TO_LABEL_ID = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
NUM_LABEL_IDS = 34  # labelIds 0..33 are the only values a gtFine_labelIds.png holds
SPLITS = ("train", "val", "test")

_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"


def label_mapping() -> LabelMapping:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for train_id, label_id in enumerate(TRAIN_TO_LABEL_ID):
        lut[label_id] = train_id
    valid = np.zeros(256, dtype=bool)
    valid[:NUM_LABEL_IDS] = True
    return LabelMapping(lut=lut, valid=valid)


# train id -> labelId for saved predictions; ignore becomes 0 ("unlabeled").
_ENCODE = np.zeros(256, dtype=np.uint8)
_ENCODE[: len(TRAIN_TO_LABEL_ID)] = TRAIN_TO_LABEL_ID


class CityscapesDataset(FileSegDataset):
    def __init__(self, root: Path, split: str, transform: Transform | None = None) -> None:
        if split not in SPLITS:
            raise SegkdError(
                f"cityscapes:{root}: unknown split {split!r} (expected {', '.join(SPLITS)})"
            )
        image_dir = root / "leftImg8bit" / split
        label_dir = root / "gtFine" / split
        if not image_dir.is_dir():
            raise SegkdError(
                f"cityscapes:{root}: no folder {image_dir} (expected leftImg8bit/{split}/<city>/)"
            )
        pairs = []
        for image in sorted(image_dir.glob(f"*/*{_IMAGE_SUFFIX}")):
            city = image.parent.name
            stem = image.name[: -len(_IMAGE_SUFFIX)]
            pairs.append(
                FilePair(
                    image=image,
                    mask=label_dir / city / f"{stem}{_LABEL_SUFFIX}",
                    sample_id=f"{city}/{stem}",
                )
            )
        super().__init__(
            name=f"cityscapes/{split}",
            labels=CITYSCAPES,
            pairs=pairs,
            mapping=label_mapping(),
            transform=transform,
            empty_hint=f"no *{_IMAGE_SUFFIX} files in {image_dir}/<city>/",
        )

    def encode_label(self, train_ids: np.ndarray) -> np.ndarray:
        """Train ids -> labelIds, what the official evaluation (evalPixelLevelSemanticLabeling) reads."""
        return _ENCODE[check_train_ids(train_ids, self.labels)]
