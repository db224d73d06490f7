"""Dataset SPEC strings (`synthetic:size=256x512`, `cityscapes:PATH`, ...) and per-dataset defaults.

Torch-free: `segkd eval` parses specs on a device that has only numpy and OpenCV.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import SegkdError
from core.preprocess import PreprocessSpec, ResizePolicy
from runtime.sizes import parse_size

FILE_KINDS = ("cityscapes", "voc", "ade20k", "folder")
KINDS = ("synthetic", *FILE_KINDS)

# Synthetic options and their defaults; each value is parsed by _SYNTHETIC_PARSERS.
SYNTHETIC_DEFAULTS: dict[str, Any] = {"size": (256, 512), "train": 2000, "val": 100, "seed": 0}


@dataclass(frozen=True)
class DatasetSpec:
    """A parsed SPEC: which reader, where its files are, and reader options."""

    kind: str
    path: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        if self.kind == "synthetic":
            opts = []
            for key, value in self.options.items():
                text = f"{value[0]}x{value[1]}" if key == "size" else str(value)
                opts.append(f"{key}={text}")
            return "synthetic" + (":" + ",".join(opts) if opts else "")
        return f"{self.kind}:{self.path}"


def _positive_int(spec: str, key: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise SegkdError(f"dataset spec {spec!r}: {key} must be an integer, got {text!r}") from None
    if value < 1:
        raise SegkdError(f"dataset spec {spec!r}: {key} must be >= 1, got {value}")
    return value


def _parse_synthetic_options(spec: str, text: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = (s.strip() for s in item.partition("="))
        if not sep or not value:
            raise SegkdError(f"dataset spec {spec!r}: expected key=value, got {item!r}")
        if key not in SYNTHETIC_DEFAULTS:
            known = ", ".join(SYNTHETIC_DEFAULTS)
            raise SegkdError(f"dataset spec {spec!r}: unknown option {key!r} (known: {known})")
        if key in options:
            raise SegkdError(f"dataset spec {spec!r}: option {key!r} given twice")
        if key == "size":
            # 32 px: below that the street scene's perspective has no room for objects.
            options[key] = parse_size(value, option=f"dataset spec {spec!r} size", minimum=32)
        elif key == "seed":
            try:
                options[key] = int(value)
            except ValueError:
                raise SegkdError(
                    f"dataset spec {spec!r}: seed must be an integer, got {value!r}"
                ) from None
            if options[key] < 0:
                raise SegkdError(f"dataset spec {spec!r}: seed must be >= 0, got {value}")
        else:
            options[key] = _positive_int(spec, key, value)
    return options


def parse_dataset_spec(spec: str | DatasetSpec) -> DatasetSpec:
    """'synthetic[:key=value,...]' or 'KIND:PATH' -> DatasetSpec; bad specs raise SegkdError."""
    if isinstance(spec, DatasetSpec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise SegkdError(f"dataset spec {spec!r}: empty; expected one of {', '.join(KINDS)}")
    kind, _, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "synthetic":
        return DatasetSpec(kind="synthetic", options=_parse_synthetic_options(spec, rest))
    if kind not in FILE_KINDS:
        raise SegkdError(
            f"dataset spec {spec!r}: unknown dataset {kind!r} (expected {', '.join(KINDS)})"
        )
    if not rest.strip():
        raise SegkdError(f"dataset spec {spec!r}: missing path, expected {kind}:PATH")
    try:
        path = Path(rest.strip()).expanduser()
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, ValueError, RuntimeError) as exc:  # e.g. a NUL byte, an unknown ~user
        raise SegkdError(f"dataset spec {spec!r}: unusable path ({exc})") from None
    if not exists:
        raise SegkdError(f"dataset spec {spec!r}: folder {path} does not exist")
    if not is_dir:
        raise SegkdError(f"dataset spec {spec!r}: {path} is not a folder")
    return DatasetSpec(kind=kind, path=path)


# Training defaults per dataset (METHOD.md "Training defaults"): SGD lr 0.01, wd 5e-4,
# random scale 0.5-2.0; they fill the options a run leaves None (core/schema/train.py holds
# the rest, e.g. SGD momentum). eval_size is the whole-image evaluation / export input size;
# None where images differ in size (VOC, ADE20K, folders) and the crop is used instead.
# resize is how a frame reaches the export size at eval and deploy. Training crops keep
# the aspect ratio, so images of varying shape are letterboxed (scaled to fit, padded);
# fixed-geometry datasets stretch, which at their own aspect ratio (Cityscapes 1024x2048
# -> 512x1024) is the same uniform scale without padding code.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "cityscapes": {
        "crop_size": (512, 1024),
        "iters": 40000,
        "batch_size": 8,
        "eval_size": (1024, 2048),
        "resize": "stretch",
    },
    "voc": {
        "crop_size": (512, 512),
        "iters": 40000,
        "batch_size": 16,
        "eval_size": None,
        "resize": "letterbox",
    },
    "ade20k": {
        "crop_size": (512, 512),
        "iters": 80000,
        "batch_size": 16,
        "eval_size": None,
        "resize": "letterbox",
    },
    "folder": {
        "crop_size": (512, 512),
        "iters": 20000,
        "batch_size": 8,
        "eval_size": None,
        "resize": "letterbox",
    },
    # Small and CPU-friendly: a few minutes on a laptop, still enough to rank models.
    "synthetic": {
        "crop_size": (128, 256),
        "iters": 300,
        "batch_size": 4,
        "eval_size": SYNTHETIC_DEFAULTS["size"],
        "scale_range": (0.75, 1.5),
        "resize": "stretch",
    },
}
_COMMON: dict[str, Any] = {
    "lr": 0.01,
    "weight_decay": 5e-4,
    "scale_range": (0.5, 2.0),
}


def dataset_defaults(kind: str | DatasetSpec) -> dict[str, Any]:
    """Training defaults (crop_size, scale_range, iters, batch_size, lr, weight_decay,
    eval_size, resize) for a dataset kind; a synthetic spec's size sets its sizes."""
    spec = kind if isinstance(kind, DatasetSpec) else None
    name = spec.kind if spec is not None else str(kind).lower()
    if name not in _DEFAULTS:
        raise SegkdError(f"unknown dataset {name!r} (expected {', '.join(KINDS)})")
    out = {**_COMMON, **_DEFAULTS[name]}
    if spec is not None and "size" in spec.options:
        h, w = spec.options["size"]
        out["eval_size"] = (h, w)
        out["crop_size"] = (max(32, h // 2), max(32, w // 2))
    return out


def spec_kind(data: str | DatasetSpec) -> str | None:
    """The dataset kind a SPEC names, without touching its path (which may be elsewhere)."""
    if isinstance(data, DatasetSpec):
        return data.kind
    kind = str(data).strip().partition(":")[0].strip().lower()
    return kind if kind in KINDS else None


def resize_policy(data: str | DatasetSpec | None) -> ResizePolicy:
    """How frames of this dataset reach the network's input size (see _DEFAULTS)."""
    kind = spec_kind(data) if data is not None else None
    return _DEFAULTS[kind]["resize"] if kind is not None else "stretch"


def deploy_preprocess(data: str | DatasetSpec, input_size: tuple[int, int]) -> PreprocessSpec:
    """The PreprocessSpec a model trained on `data` ships with: its size and resize policy."""
    return PreprocessSpec(input_size=tuple(input_size), resize=resize_policy(data))
