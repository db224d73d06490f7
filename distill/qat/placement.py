"""Where a Q/DQ ONNX graph quantizes: read back node for node from the graph itself.

The fake-quant model is built from this placement and the learned-scale export is
checked against it, so "the same placement" is one comparable value: which node input
slots read a dequantized activation (and which of them share one scale), and which Convs
read a dequantized weight. Nodes are named by the exporter and keep their names through
onnxruntime's quantizer and the fp16 conversion; the Casts that conversion puts at the
graph input are looked through, so a placement read from the fp16 file names the same
float tensors as the fp32 graph the fake-quant model runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import numpy_helper

from core.errors import SegkdError


@dataclass(frozen=True)
class ActivationPoint:
    """One node input slot that reads Q->DQ(tensor) in the deployed graph."""

    node: str  # the consuming node's name
    slot: int
    tensor: str  # the float tensor quantized (a name in the fp32 graph)
    group: str  # the scale initializer's name: points with one group share one scale


@dataclass(frozen=True)
class Placement:
    activations: tuple[ActivationPoint, ...]
    weights: tuple[str, ...]  # names of the Convs whose weight is per-channel Q/DQ

    def key(self) -> tuple[frozenset, frozenset, frozenset]:
        """The comparable part: points, weight-quantized Convs, and which points share."""
        groups: dict[str, set[tuple[str, int]]] = {}
        for p in self.activations:
            groups.setdefault(p.group, set()).add((p.node, p.slot))
        return (
            frozenset((p.node, p.slot, p.tensor) for p in self.activations),
            frozenset(self.weights),
            frozenset(frozenset(g) for g in groups.values()),
        )

    def groups(self) -> dict[str, list[ActivationPoint]]:
        out: dict[str, list[ActivationPoint]] = {}
        for p in self.activations:
            out.setdefault(p.group, []).append(p)
        return out


def _node_key(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def read_placement(model: onnx.ModelProto) -> Placement:
    """Every DQ-fed input slot of `model`; SegkdError if a node has no unique name."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    names = [_node_key(n) for n in graph.node]
    if len(set(names)) != len(names):
        raise SegkdError("Q/DQ graph: node names are not unique; cannot read its placement")

    def source(tensor: str) -> str:
        node = producer.get(tensor)  # through the fp16 conversion's input Cast
        while node is not None and node.op_type == "Cast" and node.input[0] not in inits:
            tensor = node.input[0]
            node = producer.get(tensor)
        return tensor

    acts: list[ActivationPoint] = []
    weights: list[str] = []
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for slot, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            if dq.input[0] in inits:  # a stored int8 weight
                if node.op_type != "Conv" or slot != 1:
                    raise SegkdError(f"Q/DQ graph: a quantized constant feeds {_node_key(node)}")
                weights.append(_node_key(node))
                continue
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                raise SegkdError(f"Q/DQ graph: {dq.name} is not fed by a QuantizeLinear")
            if q.input[1] != dq.input[1]:
                raise SegkdError(f"Q/DQ graph: {q.name} and {dq.name} use different scales")
            acts.append(ActivationPoint(_node_key(node), slot, source(q.input[0]), q.input[1]))
    return Placement(tuple(acts), tuple(weights))


def scale_values(model: onnx.ModelProto, placement: Placement) -> dict[str, float]:
    """group -> the scale the graph stores for it (per-tensor activation scales)."""
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for group in placement.groups():
        value = numpy_helper.to_array(inits[group])
        if value.size != 1:
            raise SegkdError(f"Q/DQ graph: activation scale {group} is not per-tensor")
        out[group] = float(value.reshape(()))
    return out
