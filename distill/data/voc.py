"""PASCAL VOC 2012: JPEGImages + SegmentationClass(Aug) + ImageSets/Segmentation/<split>.txt.

SegmentationClass masks are palettised PNGs whose palette indices are the class ids
(0 background .. 20, 255 the "difficult" border = ignore); SegmentationClassAug (SBD)
masks are plain grayscale PNGs with the same ids. Both are read through Pillow.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import SegkdError
from core.labels import LabelSpec, generated_palette
from distill.data.base import FilePair, FileSegDataset, LabelMapping, Transform, read_text_lines

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

# The official VOC colour map is the bit-mixing palette starting from index 0 (black);
# runtime's generated_palette starts from index 1, so prepend black.
VOC = LabelSpec(names=VOC_CLASSES, palette=((0, 0, 0), *generated_palette(len(VOC_CLASSES) - 1)))

MASK_DIRS = ("SegmentationClass", "SegmentationClassAug")


def find_voc_root(path: Path) -> Path:
    """Accept VOC2012/ itself, or VOCdevkit/ holding VOC2012/."""
    for candidate in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise SegkdError(f"voc:{path}: no JPEGImages/ folder here (expected the VOC2012 folder)")


class VOCDataset(FileSegDataset):
    def __init__(self, path: Path, split: str, transform: Transform | None = None) -> None:
        root = find_voc_root(path)
        list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            raise SegkdError(f"voc:{path}: no split list {list_file}")
        ids = [line.split()[0] for line in read_text_lines(list_file) if line.strip()]
        pairs = [
            FilePair(
                image=root / "JPEGImages" / f"{i}.jpg", mask=self._mask_path(root, i), sample_id=i
            )
            for i in ids
        ]
        super().__init__(
            name=f"voc/{split}",
            labels=VOC,
            pairs=pairs,
            mapping=LabelMapping.identity(VOC),
            transform=transform,
            empty_hint=f"{list_file} lists no images",
        )

    @staticmethod
    def _mask_path(root: Path, image_id: str) -> Path:
        # SegmentationClass first (the official masks), SBD's augmented set for the rest.
        for folder in MASK_DIRS:
            candidate = root / folder / f"{image_id}.png"
            if candidate.is_file():
                return candidate
        return root / MASK_DIRS[0] / f"{image_id}.png"
