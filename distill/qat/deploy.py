"""Write the INT8 files from a QAT state: no calibration images, the learned numbers.

The Q/DQ structure is rebuilt by the very code that writes today's PTQ file
(export/int8.py + export/int8_tensorrt.py) from the stored calibration ranges, on the
deploy graph carrying the trained weights; then every activation scale is replaced by
the learned one. The placement read back from the result must equal the one QAT trained,
point for point, or nothing is written.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from core.errors import SegkdError
from distill.qat.checkpoint import point_key
from distill.qat.placement import read_placement
from distill.qat.structure import pre_processed_graph, quantize_with_ranges
from export.int8 import Int8Recipe


def with_weights(graph: onnx.ModelProto, weights: dict[str, Any]) -> onnx.ModelProto:
    """`graph` with its Conv initializers replaced by the trained ones (names and shapes checked)."""
    out = onnx.ModelProto()
    out.CopyFrom(graph)
    inits = {i.name: i for i in out.graph.initializer}
    for name, value in weights.items():
        old = inits.get(name)
        arr = np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype=np.float32)
        if old is None or tuple(old.dims) != arr.shape:
            raise SegkdError(
                f"the QAT weights do not fit this export graph (initializer {name!r}); export "
                "with the options the QAT stage used (its qat.json lists them)"
            )
        old.CopyFrom(numpy_helper.from_array(arr, name))
    return out


def qat_graph(fp32: onnx.ModelProto, qat: dict[str, Any]) -> onnx.ModelProto:
    """The pre-processed fp32 deploy graph with the QAT-trained Conv weights."""
    return with_weights(pre_processed_graph(fp32), qat["weights"])


def set_learned_scales(proto: onnx.ModelProto, scales: dict[str, float]) -> int:
    """Replace each activation scale initializer by its learned value; returns how many."""
    placement = read_placement(proto)
    have = {point_key(p) for p in placement.activations}
    if have != set(scales):
        extra, missing = sorted(have - set(scales)), sorted(set(scales) - have)
        raise SegkdError(
            "the rebuilt Q/DQ placement differs from the one QAT trained "
            f"({len(missing)} points missing, e.g. {missing[:1]}; {len(extra)} new, e.g. {extra[:1]})"
        )
    inits = {i.name: i for i in proto.graph.initializer}
    for group, points in placement.groups().items():
        values = {scales[point_key(p)] for p in points}
        if len(values) != 1:
            raise SegkdError(
                f"QAT scales of the shared Q/DQ group {group} differ: {sorted(values)}"
            )
        old = inits[group]
        dtype = numpy_helper.to_array(old).dtype
        old.CopyFrom(numpy_helper.from_array(np.array(values.pop(), dtype=dtype), group))
    return len(placement.groups())


def int8_from_qat(
    fp32: onnx.ModelProto, qat: dict[str, Any], recipe: Int8Recipe
) -> tuple[onnx.ModelProto, str]:
    """The `recipe` INT8 file of the fp32 export `fp32` from the QAT state, and its method.

    The TensorRT file: the trained weights, the trained placement, the learned scales.
    The CPU file has its own placement (Conv outputs too, uint8 activations, 7-bit
    weights, float pyramid) that QAT did not train; learned 8-bit symmetric thresholds
    put on it lost 1-2 points of agreement against calibration (docs/notes/qat.md), so
    it is the calibrated file: the fp32 weights with the ranges QAT's own calibration
    stored, the same file `segkd export` calibrates from the same images.
    """
    ranges = {k: (float(lo), float(hi)) for k, (lo, hi) in qat["ranges"].items()}
    if not recipe.mixed_fp16:
        method = qat["export"].get("calibration_method", "minmax")
        return quantize_with_ranges(fp32, ranges, recipe), f"{method} (the QAT calibration)"
    proto = quantize_with_ranges(qat_graph(fp32, qat), ranges, recipe)
    set_learned_scales(proto, qat["scales"])
    return proto, "qat"


def check_export_options(
    qat: dict[str, Any], size: tuple[int, int], dynamic: bool, input_dtype: str, where: str
) -> None:
    """A QAT state's names and scales belong to one static export geometry."""
    made = qat["export"]
    want = tuple(made.get("input_size", ()))
    if tuple(size) != want:
        raise SegkdError(
            f"{where}: QAT was done at input size {want[0]}x{want[1]}; export at that size "
            f"(--input-size {want[0]}x{want[1]}) or run `segkd qat` again at {size[0]}x{size[1]}"
        )
    if dynamic:
        raise SegkdError(f"{where}: a QAT checkpoint exports static shapes only (drop --dynamic)")
    if input_dtype != made.get("input_dtype", "float32"):
        raise SegkdError(
            f"{where}: QAT was done with float32 input; drop --input-dtype {input_dtype}"
        )
