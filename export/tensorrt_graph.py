"""Graph edits that make a segkd ONNX file buildable by TensorRT, applied to every artifact.

TensorRT converts to UINT8 only from float32/float16 (tensorrt.DataType.UINT8; see
docs/DEPLOY_FACTS.md, "TensorRT's ONNX limits"), but a label map is ArgMax's integer
indices cast to uint8. So every Cast to UINT8 whose input is not float gets a Cast to
float16 in front: exact for every value a uint8 can hold (fp16 is exact to 2048), one
pointwise op on the label map, and no fp32 tensor in an otherwise fp16 INT8 graph. It runs on the finished graph, after onnxruntime's optimizer, which folds the
torch-side Cast chain back into one Cast (measured: quant_pre_process did).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {i.name: i.data_type for i in g.initializer}
    for vi in [*g.input, *g.value_info, *g.output]:
        types[vi.name] = vi.type.tensor_type.elem_type
    return types


def uint8_casts_through_float(model: onnx.ModelProto) -> int:
    """Insert Cast(float16) before every non-float -> UINT8 Cast, in place; returns how many."""
    types = _types(model)
    taken = set(types) | {o for n in model.graph.node for o in n.output}
    nodes = list(model.graph.node)
    out: list[onnx.NodeProto] = []
    done = 0
    for n in nodes:
        to = next((a.i for a in n.attribute if a.name == "to"), None)
        if n.op_type == "Cast" and to == TensorProto.UINT8:
            src = n.input[0]
            if types.get(src) not in _FLOATS:
                mid, k = f"{src}_as_fp16", 0
                while mid in taken:  # an earlier pass may have left the name behind
                    k += 1
                    mid = f"{src}_as_fp16_{k}"
                taken.add(mid)
                out.append(
                    helper.make_node("Cast", [src], [mid], name=mid,
                                     to=TensorProto.FLOAT16)
                )  # fmt: skip
                n.input[0] = mid
                done += 1
        out.append(n)
    if done:
        del model.graph.node[:]
        model.graph.node.extend(out)
    return done
