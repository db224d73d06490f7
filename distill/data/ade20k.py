"""ADE20K (SceneParsing, ADEChallengeData2016): images/{training,validation}/*.jpg and
annotations/{training,validation}/*.png with values 0..150.

Value 0 ("other") is ignore; class k (1..150) becomes train id k-1, the mmseg
`reduce_zero_label` convention every published ADE20K number uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.errors import SegkdError
from core.labels import IGNORE_INDEX, LabelSpec
from distill.data.base import FilePair, FileSegDataset, LabelMapping, Transform, check_train_ids

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea",
    "mirror", "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe",
    "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine",
    "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel",
    "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike",
    "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

ADE20K = LabelSpec(names=ADE20K_CLASSES)
SPLIT_DIRS = {
    "train": "training",
    "val": "validation",
    "training": "training",
    "validation": "validation",
}


def label_mapping() -> LabelMapping:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[1 : len(ADE20K_CLASSES) + 1] = np.arange(len(ADE20K_CLASSES), dtype=np.uint8)
    valid = np.zeros(256, dtype=bool)
    valid[: len(ADE20K_CLASSES) + 1] = True
    return LabelMapping(lut=lut, valid=valid)


# train id t -> t + 1; ignore -> 0, the annotation files' own encoding.
_ENCODE = np.zeros(256, dtype=np.uint8)
_ENCODE[: len(ADE20K_CLASSES)] = np.arange(1, len(ADE20K_CLASSES) + 1)


def find_ade_root(path: Path) -> Path:
    """Accept ADEChallengeData2016/ itself or the folder that holds it."""
    for candidate in (path, path / "ADEChallengeData2016"):
        if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
            return candidate
    raise SegkdError(
        f"ade20k:{path}: no images/ and annotations/ folders here (expected ADEChallengeData2016/)"
    )


class ADE20KDataset(FileSegDataset):
    def __init__(self, path: Path, split: str, transform: Transform | None = None) -> None:
        if split not in SPLIT_DIRS:
            raise SegkdError(f"ade20k:{path}: unknown split {split!r} (expected train or val)")
        root = find_ade_root(path)
        folder = SPLIT_DIRS[split]
        image_dir = root / "images" / folder
        if not image_dir.is_dir():
            raise SegkdError(f"ade20k:{path}: no folder {image_dir}")
        pairs = [
            FilePair(
                image=image,
                mask=root / "annotations" / folder / f"{image.stem}.png",
                sample_id=image.stem,
            )
            for image in sorted(image_dir.glob("*.jpg"))
        ]
        super().__init__(
            name=f"ade20k/{folder}",
            labels=ADE20K,
            pairs=pairs,
            mapping=label_mapping(),
            transform=transform,
            empty_hint=f"no .jpg files in {image_dir}",
        )

    def encode_label(self, train_ids: np.ndarray) -> np.ndarray:
        return _ENCODE[check_train_ids(train_ids, self.labels)]
