"""A static fp32 ONNX graph run by PyTorch, with fake quantization at a Placement.

Quantization-aware training happens on the very graph TensorRT builds: BatchNorm already
folded into the Convs by the exporter (what TensorRT sees), the exporter's node names,
the input size of the export. Conv weights and biases are the trainable parameters;
stand-alone BatchNormalization nodes (DDRNet's pre-activation) stay frozen as the affine
maps they are in the engine. The graph's ArgMax (a labels export) is where the logits
are read: training needs them, and the ArgMax has no parameters.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from core.errors import SegkdError
from distill.qat.fake_quant import fake_quant_activation, fake_quant_weight
from distill.qat.placement import Placement


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper_value(a) for a in node.attribute}


def helper_value(a: onnx.AttributeProto):
    return onnx.helper.get_attribute_value(a)


def _pad_2d(x: torch.Tensor, pads: list[int], value: float = 0.0) -> tuple[torch.Tensor, list[int]]:
    """ONNX pads [top, left, bottom, right] -> symmetric padding for torch (+F.pad if not)."""
    if not pads:
        return x, [0, 0]
    t, left, b, r = pads
    if t == b and left == r:
        return x, [t, left]
    return F.pad(x, [left, r, t, b], value=value), [0, 0]


class QuantGraph(nn.Module):
    """Run an ONNX graph (the fp32 export) with Q/DQ simulated where `placement` says."""

    def __init__(self, model: onnx.ModelProto, placement: Placement, scales: dict[str, float]):
        super().__init__()
        self.nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in model.graph.node]
        self.input_name = model.graph.input[0].name
        self.output_name = model.graph.output[0].name
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        conv_params = {
            n.input[k]
            for n in self.nodes
            if n.op_type == "Conv"
            for k in (1, 2)
            if k < len(n.input)
        }
        self.weights = nn.ParameterDict()
        self.const: dict[str, torch.Tensor] = {}
        self._param_key: dict[str, str] = {}
        for name, value in inits.items():
            t = torch.from_numpy(np.array(value))
            if name in conv_params and t.is_floating_point():
                key = f"w{len(self._param_key)}"
                self._param_key[name] = key
                self.weights[key] = nn.Parameter(t.float().clone())
            else:
                self.const[name] = t
        names = {n.name or n.output[0] for n in self.nodes}
        missing = [p.node for p in placement.activations if p.node not in names]
        missing += [c for c in placement.weights if c not in names]
        if missing:
            raise SegkdError(f"QAT: the placement names node {missing[0]!r}, absent from the graph")
        self.placement = placement
        self.points: dict[tuple[str, int], str] = {}
        self._group_key: dict[str, str] = {}
        self.scales = nn.ParameterDict()
        for group, points in placement.groups().items():
            key = f"s{len(self._group_key)}"
            self._group_key[group] = key
            # log-parametrised: Adam then moves every scale by the same relative amount,
            # whether it is 1e-3 (a stem input) or 1 (a deep pyramid feature)
            self.scales[key] = nn.Parameter(torch.tensor(float(scales[group])).log())
            for p in points:
                self.points[(p.node, p.slot)] = key
        self.quant_weights = set(placement.weights)
        self.quantize = True
        self.trace: set[tuple[str, int]] | None = None  # set(): record each fake-quant applied

    # ---- parameters as the export needs them -------------------------------------
    def float_weights(self) -> dict[str, torch.Tensor]:
        """Initializer name -> trained fp32 value (Conv weights and biases)."""
        return {name: self.weights[k].detach().clone() for name, k in self._param_key.items()}

    def learned_scales(self) -> dict[str, float]:
        """Scale group (initializer name in the Q/DQ file) -> learned scale (fp16-rounded)."""
        return {
            g: float(self.scales[k].detach().exp().half().float())
            for g, k in self._group_key.items()
        }

    def conv_weight_parameters(self) -> list[nn.Parameter]:
        """The Conv kernels (input 1), without the biases."""
        names = {n.input[1] for n in self.nodes if n.op_type == "Conv"}
        return [self.weights[k] for name, k in self._param_key.items() if name in names]

    def scale_parameters(self) -> list[nn.Parameter]:
        return list(self.scales.values())

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.weights.values())

    # ---- evaluation ----------------------------------------------------------------
    def _value(self, env: dict[str, torch.Tensor], name: str) -> torch.Tensor | None:
        if not name:
            return None
        if name in env:
            return env[name]
        if name in self._param_key:
            return self.weights[self._param_key[name]]
        return self.const[name]

    def _inputs(self, node: onnx.NodeProto, env: dict) -> list[torch.Tensor | None]:
        key = node.name or node.output[0]
        out = []
        for slot, name in enumerate(node.input):
            v = self._value(env, name)
            if self.quantize:
                group = self.points.get((key, slot))
                if group is not None:
                    v = fake_quant_activation(v, self.scales[group].exp())
                elif slot == 1 and node.op_type == "Conv" and key in self.quant_weights:
                    v = fake_quant_weight(v)
                else:
                    out.append(v)
                    continue
                if self.trace is not None:
                    self.trace.add((key, slot))
            out.append(v)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The graph's logits (the input of its ArgMax when it ends in labels)."""
        env: dict[str, torch.Tensor] = {self.input_name: x}
        for node in self.nodes:
            if node.op_type == "ArgMax":
                return env[node.input[0]]
            args = self._inputs(node, env)
            env[node.output[0]] = _run(node, args)
        return env[self.output_name]


