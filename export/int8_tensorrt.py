"""The TensorRT INT8 graph: Q/DQ where NVIDIA's placement guide puts them, fp16 elsewhere.

Strongly typed TensorRT (the default in 10.x, the only mode in 11.x) runs every tensor
in its ONNX type. A float32 graph with Q/DQ only on Conv inputs therefore builds an
engine whose conv outputs, residual Adds, the PSP Concat and the Resizes run in fp32.
This module turns onnxruntime's Conv-only symmetric Q/DQ graph into the mixed graph
TensorRT wants (developer guide, "Q/DQ layer-placement recommendations"):

- every residual Add gets a quantized shortcut input, so TensorRT fuses the Add (and
  the ReLU after it) into the int8 convolution that produces the other input; where
  the shortcut is a downsampling Conv, that Conv's output is quantized;
- every input of a float Concat is quantized with ONE scale (the Concat output's), so
  the Q/DQ pairs commute through the Concat and it runs in int8 for free;
- every float tensor that is not Q/DQ'd becomes fp16; graph input and output keep their
  types (float32 image in; uint8/int32 labels or float32 logits out) through Casts.

Opset: ONNX allows fp16 input/scales on QuantizeLinear/DequantizeLinear only from opset
19 (QuantizeLinear-13 takes float32 only). At opset 17 every Q/DQ would need a Cast on
each side, and a Cast between a weight's DequantizeLinear and its Conv is not the
DQ->Conv pattern TensorRT fuses. So this one file is written at opset 19: TensorRT 10.x's
parser covers opsets 9..20 (10.3 on JetPack 6 included) and lists FP16 for both Q/DQ
ops; onnxruntime's CPU provider has fp16 Q/DQ kernels since opset 19 support landed,
which keeps the file verifiable here (docs/notes/trtint8.md).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from core.errors import SegkdError

log = logging.getLogger(__name__)

TENSORRT_OPSET = 19  # the first opset whose Q/DQ take fp16 (see the module docstring)

# Ops between a Conv and the residual Add that do not change which input is which.
_THROUGH = frozenset({"Relu", "Identity"})

Ranges = Mapping[str, tuple[float, float]]


def _qdq_scale(rmin: float, rmax: float) -> float:
    """Symmetric int8 scale on [-127, 127], the convention onnxruntime's quantizer uses."""
    absmax = max(abs(float(rmin)), abs(float(rmax)))
    return absmax / 127.0 if absmax > 0 else 1.0


