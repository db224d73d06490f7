"""Can TensorRT build this ONNX file? A static check against NVIDIA's documented limits.

Runs on any machine (no TensorRT, no GPU, no torch): `segkd export` checks every
TensorRT-bound file it writes, and `segkd build` re-checks a folder on the device when
the onnx package is there. Each rule names its source; the facts are restated, with
links, in docs/DEPLOY_FACTS.md ("TensorRT's ONNX limits").

Sources, as cited beside the rules:
  [ops]     onnx-tensorrt docs/operators.md (release 10.x): the operator table, its type
            column and restrictions, and the note "UINT8 is only supported as network
            input or output tensor types".
  [log]     onnx-tensorrt CHANGELOG.md: the ONNX version each parser release is built on.
  [dtype]   TensorRT Python API, tensorrt.DataType.UINT8: uint8 converts only to and from
            float32/float16, never from int8/int32/bool.
  [3985]    NVIDIA/TensorRT issue 3985 (maintainer: expected behaviour): a UINT8 network
            input is accepted only when it feeds a Cast.
  [qdq]     TensorRT Developer Guide, "Explicit Quantization": symmetric (zero-point 0)
            INT8 only; per-tensor scales for activations, per-channel only for weights,
            along the output-channel axis (K: axis 0 of a Conv weight, 1 of a ConvTranspose).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from core.errors import SegkdError


@dataclass(frozen=True)
class TrtTarget:
    """A TensorRT release segkd builds for, and the ONNX it parses."""

    version: str
    max_opset: int
    max_ir: int
    why: str


# opset ceilings: [ops] headers ("TensorRT 10.0 supports ... opset 9 to opset 20"; 10.15:
# 9 to 24); IR ceilings: the ONNX each parser is built on [log] (10.3: ONNX 1.16, IR 10;
# 10.11 moved to ONNX 1.18, IR 11). 11.x: at least 10.15's range (11.2: opset 24).
TARGETS = (
    TrtTarget("10.3", 20, 10, "JetPack 6.1/6.2 (parser on ONNX 1.16)"),
    TrtTarget("10.16", 24, 11, "JetPack 7.2 (parser on ONNX >= 1.18)"),
    TrtTarget("11", 24, 11, "JetPack 7.2.2+ on AGX Orin/Thor, desktops"),
)
MIN_OPSET = 9  # [ops]: "the inclusive range of opset 9 to ..."

# [ops] "Supported Types" of the operators segkd graphs use: the data input's type (input 0).
_F = frozenset({"float", "float16", "bfloat16"})
_FI = _F | {"int32", "int64"}
_FIB = _FI | {"bool"}
OP_TYPES: dict[str, frozenset[str]] = {
    **dict.fromkeys(
        (
            "Conv",
            "ConvTranspose",
            "MatMul",
            "Gemm",
            "BatchNormalization",
            "AveragePool",
            "MaxPool",
            "GlobalAveragePool",
            "Resize",
            "Sigmoid",
            "Softmax",
            "Clip",
            "Exp",
            "Sqrt",
            "Pow",
            "Tanh",
            "HardSigmoid",
            "LeakyRelu",
            "Floor",
            "QuantizeLinear",
        ),
        _F,
    ),
    **dict.fromkeys(
        (
            "Add",
            "Sub",
            "Mul",
            "Div",
            "Neg",
            "Relu",
            "ArgMax",
            "Equal",
            "Pad",
            "ReduceMean",
            "Range",
        ),
        _FI,
    ),
    **dict.fromkeys(
        (
            "Transpose",
            "Reshape",
            "Concat",
            "Slice",
            "Gather",
            "Shape",
            "Identity",
            "Flatten",
            "Squeeze",
            "Unsqueeze",
            "Split",
            "Tile",
            "Expand",
            "Where",
        ),
        _FIB,
    ),
    "Cast": _FIB | {"uint8"},
}  # DequantizeLinear: its input type follows the zero-point, checked in _check_qdq
# Network outputs TensorRT can produce: its I/O types minus the quantized ones ([ops] note:
# INT8/INT4/FP8 exist only through quantization).
OUTPUT_TYPES = frozenset({"float", "float16", "bfloat16", "int32", "int64", "uint8", "bool"})
# [ops] Resize row.
RESIZE_MODES = frozenset({"nearest", "linear"})
RESIZE_COORDS = frozenset(
    {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
)
RESIZE_NEAREST = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})


@dataclass(frozen=True)
class Violation:
    rule: str
    node: str  # "name (OpType)", or "graph" / "input NAME" / "output NAME"
    detail: str
    source: str

    def line(self) -> str:
        return f"{self.node}: {self.detail} [{self.source}]"


def _onnx_type(elem: int) -> str:
    """ONNX's own lower-case name ("float", "float16", "uint8"...)."""
    import onnx

    return onnx.TensorProto.DataType.Name(elem).lower() if elem else "?"


