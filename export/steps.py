"""The staged steps of an export: each writes or checks files in the plan's staging folder.

stage_fp32 -> stage_fp16 -> stage_int8 -> verify_onnx -> stage_reference -> stage_engines,
then export/publish.py's publish. Each takes the plan (export/plan.py) alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
from onnxruntime.quantization.calibrate import TensorsData

from core.errors import SegkdError
from export.calibration import SampledSplit, SampleReader, prepare
from export.fp16 import DEFAULT_FP32_OPS, convert_fp16
from export.int8 import RECIPES, calibrate_int8, count_qdq, quantize_int8
from export.int8_tensorrt import placement_summary
from export.manifest import Skipped, file_facts, write_json_atomic
from export.onnx_file import default_opset, finalize, io_signature, save_onnx, set_metadata
from export.onnx_fp32 import INPUT_NAME, export_fp32
from export.plan import FILES, ExportPlan, Staged
from export.tensorrt_graph import uint8_casts_through_float
from export.verify import Agreement, compare, engine_runner, onnx_runner, torch_reference
from runtime.backends.tensorrt_builder import EngineBuild, build_engine, tensorrt_unavailable_reason
from runtime.machine import cpu_info
from runtime.reference_set import (
    DEFAULT_IMAGES,
    REFERENCE_FILE,
    ReferenceSample,
    write_reference_set,
)
from runtime.tensorrt_onnx_check import describe_targets, require_tensorrt_onnx


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def stage(plan: ExportPlan, a: Staged, extra: dict[str, Any]) -> None:
    """Stamp metadata, check and write one ONNX artifact; fill its export.json entry.

    Every file an engine may be built from (all but the CPU INT8 variant) must pass the
    static TensorRT check first: a Jetson should never be the first to find out.
    """
    set_metadata(a.proto, {**plan.meta_base, "precision": a.precision, "variant": a.variant})
    uint8_casts_through_float(a.proto)
    finalize(a.proto, a.file)
    if a.variant != "cpu":
        require_tensorrt_onnx(a.proto, a.file)
        extra = {**extra, "tensorrt_check": {"passed": describe_targets()}}
    path = a.path = save_onnx(a.proto, plan.staging / a.file)
    inputs, outputs = io_signature(a.proto)
    a.entry = {
        "file": a.file,
        "format": "onnx",
        "precision": a.precision,
        "variant": a.variant,
        "output": plan.meta_base["output"],
        **file_facts(path),
        "inputs": inputs,
        "outputs": outputs,
        "input_name": inputs[0]["name"],
        "output_name": outputs[0]["name"],
        "opset": default_opset(a.proto),
        "ir_version": int(a.proto.ir_version),
        **extra,
    }


def stage_fp32(plan: ExportPlan) -> None:
    """fp32 is always built and verified: it is the source of the other precisions."""
    assert plan.pre is not None and plan.manifest is not None
    pixels = plan.pre if plan.pre.raw_pixels else None
    h, w = plan.size
    plan.say(
        f"exporting fp32 ONNX at {h}x{w}{' (dynamic)' if plan.dynamic else ''}"
        f"{', uint8 NHWC input' if pixels is not None else ''}"
    )
    fp32 = export_fp32(
        plan.model,
        input_size=plan.size,
        output=plan.output,
        label_dtype=plan.label_dtype,
        dynamic=plan.dynamic,
        opset=plan.opset,
        do_simplify=plan.simplify,
        pixels=pixels,
        label_stride=plan.label_stride,
    )
    plan.manifest.notes.extend(fp32.notes)
    a = Staged("fp32", FILES["fp32"], "fp32", "portable", fp32.model, "fp32" in plan.precisions)
    stage(plan, a, {"exporter": fp32.exporter, "simplified": fp32.simplified})
    plan.staged["fp32"] = a


def stage_fp16(plan: ExportPlan) -> None:
    if "fp16" not in plan.precisions:
        return
    plan.say("converting to fp16 ONNX")
    proto = convert_fp16(plan.staged["fp32"].proto)
    a = Staged("fp16", FILES["fp16"], "fp16", "portable", proto, ship=True)
    stage(plan, a, {"fp32_ops": list(DEFAULT_FP32_OPS)})
    plan.staged["fp16"] = a


def stage_int8(plan: ExportPlan) -> None:
    """The INT8 files: from a QAT checkpoint's scales, else calibrated on train images."""
    if not plan.variants:
        return
    if plan.qat is not None:  # quantization-aware training already fixed every scale
        _int8_from_qat(plan)
        return
    assert plan.manifest is not None
    method, seed = plan.int8_method, plan.sample_seed
    plan.say(
        f"sampling {plan.calib_images} calibration images: {plan.data_spec} train (seed {seed})"
    )
    calib = SampledSplit(plan.data_spec, "train", plan.calib_images, seed)
    reader = SampleReader(INPUT_NAME, calib, plan.pre)  # reads each image when calibrated on
    plan.manifest.calibration = {
        **calib.describe(),
        "method": method,
        "preprocessing": "runtime PreprocessSpec.apply at the export size",
    }
    fp32 = plan.staging / FILES["fp32"]
    ranges: dict[tuple[str, ...] | None, TensorsData] = {}  # one calibration per op-type set
    for variant in plan.variants:
        recipe = RECIPES[variant]
        if recipe.op_types not in ranges:
            plan.say(f"calibrating INT8 ({method}, {len(reader)} images)")
            ranges[recipe.op_types] = calibrate_int8(fp32, reader, recipe, method)
        plan.say(f"quantizing INT8 ({variant})")
        proto = quantize_int8(fp32, reader, recipe, method, ranges=ranges[recipe.op_types])
        _stage_int8(plan, variant, proto, method)


