"""The dataset interface every reader implements, and the shared image/label-file reader.

A SegDataset is a plain map-style sequence (`__len__`, `__getitem__`) that torch's
DataLoader accepts directly, yet imports nothing but numpy, OpenCV and Pillow.
`dataset[i]` is `(image HxWx3 uint8 RGB, mask HxW uint8 train ids, 255 = ignore)`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from core.errors import SegkdError
from core.labels import LabelSpec

Sample = tuple[np.ndarray, np.ndarray]
Transform = Callable[[np.ndarray, np.ndarray], Sample]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class SegDataset(ABC):
    """A split of a segmentation dataset: indexable (image, mask) pairs plus their labels."""

    name: str
    labels: LabelSpec
    transform: Transform | None = None

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def load(self, index: int) -> Sample:
        """The untransformed sample at a valid, non-negative index."""

    @abstractmethod
    def sample_id(self, index: int) -> str:
        """A relative name (no suffix) under which to save this sample's prediction."""

    def encode_label(self, train_ids: np.ndarray) -> np.ndarray:
        """Train ids -> the dataset's own on-disk label values (identity unless overridden)."""
        return check_train_ids(train_ids, self.labels).copy()

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {self.name} ({n} samples)")
        image, mask = self.load(index % n)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}: {len(self)} samples, {self.labels.num_classes} classes>"


def check_train_ids(train_ids: np.ndarray, labels: LabelSpec) -> np.ndarray:
    """Raise ValueError if `train_ids` holds a value that is neither a class nor ignore."""
    ids = np.asarray(train_ids)
    valid = np.zeros(256, dtype=bool)
    valid[: labels.num_classes] = True
    valid[labels.ignore_index] = True
    if ids.size and (ids.min() < 0 or ids.max() > 255 or not valid[ids.astype(np.intp)].all()):
        bad = sorted({int(v) for v in np.unique(ids) if not (0 <= v <= 255 and valid[int(v)])})
        raise ValueError(
            f"train ids {bad[:10]} are neither classes of {labels.num_classes} nor ignore"
        )
    return ids.astype(np.uint8, copy=False)