class _Graph:
    """Producer/consumer index over a graph that is edited in place."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self.refresh()
        self._taken = {o for n in self.graph.node for o in n.output} | set(self.inits)
        self._taken |= {n.name for n in self.graph.node}
        self._pending: dict[str, list[onnx.NodeProto]] = {}

    def refresh(self) -> None:
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.order = {o: i for i, n in enumerate(self.graph.node) for o in n.output}

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self._taken:
            i += 1
            name = f"{base}_{i}"
        self._taken.add(name)
        return name

    def dequantized(self, tensor: str) -> str | None:
        """The output of an existing Q->DQ pair on `tensor`, if onnxruntime made one."""
        for node in self.graph.node:
            if node.op_type == "QuantizeLinear" and node.input[0] == tensor:
                for dq in self.graph.node:
                    if dq.op_type == "DequantizeLinear" and dq.input[0] == node.output[0]:
                        return dq.output[0]
        return None

    def scale_of_dq(self, tensor: str) -> tuple[str, str] | None:
        """(scale, zero-point) initializer names of the DequantizeLinear producing `tensor`."""
        node = self.producer.get(tensor)
        if node is None or node.op_type != "DequantizeLinear" or len(node.input) < 3:
            return None
        return node.input[1], node.input[2]

    def add_scale(self, base: str, scale: float) -> tuple[str, str]:
        s = self.fresh(f"{base}_scale")
        z = self.fresh(f"{base}_zero_point")
        self.graph.initializer.extend(
            [
                numpy_helper.from_array(np.array(scale, dtype=np.float32), s),
                numpy_helper.from_array(np.array(0, dtype=np.int8), z),
            ]
        )
        return s, z

    def insert_qdq(self, tensor: str, scale: str, zero: str, before: onnx.NodeProto) -> str:
        """Q->DQ on `tensor`, to be placed just before node `before`; returns the DQ output.

        The nodes are only queued: `commit` inserts them, so the NodeProtos the caller
        holds stay the live ones in the graph while it rewires their inputs.
        """
        q_out = self.fresh(f"{tensor}_trt_q")
        dq_out = self.fresh(f"{tensor}_trt_dq")
        q = helper.make_node(
            "QuantizeLinear", [tensor, scale, zero], [q_out], name=self.fresh(q_out)
        )
        dq = helper.make_node(
            "DequantizeLinear", [q_out, scale, zero], [dq_out], name=self.fresh(dq_out)
        )
        self._pending.setdefault(before.output[0], []).extend([q, dq])
        return dq_out

    def commit(self) -> None:
        nodes = []
        for node in self.graph.node:
            nodes.extend(self._pending.pop(node.output[0], []))
            nodes.append(onnx.NodeProto.FromString(node.SerializeToString()))
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        self.refresh()


def _conv_behind(g: _Graph, tensor: str) -> onnx.NodeProto | None:
    """The Conv whose raw (not re-quantized) output `tensor` is, through ReLU/Identity."""
    node = g.producer.get(tensor)
    while node is not None and node.op_type in _THROUGH:
        node = g.producer.get(node.input[0])
    return node if node is not None and node.op_type == "Conv" else None


def _conv_reads_at(g: _Graph, conv: onnx.NodeProto) -> int:
    """Position in the graph of the float tensor a Conv reads (behind its Q/DQ pair)."""
    src = conv.input[0]
    dq = g.producer.get(src)
    if dq is not None and dq.op_type == "DequantizeLinear":
        q = g.producer.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            src = q.input[0]
    return g.order.get(src, -1)  # -1: a graph input, the earliest of all


def residual_shortcut(g: _Graph, add: onnx.NodeProto) -> int | None:
    """Index (0/1) of the Add input to quantize, or None if the Add is no conv residual.

    The other input must be a raw Conv output: that Conv is where TensorRT fuses the
    Add. When both are Conv outputs (a downsampling shortcut), the shortcut is the Conv
    that reads the earlier tensor, i.e. the block input rather than the block's own
    first convolution.
    """
    if len(add.input) != 2 or any(i in g.inits for i in add.input):
        return None
    convs = [_conv_behind(g, t) for t in add.input]
    if convs[0] is None and convs[1] is None:
        return None
    if convs[0] is None or convs[1] is None:
        return 0 if convs[0] is None else 1
    return 0 if _conv_reads_at(g, convs[0]) < _conv_reads_at(g, convs[1]) else 1


def quantize_residual_shortcuts(model: onnx.ModelProto, ranges: Ranges) -> int:
    """Quantize the shortcut input of every residual Add; returns how many were changed."""
    g = _Graph(model)
    changed = 0
    for add in [n for n in g.graph.node if n.op_type == "Add"]:
        k = residual_shortcut(g, add)
        if k is None:
            continue
        tensor = add.input[k]
        if g.scale_of_dq(tensor) is not None:
            continue  # already a DequantizeLinear output
        dq_out = g.dequantized(tensor)  # identity shortcut: reuse the block input's Q/DQ
        if dq_out is None:
            if tensor not in ranges:
                # No Conv reads this tensor, so calibration never saw it (DDRNet's
                # bilateral fusions add Add outputs). The Add stays unfused in fp16:
                # correct, only slower. Quantizing it would need a range made up here.
                continue
            scale, zero = g.add_scale(tensor, _qdq_scale(*ranges[tensor]))
            dq_out = g.insert_qdq(tensor, scale, zero, before=add)
        add.input[k] = dq_out
        changed += 1
    g.commit()
    return changed


def share_concat_scales(model: onnx.ModelProto, ranges: Ranges) -> int:
    """Quantize every input of each float feature-map Concat with one shared scale.

    The scale is the one onnxruntime gave the Concat output (the next Conv's input), so
    Q(concat(a, b)) == concat(Q(a), Q(b)) and the extra pairs cost no accuracy. Returns
    the number of Concats handled.
    """
    g = _Graph(model)
    done = 0
    for cat in [n for n in g.graph.node if n.op_type == "Concat"]:
        if any(i in g.inits for i in cat.input) or len(cat.input) < 2:
            continue  # shape arithmetic, not feature maps
        out_dq = g.dequantized(cat.output[0])
        if out_dq is not None:
            shared = g.scale_of_dq(out_dq)
            assert shared is not None
        elif all(i in ranges for i in cat.input):
            lo = min(ranges[i][0] for i in cat.input)
            hi = max(ranges[i][1] for i in cat.input)
            shared = g.add_scale(cat.output[0], _qdq_scale(lo, hi))
        else:
            continue  # not a float feature map the calibrator saw (e.g. int64 shapes)
        for k, tensor in enumerate(list(cat.input)):
            if g.scale_of_dq(tensor) == shared:
                continue
            cat.input[k] = g.insert_qdq(tensor, *shared, before=cat)
        done += 1
    g.commit()
    return done


def _upgrade_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    try:
        out = onnx.version_converter.convert_version(model, opset)
    except Exception as e:
        raise SegkdError(
            f"INT8 (tensorrt): cannot convert the graph to opset {opset} ({e!s:.200})"
        ) from None
    return out


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every float tensor to fp16 (Q/DQ scales included), graph I/O types unchanged."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    # onnxruntime's default block list keeps Resize (and Min/Max, TopK...) in float32;
    # TensorRT runs Resize in fp16, so only the ops no segkd graph has stay blocked.
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) - {"Resize"})
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # one warning per clamped initializer
            out = convert_float_to_float16(
                model, keep_io_types=True, op_block_list=block, disable_shape_infer=False
            )
    except Exception as e:
        raise SegkdError(
            f"INT8 (tensorrt): fp16 conversion failed ({type(e).__name__}: {e!s:.200})"
        ) from None
    OnnxModel(out).topological_sort()  # the converter appends its Casts at the end
    return out


# fp16 tops out at 65504. Calibration sees a sample of images, so leave 4x headroom: a
# trained segmentation network's activations are O(10..100); ones near this limit come
# from a barely trained model (a 4-step pipeline test student reached 1.4e5 in layer4,
# which overflowed to inf in fp16 and cost 10 points of agreement).
FP16_SAFE_ABS = 65504.0 / 4


def fp16_overflow(ranges: Ranges) -> tuple[str, float] | None:
    """(tensor, |value|) of the largest calibrated activation if fp16 cannot hold it safely."""
    if not ranges:
        return None
    name, (lo, hi) = max(ranges.items(), key=lambda kv: max(abs(kv[1][0]), abs(kv[1][1])))
    peak = max(abs(lo), abs(hi))
    return (name, peak) if peak > FP16_SAFE_ABS else None


def mixed_precision_graph(model: onnx.ModelProto, ranges: Ranges) -> onnx.ModelProto:
    """onnxruntime's Conv-only Q/DQ graph -> the mixed int8/fp16 graph TensorRT builds.

    Where calibration shows activations fp16 cannot hold, the Q/DQ placement is still
    applied but the rest stays fp32 (and the opset as it was): TensorRT then runs those
    parts in fp32, slower but without inf. `placement_summary` reports which it is.
    """
    src = onnx.ModelProto()
    src.CopyFrom(model)
    quantize_residual_shortcuts(src, ranges)
    share_concat_scales(src, ranges)
    overflow = fp16_overflow(ranges)
    if overflow is not None:
        log.warning(
            "INT8 (tensorrt): activation %s reaches %.3g, beyond fp16's safe range %.3g; "
            "keeping fp32 between the Q/DQ nodes",
            *overflow,
            FP16_SAFE_ABS,
        )
        return src
    current = next(i.version for i in src.opset_import if i.domain in ("", "ai.onnx"))
    if current < TENSORRT_OPSET:  # --opset 20 stays 20
        src = _upgrade_opset(src, TENSORRT_OPSET)
    return to_fp16(src)


def placement_summary(model: onnx.ModelProto) -> dict[str, int]:
    """Facts read back from the finished graph, for export.json."""
    g = _Graph(model)
    nodes = list(g.graph.node)

    def from_dq(t: str) -> bool:
        return g.scale_of_dq(t) is not None

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    kinds = [k for name, k in types.items() if name in g.producer]  # not stale value_info
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    residual = [n for n in nodes if n.op_type == "Add" and residual_shortcut(g, n) is not None]
    # feature-map Concats only; dynamic graphs also concatenate int64 shapes
    concats = [n for n in nodes if n.op_type == "Concat" and types.get(n.output[0]) in floats]
    fp16 = sum(k == TensorProto.FLOAT16 for k in kinds)
    return {
        "high_precision": "fp16" if fp16 else "fp32",
        "opset": int(next(i.version for i in model.opset_import if i.domain in ("", "ai.onnx"))),
        "quantized_convs": sum(
            n.op_type == "Conv" and from_dq(n.input[0]) and from_dq(n.input[1]) for n in nodes
        ),
        "float_convs": sum(n.op_type == "Conv" and not from_dq(n.input[1]) for n in nodes),
        "residual_adds": len(residual),
        "residual_adds_quantized_shortcut": sum(any(from_dq(t) for t in n.input) for n in residual),
        "concats": len(concats),
        "concats_one_scale": sum(
            all(from_dq(t) for t in n.input) and len({g.scale_of_dq(t) for t in n.input}) == 1
            for n in concats
        ),
        "fp16_tensors": fp16,
        "fp32_tensors": sum(k == TensorProto.FLOAT for k in kinds),
    }
