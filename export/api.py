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
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.quantization.calibrate import TensorsData

from core.atomic_io import publish_folder
from core.errors import SegkdError
from core.labels import LabelSpec
from core.preprocess import PreprocessSpec
from core.schema.tolerances import Tolerances
from export.calibration import (
    DEFAULT_SEED,
    Prepared,
    RawSample,
    SampledSplit,
    SampleReader,
    prepare,
)
from export.fp16 import DEFAULT_FP32_OPS, convert_fp16
from export.int8 import CALIBRATION_METHODS, RECIPES, calibrate_int8, count_qdq, quantize_int8
from export.int8_tensorrt import placement_summary
from export.manifest import Manifest, Skipped, file_facts, write_json_atomic
from export.onnx_file import (
    MAX_OPSET,
    default_opset,
    finalize,
    io_signature,
    save_onnx,
    set_metadata,
)
from export.onnx_fp32 import (
    INPUT_DTYPES,
    INPUT_NAME,
    OUTPUT_NAMES,
    check_label_stride,
    check_output_kind,
    export_fp32,
)
from export.tensorrt_graph import uint8_casts_through_float
from export.verify import Agreement, compare, engine_runner, onnx_runner, torch_reference
from runtime.backends.tensorrt_builder import TrtOptions, build_engine, tensorrt_unavailable_reason
from runtime.machine import cpu_info
from runtime.metadata import EXPORT_JSON, PRECISIONS, sha256_of
from runtime.reference_set import (
    DEFAULT_IMAGES,
    REFERENCE_FILE,
    ReferenceSample,
    write_reference_set,
)
from runtime.sizes import parse_size
from runtime.tensorrt_onnx_check import describe_targets, require_tensorrt_onnx

log = logging.getLogger(__name__)

FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx"}
MIN_OPSET = 13  # per-channel Q/DQ needs 13; MAX_OPSET is TensorRT 10.3's ceiling (onnx_file)


# Files an export writes into its folder; anything else there is the user's and is kept.
_OWN_FILE = re.compile(
    r"(export\.json|reference\.npz|model(\.[\w-]+)*\.(onnx|engine)(\.json)?|\.export-staging-.*)"
)


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


@dataclass
class _Staged:
    key: str  # "fp32", "fp16", "int8", "int8-cpu"
    file: str
    precision: str
    variant: str
    proto: onnx.ModelProto
    ship: bool
    entry: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the staged file, once written: what verification runs