def _int8_from_qat(plan: ExportPlan) -> None:
    """The INT8 files from a QAT checkpoint's learned weights and scales: no calibration."""
    from distill.qat.deploy import int8_from_qat

    assert plan.manifest is not None and plan.qat is not None
    qat = plan.qat
    plan.manifest.calibration = {
        "source": "segkd qat: the TensorRT file from the learned scales; the CPU file from "
        "the ranges its calibration stored; no images read here",
        "qat_calibration": qat["export"].get("calibration"),
        "qat_training": {k: v for k, v in qat.get("training", {}).items() if k != "train_images"},
    }
    for variant in plan.variants:
        plan.say(f"writing INT8 ({variant}) from the QAT checkpoint")
        proto, method = int8_from_qat(plan.staged["fp32"].proto, qat, RECIPES[variant])
        _stage_int8(plan, variant, proto, method)


def _stage_int8(plan: ExportPlan, variant: str, proto: onnx.ModelProto, method: str) -> None:
    assert plan.manifest is not None
    recipe = RECIPES[variant]
    key = "int8" if variant == "tensorrt" else f"int8-{variant}"
    a = Staged(key, recipe.file, "int8", variant, proto, ship=True)
    quant = {**recipe.describe(), "method": method, "qdq_nodes": count_qdq(proto)}
    if recipe.mixed_fp16:
        quant["placement"] = placement_summary(proto)
        quant["high_precision"] = quant["placement"]["high_precision"]
        if method != "qat" and quant["high_precision"] != "fp16":
            plan.manifest.notes.append(
                f"{recipe.file}: calibrated activations exceed fp16's safe range, so the "
                "graph stays fp32 between its Q/DQ nodes (TensorRT runs those parts in fp32)"
            )
    if recipe.symmetric_only:
        quant["zero_points"] = "all int8 zero (checked)"
    stage(plan, a, {"quantization": quant})
    plan.staged[key] = a