def read_rgb(path: Path) -> np.ndarray:
    """An image file -> HxWx3 uint8 RGB; SegkdError naming the file if it cannot be decoded.

    The pixels as stored: an EXIF orientation tag is ignored, as it is for the label
    image (Pillow does not apply it), so image and mask always share one pixel grid.
    OpenCV would otherwise rotate a phone JPEG and leave its mask unrotated.
    """
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        reason = "does not exist" if not path.exists() else "cannot be read as an image"
        raise SegkdError(f"{path}: {reason}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def exif_rotates(path: Path) -> bool:
    """True if an image file carries an EXIF orientation that turns it by 90 or 270 degrees."""
    try:
        with Image.open(path) as im:
            return im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return False


def read_text_lines(path: Path) -> list[str]:
    """The lines of a class or split list; SegkdError naming the file if it is not UTF-8.
    utf-8-sig: a byte-order mark (Windows editors) is not part of the first line; CRLF and
    CR line ends are split like LF."""
    try:
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as e:
        raise SegkdError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


def read_label_png(path: Path) -> np.ndarray:
    """A label image -> HxW uint8 of the raw values it stores.

    Read with Pillow, never cv2: a palettised PNG (VOC) holds class indices that cv2
    would expand into palette colours. 16/32-bit and float images are accepted when every
    value is a whole number in 0..255; otherwise the error names what the file holds.
    """
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "1", "F") and not im.mode.startswith("I"):
                raise SegkdError(
                    f"{path}: label image is {im.mode}; expected one channel of class ids "
                    "(grayscale or palettised PNG)"
                )
            mode, raw = im.mode, np.asarray(im)
    except FileNotFoundError:
        raise SegkdError(f"{path}: label file does not exist") from None
    except Image.DecompressionBombError as exc:  # a huge (or forged) size in the header
        raise SegkdError(
            f"{path}: label image too large to decode safely ({exc}); "
            "masks must have their image's size"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise SegkdError(f"{path}: cannot be read as a label image ({exc})") from None
    if raw.dtype != np.uint8:
        check_label_values(raw, f"{path}: label image ({mode}, {raw.dtype})")
        raw = raw.astype(np.uint8)
    return raw


def check_label_values(raw: np.ndarray, what: str) -> None:
    """SegkdError naming `what`, the values' range and the offending ones, unless every
    value is a whole number in 0..255 (what a uint8 class-id map can hold)."""
    if not raw.size:
        return
    if raw.dtype.kind == "f":
        finite = np.isfinite(raw)
        if not finite.all():
            raise SegkdError(f"{what} holds NaN or infinite values; class ids are whole numbers")
        frac = raw[raw != np.round(raw)]
        if frac.size:
            raise SegkdError(
                f"{what} holds values that are not whole numbers ({_listed(np.unique(frac))}); "
                "class ids are whole numbers 0..255"
            )
    lo, hi = raw.min(), raw.max()
    if lo < 0 or hi > 255:
        values = np.unique(raw)
        bad = values[(values < 0) | (values > 255)]
        raise SegkdError(
            f"{what} holds values {_number(lo)}..{_number(hi)}; {_listed(bad)} are outside "
            "0..255 (class ids 0..K-1, 255 = ignore)"
        )


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{float(v):g}"


def _listed(values: Sequence[float] | np.ndarray, most: int = 10) -> str:
    """[4, 200] as given, or the first `most` and how many more."""
    shown = ", ".join(_number(v) for v in values[:most])
    more = len(values) - most
    return f"[{shown}]" + (f" and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class LabelMapping:
    """How a dataset's raw label values become train ids: a 256-entry table and validity."""

    lut: np.ndarray  # uint8[256]: raw value -> train id (or ignore)
    valid: np.ndarray  # bool[256]: which raw values may appear at all

    @classmethod
    def identity(cls, labels: LabelSpec) -> LabelMapping:
        lut = np.arange(256, dtype=np.uint8)
        valid = np.zeros(256, dtype=bool)
        valid[: labels.num_classes] = True
        valid[labels.ignore_index] = True
        return cls(lut=lut, valid=valid)

    def apply(self, raw: np.ndarray, path: Path) -> np.ndarray:
        invalid = (~self.valid).astype(np.uint8)
        if cv2.LUT(raw, invalid).any():
            bad = [int(v) for v in np.unique(raw) if not self.valid[v]]
            allowed = np.flatnonzero(self.valid)
            raise SegkdError(
                f"{path}: label values {_listed(bad)} are neither a class nor ignore "
                f"(allowed: {_ranges(allowed)})"
            )
        return cv2.LUT(raw, self.lut)


def _ranges(values: np.ndarray) -> str:
    """[0,1,2,3,255] -> '0-3, 255' for short error messages."""
    parts, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(parts)


@dataclass(frozen=True)
class FilePair:
    image: Path
    mask: Path
    sample_id: str


class FileSegDataset(SegDataset):
    """A dataset of (image file, label file) pairs with a raw-value -> train-id mapping."""

    def __init__(
        self,
        name: str,
        labels: LabelSpec,
        pairs: Sequence[FilePair],
        mapping: LabelMapping,
        transform: Transform | None = None,
        empty_hint: str = "",
    ) -> None:
        if not pairs:
            raise SegkdError(f"{name}: the split is empty{': ' + empty_hint if empty_hint else ''}")
        for pair in pairs:
            if not pair.image.is_file():
                raise SegkdError(f"{pair.image}: image file does not exist")
            if not pair.mask.is_file():
                raise SegkdError(f"{pair.mask}: missing label file for image {pair.image}")
        self.name, self.labels, self.pairs = name, labels, list(pairs)
        self.mapping, self.transform = mapping, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> Sample:
        pair = self.pairs[index]
        image = read_rgb(pair.image)
        raw = read_label_png(pair.mask)
        if raw.shape != image.shape[:2]:
            rotated = raw.shape == image.shape[1::-1] and exif_rotates(pair.image)
            raise SegkdError(
                f"{pair.mask}: label is {raw.shape[1]}x{raw.shape[0]} (WxH) but image "
                f"{pair.image} is {image.shape[1]}x{image.shape[0]}"
                + (
                    " as stored; its EXIF orientation tag is ignored: rotate the image's pixels "
                    "(e.g. `mogrify -auto-orient`) to match the mask"
                    if rotated
                    else ""
                )
            )
        return image, self.mapping.apply(raw, pair.mask)

    def sample_id(self, index: int) -> str:
        return self.pairs[index].sample_id

    def image_path(self, index: int) -> Path:
        return self.pairs[index].image
