"""INT8 post-training quantization to explicit Q/DQ ONNX, one recipe per target runtime.

TensorRT (both 10.x and 11.x) consumes explicit Q/DQ graphs and rejects non-zero
zero-points, so its recipe is fully symmetric int8. ONNX Runtime's CPU kernels are
fastest with unsigned (asymmetric) activations, which fuse Conv+ReLU into QLinearConv
(docs/DEPLOY_FACTS.md, "TensorRT's ONNX limits" and "ONNX Runtime"); that recipe would
be rejected by TensorRT, hence two artifacts.
The TensorRT file is then rewritten into a mixed int8/fp16 graph at opset 19, because
strongly typed TensorRT runs every tensor in its ONNX type (export/int8_tensorrt.py).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import (
    HistogramCollector,
    TensorsData,
    create_calibrator,
    load_tensors_data,
    save_tensors_data,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from core.errors import SegkdError
from export.calibration import ChunkReader, SampleReader
from export.int8_tensorrt import mixed_precision_graph

CALIBRATION_METHODS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}

# Images per collect_data call: bounds calibration memory whatever --calib-images is
# (pspnet_r18 at 512x1024: each image held adds a few hundred MB, docs/notes/evalgeo.md).
CALIBRATION_CHUNK = 4

# TensorRT's entropy calibrator uses 2048 histogram bins folded into 128 quantized bins.
CALIBRATOR_OPTIONS: dict[str, dict[str, Any]] = {
    "minmax": {},
    "entropy": {"num_bins": 2048, "num_quantized_bins": 128},
    "percentile": {"num_bins": 2048, "percentile": 99.999},
}


@dataclass(frozen=True)
class Int8Recipe:
    """Everything that distinguishes one INT8 artifact from another."""

    name: str  # "tensorrt" or "cpu": the variant recorded in export.json
    file: str
    activation_type: QuantType
    weight_type: QuantType
    op_types: tuple[str, ...] | None  # None = every op type onnxruntime can quantize
    per_channel: bool
    extra_options: dict[str, Any] = field(default_factory=dict)
    symmetric_only: bool = False  # enforce all-zero int8 zero-points after writing
    float_classifier: bool = True  # keep the last Conv (features -> class scores) in float
    reduce_range: bool = False  # 7-bit weights: see CPU_RECIPE
    float_pooled_context: bool = False  # keep Convs on pooled context maps in float
    # TensorRT placement: quantized residual shortcuts, one scale per Concat, the rest
    # fp16 at opset 19 (export/int8_tensorrt.py)
    mixed_fp16: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "activations": "int8" if self.activation_type == QuantType.QInt8 else "uint8",
            "weights": "int8" if self.weight_type == QuantType.QInt8 else "uint8",
            "op_types": list(self.op_types) if self.op_types else "all",
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "float_classifier": self.float_classifier,
            "float_pooled_context": self.float_pooled_context,
            "high_precision": "fp16" if self.mixed_fp16 else "fp32",
            "format": "QDQ",
            **{
                k: v
                for k, v in self.extra_options.items()
                if isinstance(v, (bool, int, float, str, list))
            },
        }


# Symmetric int8 on Conv inputs: the Q/DQ placement NVIDIA recommends (inputs of
# quantizable layers, no Q/DQ on their outputs), biases that TensorRT fuses itself. Then
# mixed_fp16 adds the residual-shortcut and shared-Concat Q/DQ and makes the rest fp16,
# because strongly typed TensorRT runs every tensor in its ONNX type.
# The PSP pooling MatMuls are left in float: they cost nothing, and their operand, the
# pooling matrix (1/cells), changes with the input size, so a range calibrated at one
# size would clip at another in a dynamic graph.
TENSORRT_RECIPE = Int8Recipe(
    name="tensorrt",
    file="model.int8.onnx",
    activation_type=QuantType.QInt8,
    weight_type=QuantType.QInt8,
    op_types=("Conv",),
    per_channel=True,
    extra_options={
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "QuantizeBias": False,
        "OpTypesToExcludeOutputQuantization": ["Conv", "MatMul"],
    },
    symmetric_only=True,
    mixed_fp16=True,
)

# Unsigned activations, signed per-channel weights (onnxruntime's fastest x86 kernels).
# Conv outputs keep their Q/DQ here: that DQ->Conv->Q pattern is what onnxruntime fuses
# into QLinearConv when the session loads; without it the Convs run in float between
# DQ/Q pairs (measured 3x slower at 512x1024 on 2 cores).
# Weights use 7 bits (reduce_range). On x86 CPUs without VNNI (AVX2, AVX-512 without
# VNNI) onnxruntime multiplies u8 x s8 with VPMADDUBSW, which adds two products into a
# saturating int16: 2 x 255 x 127 overflows it, 2 x 255 x 63 cannot. With 8-bit weights
# the same file agreed with fp32 on 99.15 % of pixels on a VNNI CPU and 95.5 % on an
# AVX2 one; with 7-bit weights it gives the same labels on both, at the same speed
# (docs/BENCHMARKS.md, "INT8 on CPUs without VNNI"). The 7th bit is partly won back by
# leaving the Convs on pooled context (the pyramid bins, at most 6x6 cells) in float:
# they cost nothing there, and were the layers whose int8 rounding flipped most labels.
# For DDRNet's DAPPM / PIDNet's PAPPM that is the whole pyramid at 1/64 of the input plus
# the Convs its context merges into (pyramid_context_convs): on a trained PIDNet-S this
# took the CPU file from 93.2 to 96.7 % pixel agreement at 128x256 (docs/notes/rtbench.md).
CPU_RECIPE = Int8Recipe(
    name="cpu",
    file="model.int8-cpu.onnx",
    activation_type=QuantType.QUInt8,
    weight_type=QuantType.QInt8,
    op_types=("Conv",),
    per_channel=True,
    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    reduce_range=True,
    float_pooled_context=True,
)

RECIPES = {r.name: r for r in (TENSORRT_RECIPE, CPU_RECIPE)}


def _check_method(method: str) -> None:
    if method not in CALIBRATION_METHODS:
        raise SegkdError(
            f"--int8-method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}"
        )
    # onnxruntime's quantizer logs per tensor and prints histogram progress.
    logging.getLogger("onnxruntime").setLevel(logging.WARNING)


def _pre_processed(fp32_path: Path, tmp: Path) -> Path:
    """onnxruntime's quantization pre-processing of `fp32_path` (the input on failure)."""
    pre = tmp / "pre.onnx"
    try:
        quant_pre_process(str(fp32_path), str(pre))
    except OSError:  # a full or read-only temp folder is the machine's, not the graph's
        raise
    except Exception as e:  # symbolic shape inference can trip on exotic graphs
        logging.getLogger(__name__).warning(
            "quant_pre_process failed (%s); quantizing the unprocessed graph", e
        )
        return fp32_path
    return pre


