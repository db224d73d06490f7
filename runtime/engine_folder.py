"""`segkd build FOLDER`: TensorRT engines from an export folder, on the device that runs them.

A TensorRT engine is tied to the GPU, the TensorRT version and (on a Jetson) the L4T
release that built it, so it is built where it runs: the export folder is copied to the
Jetson and this module turns its ONNX files into engines there, with TensorRT, numpy and
cuda-python only (no torch, no checkpoint, no dataset, no ONNX Runtime).

For each precision: the ONNX file's sha256 is checked against export.json, the static
TensorRT check runs again where the onnx package is installed (else export.json's record
of it, for the same sha256, stands), the engine is built into a hidden name, fed the
folder's reference images (reference.npz, written by `segkd export`) and gated on pixel
agreement with the fp32 labels, as the export gates it. Only engines that pass are
renamed into place, then export.json is rewritten (atomically) to list them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.atomic_io import write_json_atomic
from core.errors import SegkdError
from core.labels import LabelSpec
from core.preprocess import PreprocessSpec
from core.schema.tolerances import Tolerances
from runtime.backends.tensorrt_builder import (
    EngineBuild,
    TrtOptions,
    build_engine,
    tensorrt_unavailable_reason,
)
from runtime.metadata import EXPORT_JSON, PRECISIONS, read_export_json, sha256_of
from runtime.reference_set import REFERENCE_FILE, read_reference_set, score_on_reference

log = logging.getLogger(__name__)

# export.json's tolerances when an older export recorded none: today's defaults.
DEFAULT_TOLERANCES = Tolerances()


@dataclass(frozen=True)
class PlannedEngine:
    precision: str
    onnx_file: str
    onnx_sha256: str
    engine_file: str
    input_size: tuple[int, int]
    dynamic: bool
    layout: str
    output_kind: str
    min_agreement: float
    static_check: str  # "recorded at export" | "not recorded": what export.json says


def _source_artifact(export: dict[str, Any], precision: str) -> dict[str, Any] | None:
    """The TensorRT-bound ONNX file of `precision` (INT8: the TensorRT Q/DQ variant)."""
    for a in export["artifacts"]:
        if not isinstance(a, dict) or a.get("format") != "onnx":
            continue
        if a.get("precision") == precision and a.get("variant") in ("portable", "tensorrt"):
            return a
    return None


def engine_name(precision: str, dla_core: int | None) -> str:
    return f"model.{precision}{'' if dla_core is None else f'.dla{dla_core}'}.engine"


def plan_builds(
    folder: Path,
    export: dict[str, Any],
    precisions: Sequence[str] | None = None,
    dla_core: int | None = None,
) -> list[PlannedEngine]:
    """Which engine comes from which ONNX file, and what it is gated on; SegkdError when
    the folder cannot give what is asked (missing or changed files, unknown precision)."""
    opts = export.get("options") or {}
    if precisions is None:
        # Every precision the folder has an ONNX file for; the DLA runs fp16/int8 only.
        precisions = [p for p in PRECISIONS if _source_artifact(export, p) is not None]
        if dla_core is not None:
            precisions = [p for p in precisions if p != "fp32"]
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise SegkdError(f"--precision: unknown {bad[0]!r}; choose from {', '.join(PRECISIONS)}")
    if not precisions:
        raise SegkdError(f"{folder}: no ONNX file to build an engine from")
    pre = export.get("preprocess") or {}
    size = opts.get("input_size") or pre.get("input_size")
    if not (isinstance(size, list) and len(size) == 2):
        raise SegkdError(f"{folder / EXPORT_JSON}: records no input size")
    tolerances = opts.get("tolerances") or {}
    plan = []
    for precision in precisions:
        src = _source_artifact(export, precision)
        if src is None:
            have = sorted(
                {str(a.get("precision")) for a in export["artifacts"] if isinstance(a, dict)}
            )
            raise SegkdError(
                f"{folder}: no TensorRT-bound {precision} ONNX file (it has {', '.join(have)}); "
                f"re-export with --precision {precision}"
            )
        path = folder / src["file"]
        if not path.is_file():
            raise SegkdError(f"{folder / EXPORT_JSON} lists {src['file']}, but {path} is missing")
        if sha256_of(path) != src.get("sha256"):
            raise SegkdError(
                f"{path}: sha256 differs from export.json; the copy is incomplete or the file "
                "was replaced (copy the export folder again)"
            )
        plan.append(
            PlannedEngine(
                precision=precision,
                onnx_file=src["file"],
                onnx_sha256=src["sha256"],
                engine_file=engine_name(precision, dla_core),
                input_size=(int(size[0]), int(size[1])),
                dynamic=bool(opts.get("dynamic", False)),
                layout=str(pre.get("layout", "NCHW")),
                output_kind=str(src.get("output") or opts.get("output") or "labels"),
                min_agreement=float(
                    tolerances.get(
                        f"{precision}_min_agreement", DEFAULT_TOLERANCES.min_agreement(precision)
                    )
                ),
                static_check="recorded at export" if src.get("tensorrt_check") else "not recorded",
            )
        )
    return plan


def static_check(folder: Path, step: PlannedEngine) -> str:
    """Re-run the static TensorRT check when the onnx package is here; else rely on the
    export's record (its sha256 was just checked). Returns what was done."""
    try:
        import onnx
    except ImportError:
        return f"onnx not installed: export's check {step.static_check}"
    from runtime.tensorrt_onnx_check import require_tensorrt_onnx

    require_tensorrt_onnx(onnx.load(str(folder / step.onnx_file)), step.onnx_file)
    return "passed here"


