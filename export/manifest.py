"""export.json: what an export folder holds, written last and atomically.

The runtime (runtime/metadata.py) reads it to find each artifact's precision, I/O
names, preprocessing and labels; the sha256 of every file lets it refuse a truncated
or replaced copy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.atomic_io import write_json_atomic as _write_json
from runtime.metadata import EXPORT_FORMAT, EXPORT_VERSION, sha256_of


@dataclass
class Skipped:
    what: str
    why: str

    def to_dict(self) -> dict[str, str]:
        return {"what": self.what, "why": self.why}


@dataclass
class Manifest:
    arch: str
    labels: dict[str, Any]
    preprocess: dict[str, Any]
    checkpoint: dict[str, Any]
    options: dict[str, Any]
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    reference: dict[str, Any] | None = None  # reference.npz: what `segkd build` gates on
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "arch": self.arch,
            "labels": self.labels,
            "preprocess": self.preprocess,
            "checkpoint": self.checkpoint,
            "options": self.options,
            "calibration": self.calibration,
            "verification": self.verification,
            "reference": self.reference,
            "artifacts": self.artifacts,
            "skipped": [s.to_dict() for s in self.skipped],
            "notes": self.notes,
        }


def file_facts(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_of(path), "size_bytes": path.stat().st_size}


def write_json_atomic(data: dict[str, Any], path: Path) -> Path:
    """Strict JSON (no NaN/inf), written atomically."""
    return _write_json(data, path, strict=True)