def calibrate_int8(
    fp32_path: Path, reader: SampleReader, recipe: Int8Recipe, method: str = "minmax"
) -> TensorsData:
    """The activation ranges `quantize_int8` would collect for `recipe`. They depend only on
    the recipe's op types and the method, so recipes that share both share one pass over
    the calibration images (the slow part of an INT8 export)."""
    _check_method(method)
    with tempfile.TemporaryDirectory(prefix="segkd-calib-") as tmp:
        pre = _pre_processed(fp32_path, Path(tmp))
        return load_tensors_data(_calibrate(pre, reader, recipe, method, Path(tmp)))


def quantize_int8(
    fp32_path: Path,
    reader: SampleReader,
    recipe: Int8Recipe,
    method: str = "minmax",
    ranges: TensorsData | None = None,
) -> onnx.ModelProto:
    """Pre-process, calibrate on `reader` (unless `ranges` from `calibrate_int8` are given)
    and quantize `fp32_path`; returns the Q/DQ model."""
    _check_method(method)
    with tempfile.TemporaryDirectory(prefix="segkd-int8-") as tmp:
        pre = _pre_processed(fp32_path, Path(tmp))
        out = Path(tmp) / "int8.onnx"
        exclude: list[str] = []
        if recipe.float_classifier or recipe.float_pooled_context:
            graph = onnx.load(str(pre))
            if name_unnamed_convs(graph):  # exclusion goes by node name
                pre = Path(tmp) / "named.onnx"
                onnx.save(graph, str(pre))
            if recipe.float_classifier:
                exclude += classifier_convs(graph)
            if recipe.float_pooled_context:
                exclude += pooled_context_convs(graph)
                exclude += [c for c in pyramid_context_convs(graph) if c not in exclude]
        if ranges is None:
            cache = _calibrate(pre, reader, recipe, method, Path(tmp))
        else:
            cache = Path(tmp) / "calibration.json"
            save_tensors_data(ranges, cache)
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(pre),
                str(out),
                None,
                calibration_cache_path=str(cache),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(recipe.op_types) if recipe.op_types else None,
                per_channel=recipe.per_channel,
                reduce_range=recipe.reduce_range,
                nodes_to_exclude=exclude,
                activation_type=recipe.activation_type,
                weight_type=recipe.weight_type,
                calibrate_method=CALIBRATION_METHODS[method],
                extra_options=dict(recipe.extra_options),
            )
        model = onnx.load(str(out))
        if recipe.mixed_fp16:
            ranges = {
                k: (float(np.min(v.range_value[0])), float(np.max(v.range_value[1])))
                for k, v in load_tensors_data(cache).items()
            }
            model = mixed_precision_graph(model, ranges)
    if recipe.symmetric_only:
        bad = zero_point_violations(model)
        if bad:
            raise SegkdError(
                f"{recipe.file}: {len(bad)} Q/DQ nodes are not symmetric int8, which TensorRT "
                f"rejects (e.g. {bad[0]})"
            )
    return model


