"""The TensorRT INT8 file's structure for a student: calibration, placement, fp32 graph.

QAT starts exactly where post-training quantization ends: the same fp32 export, the same
pre-processed graph onnxruntime quantizes, the same calibration pass (export/int8.py),
and the PTQ file whose Q/DQ placement and scales the fake-quant graph copies.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

from core.errors import SegkdError
from distill.qat.placement import Placement, read_placement, scale_values
from export.calibration import SampleReader
from export.int8 import (
    TENSORRT_RECIPE,
    Int8Recipe,
    _pre_processed,
    calibrate_int8,
    name_unnamed_convs,
    quantize_int8,
)

Ranges = dict[str, tuple[float, float]]


@dataclass
class Structure:
    graph: onnx.ModelProto  # the pre-processed fp32 graph the Q/DQ file is made from
    ranges: Ranges  # calibration: tensor -> (min, max)
    ptq: onnx.ModelProto  # today's model.int8.onnx (post-training)
    placement: Placement
    scales: dict[str, float]  # scale group -> PTQ scale


def pre_processed_graph(fp32: onnx.ModelProto) -> onnx.ModelProto:
    """The graph onnxruntime's quantizer works on (its pre-processing), Convs named."""
    with tempfile.TemporaryDirectory(prefix="segkd-qat-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(fp32, str(path))
        graph = onnx.load(str(_pre_processed(path, Path(tmp))))
    name_unnamed_convs(graph)
    return graph


def ranges_of(data: TensorsData) -> Ranges:
    return {
        k: (float(np.min(v.range_value[0])), float(np.max(v.range_value[1])))
        for k, v in data.items()
    }


def tensors_data(ranges: Ranges) -> TensorsData:
    """Ranges back into onnxruntime's calibration-cache type (what quantize_int8 takes)."""
    return TensorsData(
        CalibrationMethod.MinMax,
        {
            k: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
            for k, (lo, hi) in ranges.items()
        },
    )


def quantize_with_ranges(
    fp32: onnx.ModelProto, ranges: Ranges, recipe: Int8Recipe = TENSORRT_RECIPE
) -> onnx.ModelProto:
    """export/int8.py's quantization of `fp32` with given ranges: no images are read."""
    with tempfile.TemporaryDirectory(prefix="segkd-qat-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(fp32, str(path))
        no_images = SampleReader("input", [np.zeros(1, np.float32)])  # never read: ranges given
        return quantize_int8(path, no_images, recipe, "minmax", ranges=tensors_data(ranges))


def same_graph(deploy: onnx.ModelProto, other: onnx.ModelProto, what: str) -> onnx.ModelProto:
    """`other` if it is `deploy` at another input size: the same nodes reading the same
    tensors, the same Conv initializers; only shape constants may differ. Else SegkdError."""

    def nodes(m: onnx.ModelProto) -> list[tuple]:
        return [(n.name, n.op_type, tuple(n.input), tuple(n.output)) for n in m.graph.node]

    def convs(m: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
        names = {i for n in m.graph.node if n.op_type == "Conv" for i in n.input[1:]}
        return {i.name: tuple(i.dims) for i in m.graph.initializer if i.name in names}

    a, b = nodes(deploy), nodes(other)
    if a != b or convs(deploy) != convs(other):
        first = next((x for x, y in zip(a, b, strict=False) if x != y), None)
        raise SegkdError(
            f"QAT: the graph at {what} is not the deploy graph at another size (first "
            f"difference: node {first[0] if first else len(a)!r}); train without --crop-size"
        )
    return other


def build_structure(fp32: onnx.ModelProto, reader: SampleReader, method: str) -> Structure:
    """Calibrate `fp32` as `segkd export` does and read back the PTQ file's placement."""
    with tempfile.TemporaryDirectory(prefix="segkd-qat-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(fp32, str(path))
        ranges = ranges_of(calibrate_int8(path, reader, TENSORRT_RECIPE, method))
    graph = pre_processed_graph(fp32)
    ptq = quantize_with_ranges(fp32, ranges)
    placement = read_placement(ptq)
    if not placement.activations:
        raise SegkdError("QAT: the INT8 file quantizes no activation; nothing to train")
    return Structure(graph, ranges, ptq, placement, scale_values(ptq, placement))