def verify_onnx(plan: ExportPlan) -> None:
    """Compare every staged ONNX file with PyTorch; fill entries; SegkdError on a miss.

    Keeps the PyTorch reference label maps, against which engines are checked later.
    """
    assert plan.pre is not None and plan.labels is not None and plan.manifest is not None
    pre, staged = plan.pre, plan.staged
    plan.say(f"verifying {len(staged)} ONNX files on {len(plan.val)} held-out images")
    runners = {
        k: onnx_runner(a.path or Path(a.file), a.proto, a.precision, a.entry["output"], pre.layout)
        for k, a in staged.items()
    }
    providers = {k: r.provider for k, r in runners.items()}
    lowres = any(a.entry["output"] == "labels-lowres" for a in staged.values())
    ref = torch_reference(plan.model, pre if pre.raw_pixels else None, lowres, plan.label_stride)
    k, ignore, gt = plan.labels.num_classes, plan.labels.ignore_index, plan.with_gt
    results, plan.ref_labels, _ = compare(plan.val, runners, ref, k, ignore, gt, 1, providers)
    other: dict[str, Agreement] = {}
    if plan.dynamic:
        # Baked-in shape constants only show at another size: check one, at batch 2.
        val2 = prepare(plan.val_raw[:4], pre.with_input_size(_other_size(pre.input_size)))
        other, _, _ = compare(val2, runners, ref, k, ignore, gt, 2, providers)
    failures = []
    for key, a in staged.items():
        failures += _judge(a, results[key], other.get(key), plan.tol)
    if failures:
        raise SegkdError("export verification failed: " + "; ".join(failures))
    plan.manifest.verification = {
        **plan.val_split.describe(),  # type: ignore[union-attr]
        "reference": "PyTorch fp32 (CPU)",
        "ground_truth": plan.with_gt,
        # INT8 kernels, and so the agreement figures, depend on the CPU's ISA
        "cpu": cpu_info(),
    }


