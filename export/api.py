"""`segkd export`: checkpoint -> verified ONNX artifacts (+ TensorRT engines) + export.json.

Everything is written into a hidden staging folder beside the output folder and checked
against the PyTorch model on held-out images; the complete new folder (artifacts and
export.json) then replaces the old one in one rename (core.atomic_io.publish_folder).
A failed or interrupted export, a full disk included, leaves the earlier export exactly
as it was; a successful one leaves exactly the new export (plus any files of the user's
that were in the folder).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.errors import SegkdError
from core.numbers import positive_int
from core.schema.export import EXPORT
from core.schema.tensorrt import TrtOptions
from core.schema.tolerances import Tolerances
from export.calibration import SampledSplit, prepare
from export.int8 import CALIBRATION_METHODS, RECIPES
from export.manifest import Manifest
from export.onnx_file import MAX_OPSET
from export.onnx_fp32 import (
    INPUT_DTYPES,
    INPUT_NAME,
    OUTPUT_NAMES,
    check_label_stride,
    check_output_kind,
)
from export.plan import ExportPlan
from export.publish import publish, user_entries
from export.steps import (
    pct,
    stage_engines,
    stage_fp16,
    stage_fp32,
    stage_int8,
    stage_reference,
    verify_onnx,
)
from runtime.backends.tensorrt_builder import tensorrt_unavailable_reason
from runtime.metadata import EXPORT_JSON, PRECISIONS, sha256_of
from runtime.sizes import parse_size

log = logging.getLogger(__name__)

# export_checkpoint's defaults are the command's (core/schema/export.py).
_EXPORT_DEFAULTS = EXPORT.defaults()

MIN_OPSET = 13  # per-channel Q/DQ needs 13; MAX_OPSET is TensorRT 10.3's ceiling (onnx_file)


@dataclass
class ExportReport:
    out_dir: Path
    manifest_path: Path
    manifest: dict[str, Any]
    seconds: float

    @property
    def artifacts(self) -> list[dict[str, Any]]:
        return self.manifest["artifacts"]

    @property
    def skipped(self) -> list[dict[str, str]]:
        return self.manifest["skipped"]

    def artifact(self, file: str) -> dict[str, Any]:
        for a in self.artifacts:
            if a["file"] == file:
                return a
        raise KeyError(file)


def _as_list(value: str | Sequence[str], option: str, allowed: Sequence[str]) -> list[str]:
    items = [v.strip().lower() for v in value.split(",")] if isinstance(value, str) else list(value)
    items = [v for v in items if v]
    if not items:
        raise SegkdError(f"{option}: give at least one of {', '.join(allowed)}")
    bad = [v for v in items if v not in allowed]
    if bad:
        raise SegkdError(f"{option}: unknown value {bad[0]!r}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))  # de-duplicated, in the given order


def export_checkpoint(
    ckpt_path: str | Path,
    out_dir: str | Path,
    precisions: str | Sequence[str] = _EXPORT_DEFAULTS["precisions"],
    input_size: str | tuple[int, int] | None = _EXPORT_DEFAULTS["input_size"],
    calib_data: str | None = _EXPORT_DEFAULTS["calib_data"],
    calib_images: int = _EXPORT_DEFAULTS["calib_images"],
    verify_images: int = _EXPORT_DEFAULTS["verify_images"],
    sample_seed: int = _EXPORT_DEFAULTS["sample_seed"],
    output: str = _EXPORT_DEFAULTS["output"],
    label_dtype: str = _EXPORT_DEFAULTS["label_dtype"],
    input_dtype: str = _EXPORT_DEFAULTS["input_dtype"],
    label_stride: int | None = _EXPORT_DEFAULTS["label_stride"],
    dynamic: bool = _EXPORT_DEFAULTS["dynamic"],
    opset: int = _EXPORT_DEFAULTS["opset"],
    simplify: bool = _EXPORT_DEFAULTS["simplify"],
    int8_method: str = _EXPORT_DEFAULTS["int8_method"],
    int8_variants: str | Sequence[str] = _EXPORT_DEFAULTS["int8_variants"],
    tolerances: Tolerances | None = None,
    require_trt: bool = _EXPORT_DEFAULTS["require_trt"],
    build_engines: bool = True,
    trt: TrtOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportReport:
    """Export a segkd checkpoint to `out_dir`; raise SegkdError on bad input or failed checks.

    `calib_data` (a dataset SPEC) supplies INT8 calibration images from its train split
    and verification images from its val split; None = the data the checkpoint was
    trained on (its config), else "synthetic". Both are a random sample of their split
    drawn with `sample_seed`; export.json records the seed and the images drawn.

    input_dtype "uint8": every artifact takes the resized frame's uint8 pixels (NHWC, BGR)
    and normalises inside the graph; calibration and verification feed the same pixels,
    and verification compares with the PyTorch model fed the host-normalised float input.
    output "labels-lowres": argmax at the model's output stride, or at 1/`label_stride`
    of the input (see export/onnx_fp32.py).
    """
    started = time.perf_counter()
    wanted = _as_list(precisions, "--precision", PRECISIONS)
    plan = ExportPlan(
        ckpt_path=Path(ckpt_path),
        out=Path(out_dir),
        precisions=wanted,
        variants=_as_list(int8_variants, "--int8-variants", list(RECIPES))
        if "int8" in wanted
        else [],
        input_size=input_size,
        calib_data=calib_data,
        calib_images=calib_images,
        verify_images=verify_images,
        sample_seed=sample_seed,
        output=output,
        label_dtype=label_dtype,
        input_dtype=input_dtype,
        label_stride=label_stride,
        dynamic=dynamic,
        opset=opset,
        simplify=simplify,
        int8_method=int8_method,
        tol=tolerances or Tolerances(),
        require_trt=require_trt,
        build_engines=build_engines,
        trt=trt or TrtOptions(),
        say=progress or log.info,
    )
    for step in PREPARE:  # every input is read and checked before the long work
        step(plan)
    run_staged(plan)
    return ExportReport(
        out_dir=plan.out,
        manifest_path=plan.out / EXPORT_JSON,
        manifest=plan.written,
        seconds=time.perf_counter() - started,
    )


def check_options(plan: ExportPlan) -> None:
    """The options' values; TensorRT's presence when --require-trt asks for engines."""
    check_output_kind(plan.output)
    if plan.input_dtype not in INPUT_DTYPES:
        raise SegkdError(
            f"--input-dtype must be one of {', '.join(INPUT_DTYPES)}, got {plan.input_dtype!r}"
        )
    if plan.label_dtype not in ("uint8", "int32"):
        raise SegkdError(f"--label-dtype must be 'uint8' or 'int32', got {plan.label_dtype!r}")
    opset = plan.opset
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise SegkdError(f"--opset must be an integer in {MIN_OPSET}..{MAX_OPSET}, got {opset!r}")
    if plan.int8_method not in CALIBRATION_METHODS:
        raise SegkdError(
            f"--int8-method must be one of {', '.join(CALIBRATION_METHODS)}, "
            f"got {plan.int8_method!r}"
        )
    positive_int("--calib-images", plan.calib_images)
    positive_int("--verify-images", plan.verify_images)
    seed = plan.sample_seed
    if not isinstance(seed, int) or seed < 0:
        raise SegkdError(f"--sample-seed must be an integer >= 0, got {seed!r}")
    if plan.require_trt and plan.build_engines:  # fail before the long ONNX work, not after it
        reason = tensorrt_unavailable_reason()
        if reason is not None:
            raise SegkdError(f"--require-trt: cannot build TensorRT engines: {reason}")


def load_checkpoint(plan: ExportPlan) -> None:
    """The model, its labels and preprocessing at the export size, a QAT state, the data."""
    from distill.checkpoint import checkpoint_specs, load_model

    try:
        plan.model, plan.ckpt = load_model(plan.ckpt_path)
    except SegkdError:
        raise
    except Exception as e:  # torch's unpickler raises assorted errors on arbitrary bytes
        raise SegkdError(
            f"cannot read checkpoint {plan.ckpt_path}: not a segkd checkpoint ({type(e).__name__})"
        ) from None
    plan.labels, pre = checkpoint_specs(plan.ckpt)
    if plan.label_stride is not None and plan.output != "labels-lowres":
        raise SegkdError("--label-stride applies to --output labels-lowres only")
    plan.label_stride = check_label_stride(plan.model, plan.label_stride)
    given = plan.input_size
    plan.size = pre.input_size if given is None else parse_size(given, "--input-size", 32)
    pre = pre.with_input_size(plan.size)
    plan.pre = pre.uint8_input() if plan.input_dtype == "uint8" else pre
    plan.qat = _qat_state(plan)
    plan.data_spec = plan.calib_data or str(
        (plan.ckpt.get("config") or {}).get("data") or "synthetic"
    )
    user_entries(plan.out)  # refuses a folder that is not an export before the long work


def _qat_state(plan: ExportPlan) -> dict[str, Any] | None:
    """A QAT checkpoint's state (`segkd qat`), checked against the export options."""
    if "qat" not in plan.ckpt:
        return None
    from distill.qat.checkpoint import check_qat_state
    from distill.qat.deploy import check_export_options

    path = str(plan.ckpt_path)
    qat = check_qat_state(plan.ckpt["qat"], path)
    check_export_options(qat, plan.size, plan.dynamic, plan.input_dtype, path)
    return qat