def _run(node: onnx.NodeProto, a: list) -> torch.Tensor:
    op, at = node.op_type, _attrs(node)
    if op == "Conv":
        if at.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise SegkdError(f"QAT: Conv {node.name} uses auto_pad, not supported")
        x, pad = _pad_2d(a[0], list(at.get("pads", [])))
        return F.conv2d(
            x, a[1], a[2] if len(a) > 2 else None, stride=list(at.get("strides", [1, 1])),
            padding=pad, dilation=list(at.get("dilations", [1, 1])), groups=at.get("group", 1),
        )  # fmt: skip
    if op == "Relu":
        return F.relu(a[0])
    if op == "Sigmoid":
        return torch.sigmoid(a[0])
    if op == "Add":
        return a[0] + a[1]
    if op == "Sub":
        return a[0] - a[1]
    if op == "Mul":
        return a[0] * a[1]
    if op == "MatMul":
        return torch.matmul(a[0], a[1])
    if op == "Identity":
        return a[0]
    if op == "Concat":
        return torch.cat(a, dim=at["axis"])
    if op == "ReduceSum":
        axes = [int(v) for v in a[1].tolist()] if len(a) > 1 and a[1] is not None else None
        keep = bool(at.get("keepdims", 1))
        return a[0].sum(dim=axes, keepdim=keep) if axes else a[0].sum()
    if op == "GlobalAveragePool":
        return a[0].mean(dim=(2, 3), keepdim=True)
    if op == "BatchNormalization":
        return F.batch_norm(a[0], a[3], a[4], a[1], a[2], False, 0.0, at.get("epsilon", 1e-5))
    if op in ("AveragePool", "MaxPool"):
        pads = list(at.get("pads", []))
        x, pad = _pad_2d(a[0], pads, 0.0 if op == "AveragePool" else -math.inf)
        kw = dict(kernel_size=list(at["kernel_shape"]), stride=list(at.get("strides", [1, 1])),
                  padding=pad, ceil_mode=bool(at.get("ceil_mode", 0)))  # fmt: skip
        if op == "MaxPool":
            return F.max_pool2d(x, dilation=list(at.get("dilations", [1, 1])), **kw)
        return F.avg_pool2d(x, count_include_pad=bool(at.get("count_include_pad", 0)), **kw)
    if op == "Resize":
        return _resize(node, at, a)
    raise SegkdError(f"QAT: ONNX op {op} (node {node.name}) is not supported by the QAT graph")


def _resize(node: onnx.NodeProto, at: dict, a: list) -> torch.Tensor:
    x = a[0]
    sizes = a[3] if len(a) > 3 and a[3] is not None and a[3].numel() else None
    scales = a[2] if len(a) > 2 and a[2] is not None and a[2].numel() else None
    if sizes is not None:
        out = [int(v) for v in sizes.tolist()[2:]]
    elif scales is not None:
        out = [
            math.floor(d * float(s)) for d, s in zip(x.shape[2:], scales.tolist()[2:], strict=True)
        ]
    else:
        raise SegkdError(f"QAT: Resize {node.name} has neither scales nor sizes")
    mode = at.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    ctm = at.get("coordinate_transformation_mode", b"half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    if mode == "linear" and ctm in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        return F.interpolate(x, size=out, mode="bilinear", align_corners=ctm == "align_corners")
    if mode == "nearest" and ctm == "asymmetric":
        return F.interpolate(x, size=out, mode="nearest")
    raise SegkdError(f"QAT: Resize {node.name} ({mode}, {ctm}) is not supported")