def _calibrate(
    model: Path, reader: SampleReader, recipe: Int8Recipe, method: str, tmp: Path
) -> Path:
    """Collect activation ranges on `reader`; returns onnxruntime's calibration-cache JSON.

    Calibrating here rather than inside quantize_static lets the histogram methods get
    real settings: quantize_static cannot pass bin counts, and onnxruntime's entropy
    defaults (128 bins, 128 quantized bins) leave a single candidate threshold, the
    full range, which makes "entropy" identical to min/max.

    onnxruntime keeps every intermediate output of one collect_data call until it
    returns (histogram methods: whole activation maps of every image), so images go
    in chunks of CALIBRATION_CHUNK; each call folds its chunk into running state.
    """
    op_types = list(recipe.op_types) if recipe.op_types else None
    options = dict(CALIBRATOR_OPTIONS[method])
    with contextlib.redirect_stdout(io.StringIO()):  # histogram progress prints
        if method == "entropy":
            ranges = _entropy_ranges(model, reader, op_types, tmp)
        else:
            # MinMax merges each chunk's min/max into its ranges: exact in any chunking.
            # Percentile widens a histogram at its bin width when a later chunk exceeds
            # it: the same counts, more bins, and its cumulative sum stays cheap.
            calibrate_method = CALIBRATION_METHODS[method]
            ranges = _collect_in_chunks(model, reader, op_types, calibrate_method, options, tmp)
    cache = tmp / "calibration.json"
    save_tensors_data(ranges, cache)
    return cache


def _collect_in_chunks(
    model: Path,
    reader: SampleReader,
    op_types: list[str] | None,
    calibrate_method: CalibrationMethod,
    options: dict[str, Any],
    tmp: Path,
    prepare: Callable[[Any], None] | None = None,
) -> TensorsData:
    reader.rewind()
    calibrator = create_calibrator(
        model,
        op_types,
        augmented_model_path=str(tmp / f"augmented-{calibrate_method.name}.onnx"),
        calibrate_method=calibrate_method,
        extra_options=options,
    )
    if prepare is not None:
        prepare(calibrator)
    for _ in range(math.ceil(len(reader) / CALIBRATION_CHUNK)):
        calibrator.collect_data(ChunkReader(reader, CALIBRATION_CHUNK))
    return calibrator.compute_data()