def describe(plan: ExportPlan) -> None:
    """The metadata every artifact carries, and export.json's header and options."""
    assert plan.labels is not None and plan.pre is not None
    labels, pre = plan.labels.to_dict(), plan.pre.to_dict()
    arch, output = plan.ckpt["arch"], plan.output
    plan.meta_base = {
        "arch": arch,
        "labels": labels,
        "preprocess": pre,
        "output": output,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAMES[output],
    }
    ckpt = plan.ckpt_path
    plan.manifest = Manifest(
        arch=arch,
        labels=labels,
        preprocess=pre,
        checkpoint={"path": str(ckpt.resolve()), "sha256": sha256_of(ckpt)},
        options={
            "precisions": plan.precisions,
            "input_size": list(plan.size),
            "output": output,
            "label_dtype": plan.label_dtype,
            "input_dtype": plan.input_dtype,
            "label_stride": plan.label_stride,
            "dynamic": plan.dynamic,
            "opset": plan.opset,
            "simplify": plan.simplify,
            "int8_method": plan.int8_method,
            "int8_variants": plan.variants,
            "sample_seed": plan.sample_seed,
            "tolerances": asdict(plan.tol),
        },
    )


def load_verification_images(plan: ExportPlan) -> None:
    """Data problems surface before the long export work, not after it."""
    assert plan.labels is not None and plan.pre is not None and plan.manifest is not None
    n, spec, seed = plan.verify_images, plan.data_spec, plan.sample_seed
    plan.say(f"loading {n} verification images: {spec} val (seed {seed})")
    plan.val_split = SampledSplit(spec, "val", n, seed)
    plan.val_raw = list(plan.val_split)
    plan.with_gt = tuple(plan.val_split.labels.names) == tuple(plan.labels.names)
    if not plan.with_gt:
        plan.manifest.notes.append(
            f"{spec} has other classes than the model: no mIoU vs ground truth"
        )
    plan.val = prepare(plan.val_raw, plan.pre)