def _as_list(value: str | Sequence[str], option: str, allowed: Sequence[str]) -> list[str]:
    items = [v.strip().lower() for v in value.split(",")] if isinstance(value, str) else list(value)
    items = [v for v in items if v]
    if not items:
        raise SegkdError(f"{option}: give at least one of {', '.join(allowed)}")
    bad = [v for v in items if v not in allowed]
    if bad:
        raise SegkdError(f"{option}: unknown value {bad[0]!r}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))  # de-duplicated, in the given order


def _other_size(size: tuple[int, int]) -> tuple[int, int]:
    """A second size for dynamic exports, a multiple of 8 distinct from the traced one."""
    h, w = size
    for scale in (0.75, 1.25):
        other = (max(32, int(h * scale) // 8 * 8), max(32, int(w * scale) // 8 * 8))
        if other != size:
            return other
    return (h + 8, w + 8)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def export_checkpoint(
    ckpt_path: str | Path,
    out_dir: str | Path,
    precisions: str | Sequence[str] = ("fp32", "fp16", "int8"),
    input_size: str | tuple[int, int] | None = None,
    calib_data: str | None = None,
    calib_images: int = 32,
    verify_images: int = 16,
    sample_seed: int = DEFAULT_SEED,
    output: str = "labels",
    label_dtype: str = "uint8",
    input_dtype: str = "float32",
    label_stride: int | None = None,
    dynamic: bool = False,
    opset: int = 17,
    simplify: bool = True,
    int8_method: str = "minmax",
    int8_variants: str | Sequence[str] = ("tensorrt", "cpu"),
    tolerances: Tolerances | None = None,
    require_trt: bool = False,
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
    say = progress or log.info
    tol = tolerances or Tolerances()
    trt_opts = trt or TrtOptions()
    wanted = _as_list(precisions, "--precision", PRECISIONS)
    variants = _as_list(int8_variants, "--int8-variants", list(RECIPES)) if "int8" in wanted else []
    check_output_kind(output)
    if input_dtype not in INPUT_DTYPES:
        raise SegkdError(
            f"--input-dtype must be one of {', '.join(INPUT_DTYPES)}, got {input_dtype!r}"
        )
    if label_dtype not in ("uint8", "int32"):
        raise SegkdError(f"--label-dtype must be 'uint8' or 'int32', got {label_dtype!r}")
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise SegkdError(f"--opset must be an integer in {MIN_OPSET}..{MAX_OPSET}, got {opset!r}")
    if int8_method not in CALIBRATION_METHODS:
        raise SegkdError(
            f"--int8-method must be one of {', '.join(CALIBRATION_METHODS)}, got {int8_method!r}"
        )
    for name, n in (("--calib-images", calib_images), ("--verify-images", verify_images)):
        if not isinstance(n, int) or n < 1:
            raise SegkdError(f"{name} must be a positive integer, got {n!r}")
    if not isinstance(sample_seed, int) or sample_seed < 0:
        raise SegkdError(f"--sample-seed must be an integer >= 0, got {sample_seed!r}")

    if require_trt and build_engines:  # fail before the long ONNX work, not after it
        reason = tensorrt_unavailable_reason()
        if reason is not None:
            raise SegkdError(f"--require-trt: cannot build TensorRT engines: {reason}")

    from distill.checkpoint import checkpoint_specs, load_model

    ckpt_path = Path(ckpt_path)
    try:
        model, ckpt = load_model(ckpt_path)
    except SegkdError:
        raise
    except Exception as e:  # torch's unpickler raises assorted errors on arbitrary bytes
        raise SegkdError(
            f"cannot read checkpoint {ckpt_path}: not a segkd checkpoint ({type(e).__name__})"
        ) from None
    labels, pre = checkpoint_specs(ckpt)
    if label_stride is not None and output != "labels-lowres":
        raise SegkdError("--label-stride applies to --output labels-lowres only")
    label_stride = check_label_stride(model, label_stride)
    size = pre.input_size if input_size is None else parse_size(input_size, "--input-size", 32)
    pre = pre.with_input_size(size)
    if input_dtype == "uint8":
        pre = pre.uint8_input()
    qat = _qat_state(ckpt, ckpt_path, size, dynamic, input_dtype)  # None: calibrate (PTQ)
    data_spec = calib_data or str((ckpt.get("config") or {}).get("data") or "synthetic")
    out = Path(out_dir)
    _user_entries(out)  # refuses a folder that is not an export before the long work
    meta_base = {
        "arch": ckpt["arch"],
        "labels": labels.to_dict(),
        "preprocess": pre.to_dict(),
        "output": output,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAMES[output],
    }
    manifest = Manifest(
        arch=ckpt["arch"],
        labels=labels.to_dict(),
        preprocess=pre.to_dict(),
        checkpoint={"path": str(ckpt_path.resolve()), "sha256": sha256_of(ckpt_path)},
        options={
            "precisions": wanted,
            "input_size": list(size),
            "output": output,
            "label_dtype": label_dtype,
            "input_dtype": input_dtype,
            "label_stride": label_stride,
            "dynamic": dynamic,
            "opset": opset,
            "simplify": simplify,
            "int8_method": int8_method,
            "int8_variants": variants,
            "sample_seed": sample_seed,
            "tolerances": asdict(tol),
        },
    )
    # Data problems surface before the long export work, not after it.
    say(f"loading {verify_images} verification images: {data_spec} val (seed {sample_seed})")
    val_split = SampledSplit(data_spec, "val", verify_images, sample_seed)
    val_raw, val_labels = list(val_split), val_split.labels
    with_gt = tuple(val_labels.names) == tuple(labels.names)
    if not with_gt:
        manifest.notes.append(
            f"{data_spec} has other classes than the model: no mIoU vs ground truth"
        )
    val = prepare(val_raw, pre)
    target = out.resolve()  # a symlinked --out: replace the folder it points to
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.export-staging-", dir=target.parent))
    try:
        staged = _export_onnx_artifacts(
            model, staging, size, wanted, variants, output, label_dtype, dynamic, opset,
            simplify, meta_base, manifest, say, pre if pre.raw_pixels else None, label_stride,
        )  # fmt: skip
        if variants:
            _quantize(staging, staged, variants, data_spec, calib_images, sample_seed,
                      int8_method, pre, meta_base, manifest, say, qat)  # fmt: skip
        ref_labels = _verify_onnx(
            model, staged, val, val_raw, pre, dynamic, labels, with_gt, tol, say, label_stride
        )
        manifest.verification = {
            **val_split.describe(),
            "reference": "PyTorch fp32 (CPU)",
            "ground_truth": with_gt,
            # INT8 kernels, and so the agreement figures, depend on the CPU's ISA
            "cpu": cpu_info(),
        }
        manifest.reference = _write_reference(staging, val_raw, pre, ref_labels, with_gt)
        engines = _engines(
            staging, staged, wanted, variants, size, dynamic, output, meta_base, val, ref_labels,
            labels, with_gt, tol, require_trt, build_engines, trt_opts, manifest, say,
        )  # fmt: skip
        for a in staged.values():
            if a.ship:
                manifest.artifacts.append(a.entry)
        manifest.artifacts.extend(engines)
        # The new folder, complete, then one step: the old export stays until that step.
        fresh = staging / "publish"
        fresh.mkdir()
        for entry in manifest.artifacts:
            os.replace(staging / entry["file"], fresh / entry["file"])
            sidecar = staging / (entry["file"] + ".json")
            if sidecar.exists():
                os.replace(sidecar, fresh / sidecar.name)
        os.replace(staging / REFERENCE_FILE, fresh / REFERENCE_FILE)
        # Listed now, not at the start: an --engine-cache inside --out was filled meanwhile.
        for name in _user_entries(out, refuse=False):
            _link_copy(target / name, fresh / name)
        written = manifest.to_dict()
        write_json_atomic(written, fresh / EXPORT_JSON)
        publish_folder(fresh, target)
        path = out / EXPORT_JSON
    except OSError as e:  # a full disk, a read-only or vanished folder: the user's to fix
        where = f" ({e.filename})" if e.filename else ""
        if e.filename and Path(str(e.filename)).is_relative_to(staging):  # hidden: its file name
            where = f" (writing {Path(str(e.filename)).name})"
        kept = "the earlier export there is unchanged" if out.exists() else "nothing was written"
        raise SegkdError(
            f"--out {out}: cannot write the export: {e.strerror or e}{where}; {kept}"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportReport(
        out_dir=out, manifest_path=path, manifest=written, seconds=time.perf_counter() - started
    )


def _write_reference(
    staging: Path,
    val_raw: list[RawSample],
    pre: PreprocessSpec,
    ref_labels: list[np.ndarray],
    with_gt: bool,
) -> dict[str, Any]:
    """reference.npz: the first few verification images as the runtime resizes them, with
    their fp32 PyTorch labels (and ground truth), so `segkd build` can gate engines on a
    device without the dataset (runtime/reference_set.py)."""
    samples = []
    for raw, labels in list(zip(val_raw, ref_labels, strict=True))[:DEFAULT_IMAGES]:
        resized, box = pre.resize_frame(raw.image)
        samples.append(ReferenceSample(resized, labels, raw.mask if with_gt else None, box))
    path = write_reference_set(staging / REFERENCE_FILE, samples)
    return {
        "file": REFERENCE_FILE,
        **file_facts(path),
        "images": len(samples),
        "image_order": "RGB",
        "labels": "PyTorch fp32, at the network input size",
        "ground_truth": with_gt,
    }


def _user_entries(out: Path, refuse: bool = True) -> list[str]:
    """Names in an existing --out that the export did not write (kept in the new folder).

    refuse: a non-empty folder that is not an export is refused (checked before the work
    starts): replacing it would drop its files.
    """
    if not out.exists():
        return []
    if not out.is_dir():
        raise SegkdError(f"--out {out}: exists and is not a folder")
    names = sorted(p.name for p in out.iterdir())
    other = [n for n in names if not _OWN_FILE.fullmatch(n)]
    if refuse and other and not (out / EXPORT_JSON).is_file():
        raise SegkdError(
            f"--out {out}: the folder is not empty and is not an export folder (it holds "
            f"{other[0]!r}{f' and {len(other) - 1} more' if len(other) > 1 else ''}); "
            "choose a new or empty folder, or a previous export to replace"
        )
    return other


def _link_copy(src: Path, dst: Path) -> None:
    """Hard-link (else copy) a user's file or folder into the new export folder."""
    try:
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, dst, symlinks=True, copy_function=os.link)
        elif src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            os.link(src, dst)
    except OSError:  # no hard links here (another file system, FAT, some NAS): copy
        if dst.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
        else:
            dst.unlink(missing_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst)


def _stage(staging: Path, a: _Staged, meta_base: dict[str, Any], extra: dict[str, Any]) -> None:
    """Stamp metadata, check and write one ONNX artifact; fill its export.json entry.

    Every file an engine may be built from (all but the CPU INT8 variant) must pass the
    static TensorRT check first: a Jetson should never be the first to find out.
    """
    set_metadata(a.proto, {**meta_base, "precision": a.precision, "variant": a.variant})
    uint8_casts_through_float(a.proto)
    finalize(a.proto, a.file)
    if a.variant != "cpu":
        require_tensorrt_onnx(a.proto, a.file)
        extra = {**extra, "tensorrt_check": {"passed": describe_targets()}}
    path = a.path = save_onnx(a.proto, staging / a.file)
    inputs, outputs = io_signature(a.proto)
    a.entry = {
        "file": a.file,
        "format": "onnx",
        "precision": a.precision,
        "variant": a.variant,
        "output": meta_base["output"],
        **file_facts(path),
        "inputs": inputs,
        "outputs": outputs,
        "input_name": inputs[0]["name"],
        "output_name": outputs[0]["name"],
        "opset": default_opset(a.proto),
        "ir_version": int(a.proto.ir_version),
        **extra,
    }


def _export_onnx_artifacts(
    model: torch.nn.Module,
    staging: Path,
    size: tuple[int, int],
    wanted: list[str],
    variants: list[str],
    output: str,
    label_dtype: str,
    dynamic: bool,
    opset: int,
    simplify: bool,
    meta_base: dict[str, Any],
    manifest: Manifest,
    say: Callable[[str], None],
    pixels: PreprocessSpec | None = None,
    label_stride: int | None = None,
) -> dict[str, _Staged]:
    say(
        f"exporting fp32 ONNX at {size[0]}x{size[1]}{' (dynamic)' if dynamic else ''}"
        f"{', uint8 NHWC input' if pixels is not None else ''}"
    )
    fp32 = export_fp32(
        model,
        input_size=size,
        output=output,
        label_dtype=label_dtype,
        dynamic=dynamic,
        opset=opset,
        do_simplify=simplify,
        pixels=pixels,
        label_stride=label_stride,
    )
    manifest.notes.extend(fp32.notes)
    staged: dict[str, _Staged] = {}
    # fp32 is always built and verified: it is the source of the other precisions.
    a = _Staged("fp32", FILES["fp32"], "fp32", "portable", fp32.model, ship="fp32" in wanted)
    _stage(staging, a, meta_base, {"exporter": fp32.exporter, "simplified": fp32.simplified})
    staged["fp32"] = a
    if "fp16" in wanted:
        say("converting to fp16 ONNX")
        proto = convert_fp16(fp32.model)
        a = _Staged("fp16", FILES["fp16"], "fp16", "portable", proto, ship=True)
        _stage(staging, a, meta_base, {"fp32_ops": list(DEFAULT_FP32_OPS)})
        staged["fp16"] = a
    return staged


def _quantize(
    staging: Path,
    staged: dict[str, _Staged],
    variants: list[str],
    data_spec: str,
    calib_images: int,
    seed: int,
    method: str,
    pre: PreprocessSpec,
    meta_base: dict[str, Any],
    manifest: Manifest,
    say: Callable[[str], None],
    qat: dict[str, Any] | None = None,
) -> None:
    if qat is not None:  # quantization-aware training already fixed every scale
        _quantize_from_qat(staging, staged, variants, qat, meta_base, manifest, say)
        return
    say(f"sampling {calib_images} calibration images: {data_spec} train (seed {seed})")
    calib = SampledSplit(data_spec, "train", calib_images, seed)
    reader = SampleReader(INPUT_NAME, calib, pre)  # reads each image when it is calibrated on
    manifest.calibration = {
        **calib.describe(),
        "method": method,
        "preprocessing": "runtime PreprocessSpec.apply at the export size",
    }
    fp32 = staging / FILES["fp32"]
    ranges: dict[tuple[str, ...] | None, TensorsData] = {}  # one calibration per op-type set
    for variant in variants:
        recipe = RECIPES[variant]
        if recipe.op_types not in ranges:
            say(f"calibrating INT8 ({method}, {len(reader)} images)")
            ranges[recipe.op_types] = calibrate_int8(fp32, reader, recipe, method)
        say(f"quantizing INT8 ({variant})")
        proto = quantize_int8(fp32, reader, recipe, method, ranges=ranges[recipe.op_types])
        key = "int8" if variant == "tensorrt" else f"int8-{variant}"
        a = _Staged(key, recipe.file, "int8", variant, proto, ship=True)
        quant = {**recipe.describe(), "method": method, "qdq_nodes": count_qdq(proto)}
        if recipe.mixed_fp16:
            quant["placement"] = placement_summary(proto)
            quant["high_precision"] = quant["placement"]["high_precision"]
            if quant["high_precision"] != "fp16":
                manifest.notes.append(
                    f"{recipe.file}: calibrated activations exceed fp16's safe range, so the "
                    "graph stays fp32 between its Q/DQ nodes (TensorRT runs those parts in fp32)"
                )
        if recipe.symmetric_only:
            quant["zero_points"] = "all int8 zero (checked)"
        _stage(staging, a, meta_base, {"quantization": quant})
        staged[key] = a


def _qat_state(
    ckpt: dict[str, Any], path: Path, size: tuple[int, int], dynamic: bool, input_dtype: str
) -> dict[str, Any] | None:
    """A QAT checkpoint's state (`segkd qat`), checked against the export options."""
    if "qat" not in ckpt:
        return None
    from distill.qat.checkpoint import check_qat_state
    from distill.qat.deploy import check_export_options

    qat = check_qat_state(ckpt["qat"], str(path))
    check_export_options(qat, size, dynamic, input_dtype, str(path))
    return qat


def _quantize_from_qat(
    staging: Path,
    staged: dict[str, _Staged],
    variants: list[str],
    qat: dict[str, Any],
    meta_base: dict[str, Any],
    manifest: Manifest,
    say: Callable[[str], None],
) -> None:
    """The INT8 files from a QAT checkpoint's learned weights and scales: no calibration."""
    from distill.qat.deploy import int8_from_qat

    manifest.calibration = {
        "source": "quantization-aware training (segkd qat): learned scales, no calibration here",
        "qat_calibration": qat["export"].get("calibration"),
        "qat_training": {k: v for k, v in qat.get("training", {}).items() if k != "train_images"},
    }
    for variant in variants:
        recipe = RECIPES[variant]
        say(f"writing INT8 ({variant}) from the QAT checkpoint's scales")
        proto = int8_from_qat(staged["fp32"].proto, qat, recipe)
        key = "int8" if variant == "tensorrt" else f"int8-{variant}"
        a = _Staged(key, recipe.file, "int8", variant, proto, ship=True)
        quant = {**recipe.describe(), "method": "qat", "qdq_nodes": count_qdq(proto)}
        if recipe.mixed_fp16:
            quant["placement"] = placement_summary(proto)
            quant["high_precision"] = quant["placement"]["high_precision"]
        if recipe.symmetric_only:
            quant["zero_points"] = "all int8 zero (checked)"
        _stage(staging, a, meta_base, {"quantization": quant})
        staged[key] = a


def _verify_onnx(
    model: torch.nn.Module,
    staged: dict[str, _Staged],
    val: list[Prepared],
    val_raw: list[RawSample],
    pre: PreprocessSpec,
    dynamic: bool,
    labels: LabelSpec,
    with_gt: bool,
    tol: Tolerances,
    say: Callable[[str], None],
    label_stride: int | None = None,
) -> list[np.ndarray]:
    """Compare every staged ONNX file with PyTorch; fill entries; SegkdError on a miss.

    Returns the PyTorch reference label maps, against which engines are checked later.
    """
    say(f"verifying {len(staged)} ONNX files on {len(val)} held-out images")
    runners = {
        k: onnx_runner(a.path or Path(a.file), a.proto, a.precision, a.entry["output"], pre.layout)
        for k, a in staged.items()
    }
    providers = {k: r.provider for k, r in runners.items()}
    lowres = any(a.entry["output"] == "labels-lowres" for a in staged.values())
    ref = torch_reference(model, pre if pre.raw_pixels else None, lowres, label_stride)
    k, ignore = labels.num_classes, labels.ignore_index
    results, ref_labels, _ = compare(val, runners, ref, k, ignore, with_gt, 1, providers)
    other: dict[str, Agreement] = {}
    if dynamic:
        # Baked-in shape constants only show at another size: check one, at batch 2.
        size2 = _other_size(pre.input_size)
        val2 = prepare(val_raw[:4], pre.with_input_size(size2))
        other, _, _ = compare(val2, runners, ref, k, ignore, with_gt, 2, providers)
    failures = []
    for key, a in staged.items():
        res = results[key]
        need = tol.min_agreement(a.precision)
        block = {**res.to_dict(), "min_pixel_agreement": need}
        checks = [(res, "")] + (
            [(other[key], " at " + "x".join(map(str, other[key].input_shape[2:])))]
            if dynamic
            else []
        )
        if a.precision == "fp32":
            block["max_abs_diff_tolerance"] = tol.fp32_max_abs_diff
            block["reference"] = "PyTorch fp32"
            for r, where in checks:
                # float32 rounding grows with the logits' magnitude: the bound is relative
                # to it once logits exceed 1 (a trained model's are ~10; a diverged one's 1e5).
                limit = tol.fp32_max_abs_diff * max(1.0, r.max_abs_logit or 0.0)
                if r.max_abs_logit_diff is not None and not r.max_abs_logit_diff <= limit:
                    failures.append(
                        f"{a.file}{where}: max |logit - PyTorch| {r.max_abs_logit_diff:.3g} exceeds "
                        f"{limit:.3g} ({tol.fp32_max_abs_diff:g} x max |logit| {r.max_abs_logit or 0:.3g})"
                    )
                if r.pixel_agreement < need:
                    failures.append(
                        f"{a.file}{where}: labels agree with PyTorch on {_pct(r.pixel_agreement)} "
                        f"of pixels, below {_pct(need)}"
                    )
            a.entry["parity"] = block
        else:
            block["reference"] = "PyTorch fp32 labels; images held out from calibration"
            a.entry["agreement"] = block
            if res.pixel_agreement < need:
                failures.append(
                    f"{a.file}: labels agree with fp32 on {_pct(res.pixel_agreement)} of pixels, "
                    f"below the {a.precision} minimum {_pct(need)} (relax it with --min-"
                    f"{a.precision}{', or try another --int8-method' if a.precision == 'int8' else ''})"
                )
        if dynamic:
            a.entry["dynamic_check"] = other[key].to_dict()
        a.entry["provider"] = res.provider
    if failures:
        raise SegkdError("export verification failed: " + "; ".join(failures))
    return ref_labels


def _engines(
    staging: Path,
    staged: dict[str, _Staged],
    wanted: list[str],
    variants: list[str],
    size: tuple[int, int],
    dynamic: bool,
    output: str,
    meta_base: dict[str, Any],
    val: list[Prepared],
    ref_labels: list[np.ndarray],
    labels: LabelSpec,
    with_gt: bool,
    tol: Tolerances,
    require_trt: bool,
    build: bool,
    opts: TrtOptions,
    manifest: Manifest,
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Build and check one engine per precision where TensorRT is present; else record why not."""
    if not build:
        manifest.skipped.append(Skipped("tensorrt engines", "not requested (build_engines=False)"))
        return []
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        if require_trt:
            raise SegkdError(f"--require-trt: cannot build TensorRT engines: {reason}")
        manifest.skipped.append(Skipped("tensorrt engines", reason))
        say(f"TensorRT engines skipped: {reason} (the ONNX files are complete)")
        return []
    entries = []
    for precision in wanted:
        key = precision
        if precision == "int8" and "tensorrt" not in variants:
            manifest.skipped.append(
                Skipped("model.int8.engine", "the TensorRT INT8 variant was not exported")
            )
            continue
        src = staged[key]
        engine_file = f"model.{precision}.engine"
        say(f"building TensorRT engine {engine_file} from {src.file}")
        built = build_engine(
            staging / src.file,
            staging / engine_file,
            precision=precision,
            onnx_sha256=src.entry["sha256"],
            input_size=size,
            dynamic=dynamic,
            opts=opts,
            layout=meta_base["preprocess"]["layout"],
        )
        runner = engine_runner(built.path, precision, output, meta_base["preprocess"]["layout"])
        try:
            res, _, _ = compare(
                val, {key: runner}, ref_labels, labels.num_classes, labels.ignore_index,
                with_gt, 1, {key: runner.provider},
            )  # fmt: skip
        finally:
            runner.close()
        agreement = {**res[key].to_dict(), "min_pixel_agreement": tol.min_agreement(precision)}
        if res[key].pixel_agreement < tol.min_agreement(precision):
            raise SegkdError(
                f"{engine_file}: labels agree with fp32 on {_pct(res[key].pixel_agreement)} of "
                f"pixels, below the {precision} minimum {_pct(tol.min_agreement(precision))}"
            )
        entry = {
            "file": engine_file,
            "format": "tensorrt-engine",
            "precision": precision,
            "variant": "tensorrt",
            "output": output,
            **built.manifest_facts(),
            "built_from": {"file": src.file, "sha256": src.entry["sha256"]},
            "agreement": agreement,
        }
        sidecar = {**meta_base, "precision": precision, "variant": "tensorrt", **{
            k: entry[k] for k in ("sha256", "tensorrt_version", "gpu", "compute_capability",
                                  "input_name", "output_name")
        }}  # fmt: skip
        write_json_atomic(sidecar, staging / (engine_file + ".json"))
        entries.append(entry)
    return entries


def format_summary(report: ExportReport) -> str:
    """The table `segkd export` prints: one row per artifact, then skips and notes."""
    rows = [("artifact", "precision", "variant", "size", "check")]
    for a in report.artifacts:
        size = f"{a['size_bytes'] / 2**20:.1f} MiB"
        if "parity" in a:
            p = a["parity"]
            diff = p.get("max_abs_logit_diff")
            diff_txt = f"max|Δlogit| {diff:.1e}, " if isinstance(diff, float) else ""
            check = f"vs PyTorch: {diff_txt}labels {_pct(p['pixel_agreement'])}"
        else:
            g = a.get("agreement", {})
            check = f"vs fp32: labels {_pct(g.get('pixel_agreement', 0.0))}, mIoU {100 * g.get('miou_vs_fp32', 0.0):.1f}"
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