def _entropy_ranges(
    model: Path, reader: SampleReader, op_types: list[str] | None, tmp: Path
) -> TensorsData:
    """Entropy thresholds from histograms accumulated over chunks: two passes.

    onnxruntime sizes a tensor's histogram by the first data it sees and, when a later
    call exceeds that range, adds bins at the same width: chunked, a histogram would
    grow past num_bins, and the entropy search (quadratic in bins) with it. Seeding each
    histogram with the range of the whole calibration set (a MinMax pass first) keeps
    num_bins fixed: the histogram one call on every image would build.
    """
    extremes = _collect_in_chunks(model, reader, op_types, CalibrationMethod.MinMax, {}, tmp)
    options = dict(CALIBRATOR_OPTIONS["entropy"])

    def seed(calibrator: Any) -> None:  # relies on onnxruntime 1.32's collector layout
        calibrator.collector = HistogramCollector(
            method="entropy",
            symmetric=False,  # create_calibrator's default for entropy
            num_bins=options["num_bins"],
            num_quantized_bins=options["num_quantized_bins"],
            percentile=99.999,  # unused by entropy
            scenario="same",
        )
        calibrator.collector.histogram_dict = _empty_histograms(extremes, options["num_bins"])

    return _collect_in_chunks(
        model, reader, op_types, CalibrationMethod.Entropy, options, tmp, prepare=seed
    )


def _empty_histograms(extremes: TensorsData, num_bins: int) -> dict[str, tuple[Any, ...]]:
    """Zero histograms over [-t, t], t = each tensor's largest |value| (collect_value layout)."""
    out: dict[str, tuple[Any, ...]] = {}
    for name in extremes:
        low, high = extremes[name].range_value
        lo, hi = np.float32(np.min(low)), np.float32(np.max(high))
        threshold = np.array(max(abs(lo), abs(hi)), dtype=np.float32)
        empty = np.zeros(0, dtype=np.float32)
        hist, edges = np.histogram(empty, num_bins, range=(-threshold, threshold))
        out[name] = (hist, edges, lo, hi, threshold)
    return out


def name_unnamed_convs(model: onnx.ModelProto) -> bool:
    """Give every unnamed Conv a unique name; True if any was renamed."""
    taken = {n.name for n in model.graph.node}
    renamed = False
    for i, node in enumerate(model.graph.node):
        if node.op_type == "Conv" and not node.name:
            name = f"conv_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            renamed = True
    return renamed


# Ops that average over space (PSP's pooling exports as two MatMuls with fixed matrices).
_POOLING_OPS = frozenset({"MatMul", "AveragePool", "GlobalAveragePool", "ReduceMean"})
# Ops that pass a feature map through unchanged in the sense that matters here.
_PASS_THROUGH_OPS = frozenset(
    {
        "Relu",
        "BatchNormalization",
        "Transpose",
        "Reshape",
        "Cast",
        "Identity",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
    }
)


def pooled_context_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes whose input is a spatially pooled map (pyramid bins).

    Walks back from each Conv's data input through pass-through ops; a pooling op found
    before any Conv means the Conv runs on a handful of cells, where float costs nothing.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    found = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        src = producers.get(node.input[0])
        while src is not None and src.op_type in _PASS_THROUGH_OPS:
            src = producers.get(src.input[0])
        if src is not None and src.op_type in _POOLING_OPS:
            found.append(node.name)
    return found


# Fixed-kernel pooling: the pyramid of DDRNet's DAPPM and PIDNet's PAPPM.
_PYRAMID_POOLS = frozenset({"AveragePool", "GlobalAveragePool"})


def _spatial_areas(model: onnx.ModelProto) -> dict[str, int]:
    """H x W of every 4-D tensor whose shape is static (value_info after shape inference)."""
    areas = {}
    for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = v.type.tensor_type.shape.dim
        if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[2:]):
            areas[v.name] = dims[2].dim_value * dims[3].dim_value
    return areas