def with_engine_entries(
    export: dict[str, Any], entries: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """A copy of export.json listing `entries`, replacing artifacts of the same file name."""
    names = {e["file"] for e in entries}
    kept = [a for a in export["artifacts"] if not (isinstance(a, dict) and a.get("file") in names)]
    out = dict(export)
    out["artifacts"] = [*kept, *entries]
    out["skipped"] = [
        s for s in export.get("skipped") or []
        if not (isinstance(s, dict) and s.get("what") == "tensorrt engines")
    ]  # fmt: skip
    return out


def _engine_entry(step: PlannedEngine, built: EngineBuild, score: dict[str, Any]) -> dict[str, Any]:
    return {
        "file": step.engine_file,
        "format": "tensorrt-engine",
        "precision": step.precision,
        "variant": "tensorrt",
        "output": step.output_kind,
        **built.manifest_facts(),
        "built_from": {"file": step.onnx_file, "sha256": step.onnx_sha256},
        "built_by": "segkd build",
        "agreement": {
            **score,
            "min_pixel_agreement": step.min_agreement,
            "reference": f"{REFERENCE_FILE}: fp32 PyTorch labels from segkd export",
        },
    }


def _gate(
    path: Path, step: PlannedEngine, export: dict[str, Any], refs: list[Any]
) -> dict[str, Any]:
    from runtime.backends.tensorrt import TensorRTBackend

    labels = LabelSpec.from_dict(export["labels"])
    pre = PreprocessSpec.from_dict(export["preprocess"])
    backend = TensorRTBackend(
        path, device="cuda", precision=step.precision, output_kind=step.output_kind,
        cuda_graph=False,
    )  # fmt: skip
    with backend:
        score = score_on_reference(
            backend.run, refs, pre, step.output_kind, labels.num_classes, labels.ignore_index
        )
    if score.pixel_agreement < step.min_agreement:
        raise SegkdError(
            f"{step.engine_file}: labels agree with the fp32 reference on "
            f"{100 * score.pixel_agreement:.2f}% of pixels, below the {step.precision} minimum "
            f"{100 * step.min_agreement:.2f}%; the engine was not kept"
        )
    return score.to_dict()


@dataclass
class BuildReport:
    folder: Path
    engines: list[dict[str, Any]]
    seconds: float


def build_folder(
    folder: Path | str,
    precisions: Sequence[str] | None = None,
    opts: TrtOptions | None = None,
    say: Callable[[str], None] | None = None,
) -> BuildReport:
    """Build, gate and list the engines of an export folder on this machine's GPU."""
    started = time.perf_counter()
    folder = Path(folder)
    say = say or log.info
    opts = opts or TrtOptions()
    export = read_export_json(folder)
    plan = plan_builds(folder, export, precisions, opts.dla_core)
    ref_path = folder / REFERENCE_FILE
    if not ref_path.is_file():
        raise SegkdError(
            f"{folder}: no {REFERENCE_FILE} to check engines against (an export from an "
            "older segkd): re-export with this segkd, then copy the folder again"
        )
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise SegkdError(f"cannot build TensorRT engines here: {reason}")
    refs = read_reference_set(ref_path, export.get("reference"))
    staged: list[tuple[Path, Path, dict[str, Any]]] = []
    try:
        for step in plan:
            say(f"{step.onnx_file}: static TensorRT check {static_check(folder, step)}")
            tmp = folder / f".{step.engine_file}.building"
            say(f"building {step.engine_file} from {step.onnx_file}")
            built = build_engine(
                folder / step.onnx_file, tmp, precision=step.precision,
                onnx_sha256=step.onnx_sha256, input_size=step.input_size,
                dynamic=step.dynamic, opts=opts, layout=step.layout,
            )  # fmt: skip
            say(f"checking {step.engine_file} on {len(refs)} reference images")
            score = _gate(tmp, step, export, refs)
            entry = _engine_entry(step, built, score)
            staged.append((tmp, folder / step.engine_file, entry))
        # Everything passed: engines into place, then the manifest that lists them.
        for tmp, final, _ in staged:
            os.replace(tmp, final)
            # an engine `segkd export` built on another GPU had a sidecar; export.json
            # now describes this one
            final.with_name(final.name + ".json").unlink(missing_ok=True)
        entries = [e for _, _, e in staged]
        write_json_atomic(with_engine_entries(export, entries), folder / EXPORT_JSON, strict=True)
    finally:
        for tmp, _, _ in staged:
            tmp.unlink(missing_ok=True)
        for step in plan:
            (folder / f".{step.engine_file}.building").unlink(missing_ok=True)
    return BuildReport(folder=folder, engines=entries, seconds=time.perf_counter() - started)


def format_build(report: BuildReport) -> str:
    """What `segkd build` prints: one line per engine, then the manifest it updated."""
    lines = []
    for e in report.engines:
        g = e["agreement"]
        where = f"{e['gpu']}" + ("" if e["dla_core"] is None else f", DLA core {e['dla_core']}")
        how = "from cache" if e["from_cache"] else f"built in {e['build_seconds']:.0f} s"
        check = f"labels vs fp32 {100 * g['pixel_agreement']:.2f}%"
        if g.get("miou_vs_ground_truth") is not None:
            check += f", mIoU vs GT {100 * g['miou_vs_ground_truth']:.1f}"
        lines.append(
            f"{e['file']}  {e['precision']}  TensorRT {e['tensorrt_version']} on {where}  "
            f"{how}  {check}"
        )
    lines.append(f"{report.folder / EXPORT_JSON} ({report.seconds:.1f} s)")
    return "\n".join(lines)