def _other_size(size: tuple[int, int]) -> tuple[int, int]:
    """A second size for dynamic exports, a multiple of 8 distinct from the traced one."""
    h, w = size
    for scale in (0.75, 1.25):
        other = (max(32, int(h * scale) // 8 * 8), max(32, int(w * scale) // 8 * 8))
        if other != size:
            return other
    return (h + 8, w + 8)


def _judge(a: Staged, res: Agreement, other: Agreement | None, tol: Any) -> list[str]:
    """One ONNX file's checks against its tolerance, written into its entry; the misses.
    `other`: its result at the second size of a dynamic export."""
    need = tol.min_agreement(a.precision)
    block = {**res.to_dict(), "min_pixel_agreement": need}
    failures = []
    if a.precision == "fp32":
        block["max_abs_diff_tolerance"] = tol.fp32_max_abs_diff
        block["reference"] = "PyTorch fp32"
        checks = [(res, "")]
        if other is not None:
            checks.append((other, " at " + "x".join(map(str, other.input_shape[2:]))))
        for r, where in checks:
            failures += _fp32_misses(a.file + where, r, tol.fp32_max_abs_diff, need)
        a.entry["parity"] = block
    else:
        block["reference"] = "PyTorch fp32 labels; images held out from calibration"
        a.entry["agreement"] = block
        if res.pixel_agreement < need:
            failures.append(
                f"{a.file}: labels agree with fp32 on {pct(res.pixel_agreement)} of pixels, "
                f"below the {a.precision} minimum {pct(need)} (relax it with --min-"
                f"{a.precision}{', or try another --int8-method' if a.precision == 'int8' else ''})"
            )
    if other is not None:
        a.entry["dynamic_check"] = other.to_dict()
    a.entry["provider"] = res.provider
    return failures


def _fp32_misses(where: str, r: Agreement, max_abs_diff: float, need: float) -> list[str]:
    misses = []
    # float32 rounding grows with the logits' magnitude: the bound is relative to it once
    # logits exceed 1 (a trained model's are ~10; a diverged one's 1e5).
    limit = max_abs_diff * max(1.0, r.max_abs_logit or 0.0)
    if r.max_abs_logit_diff is not None and not r.max_abs_logit_diff <= limit:
        misses.append(
            f"{where}: max |logit - PyTorch| {r.max_abs_logit_diff:.3g} exceeds "
            f"{limit:.3g} ({max_abs_diff:g} x max |logit| {r.max_abs_logit or 0:.3g})"
        )
    if r.pixel_agreement < need:
        misses.append(
            f"{where}: labels agree with PyTorch on {pct(r.pixel_agreement)} "
            f"of pixels, below {pct(need)}"
        )
    return misses


def stage_reference(plan: ExportPlan) -> None:
    """reference.npz: the first few verification images as the runtime resizes them, with
    their fp32 PyTorch labels (and ground truth), so `segkd build` can gate engines on a
    device without the dataset (runtime/reference_set.py)."""
    assert plan.pre is not None and plan.manifest is not None
    samples = []
    pairs = list(zip(plan.val_raw, plan.ref_labels, strict=True))[:DEFAULT_IMAGES]
    for raw, labels in pairs:
        resized, box = plan.pre.resize_frame(raw.image)
        samples.append(ReferenceSample(resized, labels, raw.mask if plan.with_gt else None, box))
    path = write_reference_set(plan.staging / REFERENCE_FILE, samples)
    plan.manifest.reference = {
        "file": REFERENCE_FILE,
        **file_facts(path),
        "images": len(samples),
        "image_order": "RGB",
        "labels": "PyTorch fp32, at the network input size",
        "ground_truth": plan.with_gt,
    }


def stage_engines(plan: ExportPlan) -> None:
    """Build and check one engine per precision where TensorRT is present; else record why not."""
    assert plan.manifest is not None
    skipped = plan.manifest.skipped
    if not plan.build_engines:
        skipped.append(Skipped("tensorrt engines", "not requested (build_engines=False)"))
        return
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        if plan.require_trt:
            raise SegkdError(f"--require-trt: cannot build TensorRT engines: {reason}")
        skipped.append(Skipped("tensorrt engines", reason))
        plan.say(f"TensorRT engines skipped: {reason} (the ONNX files are complete)")
        return
    for precision in plan.precisions:
        if precision == "int8" and "tensorrt" not in plan.variants:
            skipped.append(
                Skipped("model.int8.engine", "the TensorRT INT8 variant was not exported")
            )
            continue
        plan.engines.append(_engine(plan, precision))


def _engine(plan: ExportPlan, precision: str) -> dict[str, Any]:
    """Build one engine from its staged ONNX file, check it, write its sidecar; its entry."""
    src = plan.staged[precision]
    engine_file = f"model.{precision}.engine"
    layout = plan.meta_base["preprocess"]["layout"]
    plan.say(f"building TensorRT engine {engine_file} from {src.file}")
    built = build_engine(
        plan.staging / src.file,
        plan.staging / engine_file,
        precision=precision,
        onnx_sha256=src.entry["sha256"],
        input_size=plan.size,
        dynamic=plan.dynamic,
        opts=plan.trt,
        layout=layout,
    )
    entry = {
        "file": engine_file,
        "format": "tensorrt-engine",
        "precision": precision,
        "variant": "tensorrt",
        "output": plan.output,
        **built.manifest_facts(),
        "built_from": {"file": src.file, "sha256": src.entry["sha256"]},
        "agreement": _engine_agreement(plan, built, precision),
    }
    sidecar = {**plan.meta_base, "precision": precision, "variant": "tensorrt", **{
        k: entry[k] for k in ("sha256", "tensorrt_version", "gpu", "compute_capability",
                              "input_name", "output_name")
    }}  # fmt: skip
    write_json_atomic(sidecar, plan.staging / (engine_file + ".json"))
    return entry


def _engine_agreement(plan: ExportPlan, built: EngineBuild, precision: str) -> dict[str, Any]:
    """The engine's labels against PyTorch's on the verification images; SegkdError below
    the precision's minimum."""
    assert plan.labels is not None
    layout = plan.meta_base["preprocess"]["layout"]
    runner = engine_runner(built.path, precision, plan.output, layout)
    key, need = precision, plan.tol.min_agreement(precision)
    try:
        res, _, _ = compare(
            plan.val, {key: runner}, plan.ref_labels, plan.labels.num_classes,
            plan.labels.ignore_index, plan.with_gt, 1, {key: runner.provider},
        )  # fmt: skip
    finally:
        runner.close()
    if res[key].pixel_agreement < need:
        raise SegkdError(
            f"model.{precision}.engine: labels agree with fp32 on {pct(res[key].pixel_agreement)} of "
            f"pixels, below the {precision} minimum {pct(need)}"
        )
    return {**res[key].to_dict(), "min_pixel_agreement": need}
