"""Label specifications: class names, palettes and the ignore id shared by every stage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

IGNORE_INDEX = 255

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip


def generated_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """A deterministic, well-spread palette for datasets that ship none (VOC-style bit mixing)."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i + 1
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return tuple(out)


def _is_rgb(colour: Any) -> bool:
    """Three whole numbers in 0..255 (a colour beyond them overflows uint8 when drawn)."""
    return (
        isinstance(colour, (tuple, list))
        and len(colour) == 3
        and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255
            for v in colour
        )
    )


@dataclass(frozen=True)
class LabelSpec:
    """Class names and RGB palette of a model's output; label ids index both."""

    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...] = field(default=())
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        if isinstance(self.names, str) or not all(isinstance(n, str) for n in self.names):
            raise ValueError(f"names must be a list of class names, got {self.names!r:.60}")
        # A UTF-8 byte-order mark an editor put before class 0 is not part of its name
        # (checkpoints written before classes.txt was read without it still carry one).
        object.__setattr__(self, "names", tuple(n.lstrip("\ufeff") for n in self.names))
        if not self.names:
            raise ValueError("a label spec needs at least one class")
        if len(self.names) >= self.ignore_index:
            raise ValueError(
                f"{len(self.names)} classes collide with ignore id {self.ignore_index}"
            )
        if not self.palette:
            object.__setattr__(self, "palette", generated_palette(len(self.names)))
        if len(self.palette) != len(self.names):
            raise ValueError(
                f"palette has {len(self.palette)} colours for {len(self.names)} classes"
            )
        for name, colour in zip(self.names, self.palette, strict=True):
            if not _is_rgb(colour):
                raise ValueError(
                    f"palette colour {colour!r:.40} of class {name!r} is not three whole "
                    "numbers in 0..255"
                )

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def color_lut(self) -> np.ndarray:
        """256x1x3 uint8 RGB lookup table for cv2.LUT; ignore and unknown ids map to black."""
        lut = np.zeros((256, 1, 3), dtype=np.uint8)
        lut[: self.num_classes, 0] = np.asarray(self.palette, dtype=np.uint8)
        return lut

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "palette": [list(c) for c in self.palette],
            "ignore_index": self.ignore_index,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelSpec:
        names, palette = d["names"], d.get("palette", ())
        if isinstance(names, str) or not isinstance(names, (list, tuple)):
            raise ValueError(f"names must be a list of class names, got {names!r:.60}")
        if not isinstance(palette, (list, tuple)) or not all(
            isinstance(c, (list, tuple)) for c in palette
        ):
            raise ValueError(f"palette must be a list of [r, g, b], got {palette!r:.60}")
        return cls(
            names=tuple(str(n) for n in names),
            palette=tuple(tuple(c) for c in palette),  # checked in __post_init__
            ignore_index=int(d.get("ignore_index", IGNORE_INDEX)),
        )

    @classmethod
    def subset_of_cityscapes(cls, names: Sequence[str]) -> LabelSpec:
        """Cityscapes names/colours for a subset of its classes, in the given order."""
        pal = dict(zip(CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, strict=True))
        return cls(names=tuple(names), palette=tuple(pal[n] for n in names))


CITYSCAPES = LabelSpec(names=CITYSCAPES_CLASSES, palette=CITYSCAPES_PALETTE)