# Read and check everything, in this order, before any file is written.
PREPARE: tuple[Callable[[ExportPlan], None], ...] = (
    check_options,
    load_checkpoint,
    describe,
    load_verification_images,
)
# Write and check the artifacts in a staging folder, then publish it as the new --out.
STAGED: tuple[Callable[[ExportPlan], None], ...] = (
    stage_fp32,
    stage_fp16,
    stage_int8,
    verify_onnx,
    stage_reference,
    stage_engines,
    publish,
)


def run_staged(plan: ExportPlan) -> None:
    """The STAGED steps in a hidden folder beside --out; a failure leaves --out as it was."""
    out = plan.out
    plan.target = out.resolve()  # a symlinked --out: replace the folder it points to
    plan.target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{plan.target.name}.export-staging-"
    plan.staging = Path(tempfile.mkdtemp(prefix=prefix, dir=plan.target.parent))
    try:
        for step in STAGED:
            step(plan)
    except OSError as e:  # a full disk, a read-only or vanished folder: the user's to fix
        where = f" ({e.filename})" if e.filename else ""
        if e.filename and Path(str(e.filename)).is_relative_to(plan.staging):  # hidden: its name
            where = f" (writing {Path(str(e.filename)).name})"
        elif e.filename and Path(str(e.filename)).is_relative_to(tempfile.gettempdir()):
            where = f" (in the temporary folder {tempfile.gettempdir()}: set TMPDIR to move it)"
        kept = "the earlier export there is unchanged" if out.exists() else "nothing was written"
        raise SegkdError(
            f"--out {out}: cannot write the export: {e.strerror or e}{where}; {kept}"
        ) from None
    finally:
        shutil.rmtree(plan.staging, ignore_errors=True)


def format_summary(report: ExportReport) -> str:
    """The table `segkd export` prints: one row per artifact, then skips and notes."""
    rows = [("artifact", "precision", "variant", "size", "check")]
    for a in report.artifacts:
        size = f"{a['size_bytes'] / 2**20:.1f} MiB"
        if "parity" in a:
            p = a["parity"]
            diff = p.get("max_abs_logit_diff")
            diff_txt = f"max|Δlogit| {diff:.1e}, " if isinstance(diff, float) else ""
            check = f"vs PyTorch: {diff_txt}labels {pct(p['pixel_agreement'])}"
        else:
            g = a.get("agreement", {})
            check = f"vs fp32: labels {pct(g.get('pixel_agreement', 0.0))}, mIoU {100 * g.get('miou_vs_fp32', 0.0):.1f}"
            if g.get("miou_vs_ground_truth") is not None:
                check += (
                    f"; mIoU vs GT {100 * g['miou_vs_ground_truth']:.1f}"
                    f" (fp32 {100 * g['fp32_miou_vs_ground_truth']:.1f})"
                )
        rows.append((a["file"], a["precision"], a["variant"], size, check))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
        for r in rows
    ]
    lines.insert(1, "-" * max(len(line) for line in lines))
    for s in report.skipped:
        lines.append(f"skipped {s['what']}: {s['why']}")
    for n in report.manifest.get("notes", []):
        lines.append(f"note: {n}")
    lines.append(f"{report.manifest_path} ({report.seconds:.1f} s)")
    return "\n".join(lines)