def pyramid_context_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the Convs of a DAPPM/PAPPM-style pyramid and of the Convs it merges into.

    The pyramid is everything computed from the map a fixed-kernel pooling reads (walking
    back through pass-through ops) at that map's resolution or below: the bins, the
    identity branch, the shortcut and the 3x3 "process"/compression Convs, at 1/64 of the
    input in DDRNet and PIDNet, where float costs almost nothing (< 1 % of the MACs).
    The merge Convs are the first Convs reached from the pyramid's output through
    non-Conv ops only (upsampling, adds, PIDNet's sigmoid-gated Bag): their input sums
    the pyramid's context, whose activations run far larger (|x| ~ 150 on a trained
    PIDNet-S) than the detail branch it is added to (|x| ~ 25), so one per-tensor uint8
    scale leaves the detail a few dozen levels. Needs static shapes; [] without them.
    """
    areas = _spatial_areas(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: dict[str, None] = {}  # ordered set
    for pool in model.graph.node:
        if pool.op_type not in _PYRAMID_POOLS:
            continue
        src = pool.input[0]
        while src in producers and producers[src].op_type in _PASS_THROUGH_OPS:
            src = producers[src].input[0]
        if src not in areas:
            continue  # dynamic shapes: the resolution test cannot be made
        limit = areas[src]
        inside: set[str] = set()
        stack, seen, exits = [src], set(), []
        while stack:  # the pyramid: forward from src while at or below its resolution
            for node in consumers.get(stack.pop(), []):
                if id(node) in seen:
                    continue
                seen.add(id(node))
                out = node.output[0]
                if out in areas and areas[out] > limit:
                    exits.append(out)  # leaves the pyramid (upsampled into a larger branch)
                    continue
                if node.op_type == "Conv":
                    inside.add(node.name)
                stack.extend(node.output)
        stack = exits
        while stack:  # merge: the first Convs after the pyramid, through non-Conv ops
            for node in consumers.get(stack.pop(), []):
                if id(node) in seen:
                    continue
                seen.add(id(node))
                if node.op_type == "Conv":
                    inside.add(node.name)
                else:
                    stack.extend(node.output)
        for node in model.graph.node:
            if node.name in inside:
                found[node.name] = None
    return list(found)


def classifier_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv nodes whose output reaches the graph output without another Conv.

    That is the 1x1 classifier: it runs at 1/8 resolution with a handful of output
    channels, so it costs almost nothing in float, and its int8 rounding lands directly
    on the class scores, where it flips the most labels.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    found: list[str] = []
    seen: set[str] = set()
    stack = [o.name for o in model.graph.output]
    while stack:
        name = stack.pop()
        node = producers.get(name)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type == "Conv":
            found.append(node.name)
            continue
        stack.extend(i for i in node.input if i)
    return found


def _constant_tensors(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    out[node.output[0]] = numpy_helper.to_array(attr.t)
    return out


def zero_point_violations(model: onnx.ModelProto) -> list[str]:
    """Every Q/DQ node whose zero-point is missing, not int8, or not all zeros.

    A missing zero-point means uint8 in ONNX, so it is a violation too; so is one that
    is computed at run time, since nothing guarantees it is zero.
    """
    consts = _constant_tensors(model)
    bad = []
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        label = f"{node.op_type} {node.name or node.output[0]}"
        if len(node.input) < 3 or not node.input[2]:
            bad.append(f"{label}: no zero-point (defaults to uint8)")
            continue
        zp = consts.get(node.input[2])
        if zp is None:
            bad.append(f"{label}: zero-point {node.input[2]} is not a constant")
        elif zp.dtype != np.int8:
            bad.append(f"{label}: zero-point is {zp.dtype}, not int8")
        elif np.any(zp != 0):
            bad.append(f"{label}: non-zero zero-point {zp.ravel()[:4].tolist()}")
    return bad


def count_qdq(model: onnx.ModelProto) -> dict[str, int]:
    ops = [n.op_type for n in model.graph.node]
    return {
        "QuantizeLinear": ops.count("QuantizeLinear"),
        "DequantizeLinear": ops.count("DequantizeLinear"),
    }