def _tensor_types(model: Any) -> dict[str, str]:
    """Element type of every named tensor (inputs, initializers, inferred intermediates)."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a graph shape inference cannot follow: check what is declared
        inferred = model
    g = inferred.graph
    types = {i.name: _onnx_type(i.data_type) for i in g.initializer}
    for vi in [*g.input, *g.value_info, *g.output]:
        if vi.type.HasField("tensor_type"):
            types[vi.name] = _onnx_type(vi.type.tensor_type.elem_type)
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = _onnx_type(a.t.data_type)
    return types


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _constant_array(model: Any, name: str) -> Any:
    """The numpy value of an initializer or Constant output, else None."""
    from onnx import numpy_helper

    for i in model.graph.initializer:
        if i.name == name:
            return numpy_helper.to_array(i)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def _label(node: Any) -> str:
    return f"node {node.name or node.output[0]!r} ({node.op_type})"


def _check_versions(model: Any, targets: Iterable[TrtTarget]) -> list[Violation]:
    out = []
    opset = next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        out.append(Violation("opset", "graph", f"opset {opset} is below {MIN_OPSET}", "ops"))
    for t in targets:
        if opset > t.max_opset:
            out.append(Violation(
                "opset", "graph",
                f"opset {opset} is above TensorRT {t.version}'s {t.max_opset} ({t.why})", "ops",
            ))  # fmt: skip
        if model.ir_version > t.max_ir:
            out.append(Violation(
                "ir", "graph",
                f"IR version {model.ir_version} is above TensorRT {t.version}'s {t.max_ir} ({t.why})",
                "log",
            ))  # fmt: skip
    return out


def _check_types(model: Any, types: dict[str, str]) -> list[Violation]:
    g = model.graph
    out = []
    consumers: dict[str, list[Any]] = {}
    producer: dict[str, Any] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
        for o in n.output:
            producer[o] = n
        if n.domain not in ("", "ai.onnx"):
            out.append(Violation(
                "domain", _label(n), f"domain {n.domain!r} is not ONNX's own (no plugin here)",
                "ops",
            ))  # fmt: skip
    inits = {i.name for i in g.initializer}
    flagged: set[int] = set()  # nodes already reported for the UINT8 input
    for inp in g.input:
        if inp.name in inits or types.get(inp.name) != "uint8":
            continue
        for n in consumers.get(inp.name, []):
            if n.op_type != "Cast":
                flagged.add(id(n))
                out.append(Violation(
                    "uint8-input", _label(n),
                    f"takes the UINT8 network input {inp.name!r}; TensorRT accepts a UINT8 "
                    "input only into a Cast (Cast it first, then reorder)", "3985",
                ))  # fmt: skip
    for n in g.node:
        data = n.input[0] if n.input else ""
        dtype = types.get(data)
        allowed = OP_TYPES.get(n.op_type)
        if n.op_type == "Cast" and _attr(n, "to", 0) == 2:  # TensorProto.UINT8
            if dtype not in ("float", "float16"):
                out.append(Violation(
                    "uint8-cast", _label(n),
                    f"casts {dtype} to UINT8; TensorRT converts to UINT8 only from "
                    "float32/float16 (Cast to float first, or output int32)", "dtype",
                ))  # fmt: skip
        elif (
            allowed is not None
            and dtype not in (None, "?")
            and dtype not in allowed
            and id(n) not in flagged
        ):
            src = "3985" if dtype == "uint8" else "ops"
            out.append(Violation(
                "op-type", _label(n),
                f"input {data!r} is {dtype}; TensorRT's {n.op_type} takes "
                f"{', '.join(sorted(allowed))}", src,
            ))  # fmt: skip
    for o in g.output:
        dtype = types.get(o.name, "?")
        if dtype not in OUTPUT_TYPES:
            out.append(Violation(
                "output-type", f"output {o.name!r}",
                f"is {dtype}; TensorRT outputs {', '.join(sorted(OUTPUT_TYPES))}", "ops",
            ))  # fmt: skip
    return out


def _check_qdq(model: Any, types: dict[str, str]) -> list[Violation]:
    out = []
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for k, i in enumerate(n.input):
            consumers.setdefault(i, []).append((n, k))
    for n in model.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(n.input) > 2 and n.input[2]:
            zp_name = n.input[2]
            zp_type = types.get(zp_name)
            zp = _constant_array(model, zp_name)
            if zp_type not in ("int8", None):
                out.append(Violation(
                    "qdq-zero-point", _label(n),
                    f"zero-point is {zp_type}; TensorRT quantizes to INT8 only", "qdq",
                ))  # fmt: skip
            if zp is None:
                out.append(
                    Violation("qdq-zero-point", _label(n), "zero-point is not a constant", "ops")
                )
            elif zp.any():
                out.append(Violation(
                    "qdq-zero-point", _label(n),
                    "zero-point is not zero; TensorRT quantizes symmetrically only", "ops",
                ))  # fmt: skip
        scale = _constant_array(model, n.input[1]) if len(n.input) > 1 else None
        if scale is None:
            out.append(Violation("qdq-scale", _label(n), "scale is not a constant", "qdq"))
            continue
        if scale.size <= 1:
            continue
        # Per-channel: only a constant weight, and only along the output-channel axis.
        if _constant_array(model, n.input[0]) is None:
            out.append(Violation(
                "qdq-axis", _label(n),
                f"per-channel scale ({scale.size} values) on an activation; TensorRT takes "
                "per-tensor scales there", "qdq",
            ))  # fmt: skip
            continue
        axis = int(_attr(n, "axis", 1))
        for user, k in consumers.get(n.output[0], []):
            want = {"Conv": 0, "ConvTranspose": 1}.get(user.op_type)
            if k == 1 and want is not None and axis != want:
                out.append(Violation(
                    "qdq-axis", _label(n),
                    f"per-channel axis {axis} into {user.op_type}'s weight; TensorRT "
                    f"needs the output-channel axis {want}", "qdq",
                ))  # fmt: skip
    return out


def _check_resize(model: Any) -> list[Violation]:
    out = []
    for n in model.graph.node:
        if n.op_type != "Resize":
            continue
        checks = (
            ("mode", _attr(n, "mode", "nearest"), RESIZE_MODES),
            ("coordinate_transformation_mode",
             _attr(n, "coordinate_transformation_mode", "half_pixel"), RESIZE_COORDS),
            ("nearest_mode", _attr(n, "nearest_mode", "round_prefer_floor"), RESIZE_NEAREST),
            ("keep_aspect_ratio_policy", _attr(n, "keep_aspect_ratio_policy", "stretch"),
             frozenset({"stretch"})),
        )  # fmt: skip
        for name, value, allowed in checks:
            if value not in allowed:
                out.append(Violation(
                    "resize", _label(n),
                    f"{name} {value!r}; TensorRT supports {', '.join(sorted(allowed))}", "ops",
                ))  # fmt: skip
        if int(_attr(n, "antialias", 0)):
            out.append(Violation("resize", _label(n), "antialias is not supported", "ops"))
    return out


def check_tensorrt_onnx(model: Any, targets: Iterable[TrtTarget] = TARGETS) -> list[Violation]:
    """Every documented TensorRT limit `model` (an onnx.ModelProto) breaks; [] = none."""
    targets = list(targets)
    types = _tensor_types(model)
    return (
        _check_versions(model, targets)
        + _check_types(model, types)
        + _check_qdq(model, types)
        + _check_resize(model)
    )


def require_tensorrt_onnx(model: Any, where: str, targets: Iterable[TrtTarget] = TARGETS) -> None:
    """Raise SegkdError with one line naming the first offending node (and the count)."""
    found = check_tensorrt_onnx(model, targets)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise SegkdError(f"{where}: TensorRT cannot build it: {found[0].line()}{more}")


def describe_targets(targets: Iterable[TrtTarget] = TARGETS) -> list[str]:
    return [t.version for t in targets]
