"""What runtime needs to know about a model file, read from the artifact contract.

An ONNX file carries it in `metadata_props["segkd"]`; an export folder in `export.json`;
any file may have a sidecar `<file>.json` with the same keys as the ONNX "segkd" dict.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.atomic_io import sha256_of
from core.errors import SegkdError
from core.labels import LabelSpec
from core.preprocess import PreprocessSpec

# labels-lowres: label maps at the network's output stride (argmax before the upsample);
# the runtime resizes them (nearest, pixel centres aligned) straight to the frame size.
OutputKind = Literal["logits", "labels", "labels-lowres"]
OUTPUT_KINDS = ("logits", "labels", "labels-lowres")
PRECISIONS = ("fp32", "fp16", "int8")
EXPORT_JSON = "export.json"
EXPORT_FORMAT = "segkd-export"
EXPORT_VERSION = 1
METADATA_KEY = "segkd"
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class ModelMeta:
    arch: str
    labels: LabelSpec
    preprocess: PreprocessSpec
    output: OutputKind = "logits"
    precision: str = "fp32"
    input_name: str | None = None
    output_name: str | None = None
    # Anything else the artifact recorded (sha256, tensorrt_version, gpu, parity ...).
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: Path | str) -> ModelMeta:
        if not isinstance(d, dict):
            raise SegkdError(f"{where}: segkd metadata is not a JSON object")
        for key in ("labels", "preprocess"):
            if key not in d:
                raise SegkdError(f"{where}: segkd metadata has no '{key}' entry")
        try:
            labels = LabelSpec.from_dict(d["labels"])
            preprocess = PreprocessSpec.from_dict(d["preprocess"])
        except (KeyError, TypeError, ValueError) as e:
            raise SegkdError(f"{where}: invalid segkd metadata ({type(e).__name__}: {e})") from None
        output = d.get("output", "logits")
        if output not in OUTPUT_KINDS:
            raise SegkdError(
                f"{where}: metadata 'output' must be one of {', '.join(OUTPUT_KINDS)}, "
                f"got {output!r} (written by a newer segkd?)"
            )
        precision = str(d.get("precision", "fp32"))
        if precision not in PRECISIONS:
            raise SegkdError(f"{where}: unknown precision {precision!r} in metadata")
        known = {"arch", "labels", "preprocess", "output", "precision", "input_name", "output_name"}
        return cls(
            arch=str(d.get("arch", "unknown")),
            labels=labels,
            preprocess=preprocess,
            output=output,
            precision=precision,
            input_name=d.get("input_name"),
            output_name=d.get("output_name"),
            extra={k: v for k, v in d.items() if k not in known},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "labels": self.labels.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "output": self.output,
            "precision": self.precision,
            "input_name": self.input_name,
            "output_name": self.output_name,
            **self.extra,
        }


def parse_metadata_json(text: str, where: Path | str) -> ModelMeta:
    try:
        d = json.loads(text.lstrip("\ufeff"))  # a byte-order mark an editor added
    except json.JSONDecodeError as e:
        raise SegkdError(f"{where}: segkd metadata is not valid JSON ({e})") from None
    except RecursionError:
        raise SegkdError(f"{where}: segkd metadata is nested too deeply to be ours") from None
    return ModelMeta.from_dict(d, where)


def read_export_json(folder: Path) -> dict[str, Any]:
    """Load and check `folder/export.json`."""
    path = folder / EXPORT_JSON
    if not path.is_file():
        raise SegkdError(f"{folder} is not an export folder: it has no {EXPORT_JSON}")
    try:
        d = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: a byte-order mark
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SegkdError(f"cannot read {path}: {e}") from None
    except RecursionError:  # JSON nested thousands of levels: not a manifest segkd wrote
        raise SegkdError(f"{path} is nested too deeply to be a segkd export manifest") from None
    if not isinstance(d, dict) or d.get("format") != EXPORT_FORMAT:
        raise SegkdError(f"{path} is not a segkd export manifest (format != {EXPORT_FORMAT!r})")
    version = d.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SegkdError(
            f"{path}: 'version' must be a positive integer (segkd writes {EXPORT_VERSION}), "
            f"got {version!r}; the manifest is damaged: re-export or re-copy the folder"
        )
    if version > EXPORT_VERSION:
        raise SegkdError(f"{path} was written by a newer segkd (version {version})")
    if not isinstance(d.get("artifacts"), list):
        raise SegkdError(f"{path} lists no 'artifacts'")
    return d


def artifact_meta(export: dict[str, Any], artifact: dict[str, Any], where: Path) -> ModelMeta:
    """Merge the folder-wide entries of export.json with one artifact's own entries."""
    d: dict[str, Any] = {k: export[k] for k in ("arch", "labels", "preprocess") if k in export}
    d.update({k: v for k, v in artifact.items() if k not in ("inputs", "outputs")})
    d.setdefault("sha256", None)  # export.json must record one: verify_sha256 refuses None
    inputs, outputs = artifact.get("inputs") or [], artifact.get("outputs") or []
    if inputs and "input_name" not in d:
        d["input_name"] = inputs[0].get("name")
    if outputs and "output_name" not in d:
        d["output_name"] = outputs[0].get("name")
    return ModelMeta.from_dict(d, where)


def sidecar_meta(path: Path) -> ModelMeta | None:
    """Metadata for a model file from `<file>.json` or the export.json beside it, if any."""
    sidecar = path.with_name(path.name + ".json")
    if sidecar.is_file():
        try:
            text = sidecar.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise SegkdError(f"cannot read {sidecar}: {e}") from None
        return parse_metadata_json(text, sidecar)
    if (path.parent / EXPORT_JSON).is_file():
        export = read_export_json(path.parent)
        for art in export["artifacts"]:
            if isinstance(art, dict) and art.get("file") == path.name:
                return artifact_meta(export, art, path.parent / EXPORT_JSON)
    return None


def verify_sha256(path: Path, meta: ModelMeta) -> None:
    """Refuse a file whose bytes differ from what the export recorded (truncated copy, edit).

    A file listed in export.json must have a sha256 there (segkd export always writes one):
    a null or missing one is refused, not skipped. A hand-written `<file>.json` sidecar
    may omit the key (nothing to check), but a key that is present must be a sha256.
    """
    if "sha256" not in meta.extra:
        return
    expected = meta.extra["sha256"]
    if not isinstance(expected, str) or not _SHA256.fullmatch(expected):
        raise SegkdError(
            f"{path}: its metadata records no valid sha256 (got {expected!r}), so its integrity "
            "cannot be checked; re-export it, or re-copy the export folder"
        )
    if sha256_of(path) != expected.lower():
        raise SegkdError(
            f"{path}: sha256 differs from the one recorded at export; the file is corrupt or "
            "was replaced (re-copy it or re-export)"
        )
