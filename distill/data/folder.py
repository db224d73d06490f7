"""A user's own dataset: PATH/images/*, PATH/masks/<stem>.png, PATH/classes.txt.

classes.txt: one class a line in id order, either `name` or `name r g b` (all lines
the same form); blank lines and lines starting with '#' are skipped. Masks hold class
ids 0..K-1 and 255 for ignore (grayscale or palettised PNG). Splits come from
PATH/splits/<split>.txt (one image stem or file name a line) when that folder exists;
otherwise a deterministic 90/10 train/val split of the sorted image names.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import SegkdError
from core.labels import IGNORE_INDEX, LabelSpec
from distill.data.base import (
    IMAGE_SUFFIXES,
    FilePair,
    FileSegDataset,
    LabelMapping,
    Transform,
    read_text_lines,
)


def read_classes(path: Path) -> LabelSpec:
    """Parse classes.txt into a LabelSpec (palette generated when the file gives none)."""
    if not path.is_file():
        raise SegkdError(f"{path}: missing (one class name a line, in id order)")
    names: list[str] = []
    colours: list[tuple[int, int, int] | None] = []
    for lineno, line in enumerate(read_text_lines(path), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split()
        tail = parts[-3:]
        if len(parts) >= 4 and all(p.isdigit() for p in tail):
            rgb = tuple(int(p) for p in tail)
            if max(rgb) > 255:
                raise SegkdError(f"{path}:{lineno}: colour {rgb} is outside 0..255")
            names.append(" ".join(parts[:-3]))
            colours.append(rgb)  # type: ignore[arg-type]
        else:
            names.append(text)
            colours.append(None)
    if not names:
        raise SegkdError(f"{path}: lists no classes")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise SegkdError(f"{path}: class names {dup} appear more than once")
    if len(names) >= IGNORE_INDEX:  # LabelSpec's rule: every class id below the ignore id
        raise SegkdError(
            f"{path}: {len(names)} classes; at most {IGNORE_INDEX - 1} fit (class ids "
            f"0..{IGNORE_INDEX - 2}; mask value {IGNORE_INDEX} is the ignore id)"
        )
    given = [c for c in colours if c is not None]
    if given and len(given) != len(colours):
        raise SegkdError(f"{path}: give a colour (name r g b) on every line or on none")
    return LabelSpec(names=tuple(names), palette=tuple(given))  # type: ignore[arg-type]


def _images_by_stem(image_dir: Path) -> dict[str, Path]:
    images: dict[str, Path] = {}
    for p in sorted(image_dir.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            if p.stem in images:
                raise SegkdError(
                    f"{p}: two images share the stem {p.stem!r} ({images[p.stem].name})"
                )
            images[p.stem] = p
    return images


def default_split(stems: list[str], split: str) -> list[str]:
    """Every 10th sorted name (evenly spaced) is val, the rest train; deterministic."""
    n = len(stems)
    n_val = 0 if n < 2 else max(1, round(n / 10))
    val_idx = {int((k + 0.5) * n / n_val) for k in range(n_val)} if n_val else set()
    if split == "val":
        return [s for i, s in enumerate(stems) if i in val_idx]
    return [s for i, s in enumerate(stems) if i not in val_idx]


class FolderDataset(FileSegDataset):
    def __init__(self, root: Path, split: str, transform: Transform | None = None) -> None:
        image_dir, mask_dir = root / "images", root / "masks"
        for d in (image_dir, mask_dir):
            if not d.is_dir():
                raise SegkdError(f"folder:{root}: no {d.name}/ folder ({d})")
        labels = read_classes(root / "classes.txt")
        images = _images_by_stem(image_dir)
        split_dir = root / "splits"
        if split_dir.is_dir():
            list_file = split_dir / f"{split}.txt"
            if not list_file.is_file():
                raise SegkdError(f"folder:{root}: no split list {list_file}")
            stems = []
            for line in read_text_lines(list_file):
                if not line.strip():
                    continue
                stem = Path(line.strip()).stem
                if stem not in images:
                    raise SegkdError(
                        f"{list_file}: {line.strip()!r} is not an image in {image_dir}"
                    )
                stems.append(stem)
            hint = f"{list_file} lists no images"
        elif split in ("train", "val"):
            stems = default_split(sorted(images), split)
            hint = f"{len(images)} image(s) in {image_dir}; the 90/10 split needs at least 2"
        else:
            raise SegkdError(
                f"folder:{root}: split {split!r} needs {split_dir}/{split}.txt "
                "(without splits/ only train and val exist)"
            )
        pairs = [FilePair(image=images[s], mask=mask_dir / f"{s}.png", sample_id=s) for s in stems]
        super().__init__(
            name=f"folder:{root.name}/{split}",
            labels=labels,
            pairs=pairs,
            mapping=LabelMapping.identity(labels),
            transform=transform,
            empty_hint=hint,
        )
