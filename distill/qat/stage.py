"""`segkd qat`: fp32 student checkpoint -> QAT checkpoint (qat.pt) + its facts (qat.json)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import SegkdError
from core.numbers import positive_int
from core.preprocess import PreprocessSpec
from core.schema.qat import QAT
from distill.qat.checkpoint import qat_state
from distill.qat.graph_module import QuantGraph
from distill.qat.structure import Structure, build_structure, pre_processed_graph, same_graph
from distill.qat.train import QatOptions, train_qat

if TYPE_CHECKING:
    import torch

    from export.calibration import SampledSplit

log = logging.getLogger(__name__)

QAT_FILE = "qat.pt"
QAT_JSON = "qat.json"


def run_qat(
    ckpt_path: str | Path,
    out_dir: str | Path,
    *,
    input_size: tuple[int, int] | None = None,
    data: str | None = None,
    calib_images: int = QAT.default("calib_images"),
    train_images: int = QAT.default("train_images"),
    method: str = QAT.default("int8_method"),
    sample_seed: int = QAT.default("seed"),
    opts: QatOptions | None = None,
    progress: Callable[[str], None] | None = None,
    teacher: str | Path | None = None,
) -> dict[str, Any]:
    """Quantization-aware fine-tuning of a student in its TensorRT INT8 graph.

    Writes out_dir/qat.pt (a checkpoint `segkd export` turns into INT8 files without
    calibration) and out_dir/qat.json; returns the latter's content.
    """
    from core.atomic_io import write_json_atomic
    from distill.checkpoint import atomic_torch_save
    from export.calibration import SampledSplit, SampleReader, prepare
    from export.onnx_fp32 import INPUT_NAME, export_fp32

    say = progress or log.info
    opts = opts or QatOptions()
    positive_int("--calib-images", calib_images)
    positive_int("--train-images", train_images)
    _check_teacher(teacher, opts)
    model, ckpt, pre = load_student(ckpt_path)
    size = tuple(input_size or pre.input_size)
    pre = pre.with_input_size(size)
    data_spec = data or str((ckpt.get("config") or {}).get("data") or "synthetic")
    out = Path(out_dir)

    started = time.perf_counter()
    say(f"exporting the fp32 graph at {size[0]}x{size[1]}")
    fp32 = export_fp32(model, input_size=size, output="labels").model
    say(f"calibrating ({method}, {calib_images} images of {data_spec} train)")
    calib = SampledSplit(data_spec, "train", calib_images, sample_seed)
    structure = build_structure(fp32, SampleReader(INPUT_NAME, calib, pre), method)
    prepared_s = time.perf_counter() - started
    say(
        f"fake quantization at {len(structure.placement.activations)} activation points "
        f"({len(structure.scales)} scales), {len(structure.placement.weights)} weight Convs"
    )
    train_split = SampledSplit(data_spec, "train", train_images, sample_seed)
    images = [p.x for p in prepare(list(train_split), pre)]
    train_graph = structure.graph
    crop = opts.crop_size
    if crop is not None and tuple(crop) != size:
        _check_crop(crop, size)
        say(f"training on {crop[0]}x{crop[1]} crops: the same graph exported at that size")
        at_crop = pre_processed_graph(export_fp32(model, input_size=crop, output="labels").model)
        train_graph = same_graph(structure.graph, at_crop, f"--crop-size {crop[0]}x{crop[1]}")
    else:
        opts = replace(opts, crop_size=None)
    graph = QuantGraph(train_graph, structure.placement, structure.scales)

    teacher_model = _load_teacher(teacher, ckpt, pre, say) if teacher is not None else None
    training = train_qat(graph, images, opts, _ticker(opts.steps, say), teacher_model)
    training.update(
        options=opts.to_dict(),
        train_images=train_split.describe(),
        preparation_seconds=prepared_s,
        scales="learned" if opts.learn_scales else "fixed (calibration)",
        teacher=str(teacher) if teacher is not None else None,
    )
    qat = qat_state(
        weights=graph.float_weights(),
        placement=structure.placement,
        scales=graph.learned_scales() if opts.learn_scales else structure.scales,
        ranges=structure.ranges,
        export=_export_facts(size, method, calib),
        training=training,
    )
    summary = {
        "checkpoint": str(Path(ckpt_path).resolve()),
        "arch": ckpt["arch"],
        "input_size": list(size),
        **_counts(structure),
        "training": training,
        "total_seconds": time.perf_counter() - started,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({**ckpt, "qat": qat}, out / QAT_FILE)
    write_json_atomic(summary, out / QAT_JSON)
    return summary


def _check_teacher(teacher: str | Path | None, opts: QatOptions) -> None:
    """QatOptions checked the weight's range; here, that weight and --teacher go together."""
    if opts.teacher_weight > 0 and teacher is None:
        raise SegkdError(f"--teacher-weight {opts.teacher_weight:g} needs a --teacher")
    if teacher is not None and not opts.teacher_weight > 0:
        raise SegkdError("--teacher is given but --teacher-weight is 0; give its weight (> 0)")


def _load_teacher(
    spec: str | Path, ckpt: dict[str, Any], pre: PreprocessSpec, say: Callable[[str], None]
) -> torch.nn.Module:
    """The frozen teacher, fed the student's batches (segkd checkpoint or zoo SPEC)."""
    from distill.checkpoint import checkpoint_specs
    from distill.zoo.entry import load_teacher

    labels, _ = checkpoint_specs(ckpt)
    model, record, _ = load_teacher(spec, labels.names, pre)
    say(f"teacher in the loop: {record.get('arch', spec)}")
    return model.eval().requires_grad_(False)


def _check_crop(crop: tuple[int, int], size: tuple[int, ...]) -> None:
    if crop[0] > size[0] or crop[1] > size[1]:
        raise SegkdError(
            f"--crop-size {crop[0]}x{crop[1]} is larger than the input size {size[0]}x{size[1]}"
        )


def load_student(ckpt_path: str | Path) -> tuple[torch.nn.Module, dict[str, Any], PreprocessSpec]:
    """The fp32 student (not a QAT checkpoint), its checkpoint and its preprocessing."""
    from distill.checkpoint import checkpoint_specs, load_model

    model, ckpt = load_model(ckpt_path)
    if "qat" in ckpt:
        raise SegkdError(f"{ckpt_path} is already a QAT checkpoint; give the fp32 student")
    _, pre = checkpoint_specs(ckpt)
    return model, ckpt, pre


def _counts(structure: Structure) -> dict[str, int]:
    """Where the fake quantization sits: activation points, scale groups, weight Convs."""
    return {
        "activation_points": len(structure.placement.activations),
        "scale_groups": len(structure.scales),
        "weight_convs": len(structure.placement.weights),
    }


def _ticker(steps: int, say: Callable[[str], None]) -> Callable[[int, float], None]:
    """Reports the KD loss about ten times over the run."""

    def tick(step: int, loss: float) -> None:
        if step == 1 or step % max(1, steps // 10) == 0 or step == steps:
            say(f"QAT step {step}/{steps}: KD loss {loss:.4g}")

    return tick


def _export_facts(size: tuple[int, ...], method: str, calib: SampledSplit) -> dict[str, Any]:
    """What `segkd export` checks its options against (distill/qat/deploy.py)."""
    return {
        "input_size": list(size),
        "input_dtype": "float32",
        "output": "labels",
        "calibration_method": method,
        "calibration": calib.describe(),
    }
