"""PyTorch -> fp32 ONNX: the wrapper with an optional in-graph argmax, and the exporter call.

The legacy TorchScript exporter (dynamo=False) is tried first: it writes the opset we
ask for and keeps the matmul pooling's shape arithmetic symbolic. If a torch build has
dropped it, the dynamo exporter is used with external_data=False, and a silently
raised opset (it writes 18 when asked for 17, DEPLOY_FACTS.md) is converted back.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx
import torch
from torch import nn

from export.onnx_file import default_opset, finalize, load_onnx
from export.simplify import simplify
from runtime.errors import SegkdError

OutputKind = Literal["logits", "labels"]
LabelDtype = Literal["uint8", "int32"]

INPUT_NAME = "input"
OUTPUT_NAMES = {"logits": "logits", "labels": "labels"}
_LABEL_DTYPES = {"uint8": torch.uint8, "int32": torch.int32}


class ExportWrapper(nn.Module):
    """model -> logits (B,K,H,W) float32, or argmax labels (B,H,W) uint8/int32.

    The argmax lives in the graph because a 19-class 1024x2048 float map is 159 MB a
    frame and the label map 2 MB; it is cast because ArgMax's int64 read into the
    wrong buffer type is garbage.
    """

    def __init__(
        self, model: nn.Module, output: OutputKind = "labels", label_dtype: LabelDtype = "uint8"
    ) -> None:
        super().__init__()
        if output not in OUTPUT_NAMES:
            raise SegkdError(f"--output must be 'logits' or 'labels', got {output!r}")
        if label_dtype not in _LABEL_DTYPES:
            raise SegkdError(f"--label-dtype must be 'uint8' or 'int32', got {label_dtype!r}")
        self.model = model
        self.output = output
        self.label_dtype = _LABEL_DTYPES[label_dtype]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if self.output == "logits":
            return logits
        return torch.argmax(logits, dim=1).to(self.label_dtype)


@dataclass(frozen=True)
class Fp32Export:
    model: onnx.ModelProto
    exporter: str  # "torchscript" or "dynamo"
    simplified: bool
    notes: tuple[str, ...]


def _dynamic_axes(output: OutputKind) -> dict[str, dict[int, str]]:
    out_name = OUTPUT_NAMES[output]
    spatial = {0: "batch", 2: "height", 3: "width"}
    out_axes = spatial if output == "logits" else {0: "batch", 1: "height", 2: "width"}
    return {INPUT_NAME: spatial, out_name: out_axes}


def _export_torchscript(
    wrapper: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic: bool, output: OutputKind
) -> None:
    with warnings.catch_warnings():
        # The legacy exporter announces its own deprecation on every call.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            wrapper,
            (x,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAMES[output]],
            dynamic_axes=_dynamic_axes(output) if dynamic else None,
            do_constant_folding=True,
        )


def _export_dynamo(
    wrapper: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic: bool, output: OutputKind
) -> None:
    dynamic_shapes = None
    if dynamic:
        dim = torch.export.Dim
        dynamic_shapes = ({0: dim("batch"), 2: dim("height"), 3: dim("width")},)
    torch.onnx.export(
        wrapper,
        (x,),
        str(path),
        dynamo=True,
        opset_version=opset,
        external_data=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAMES[output]],
        dynamic_shapes=dynamic_shapes,
    )


def export_fp32(
    model: nn.Module,
    *,
    input_size: tuple[int, int],
    output: OutputKind = "labels",
    label_dtype: LabelDtype = "uint8",
    dynamic: bool = False,
    opset: int = 17,
    do_simplify: bool = True,
) -> Fp32Export:
    """Trace `model` (eval mode, CPU) at 1x3xHxW and return a checked, single-file ONNX model."""
    wrapper = ExportWrapper(model, output, label_dtype).eval()
    x = torch.zeros(1, 3, *input_size, dtype=torch.float32)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="segkd-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        exporter = "torchscript"
        with torch.no_grad():
            try:
                _export_torchscript(wrapper, x, path, opset, dynamic, output)
            except Exception as legacy_error:  # the legacy exporter may be gone in this torch
                exporter = "dynamo"
                notes.append(f"legacy exporter unavailable ({type(legacy_error).__name__})")
                try:
                    _export_dynamo(wrapper, x, path, opset, dynamic, output)
                except Exception as e:
                    raise SegkdError(
                        f"ONNX export failed with both exporters: legacy: {legacy_error!s:.160}; "
                        f"dynamo: {e!s:.160}"
                    ) from None
        proto = load_onnx(path)  # pulls any external data back into the proto
    written = default_opset(proto)
    if written != opset:
        notes.append(f"{exporter} exporter wrote opset {written}; converted to {opset}")
        try:
            proto = onnx.version_converter.convert_version(proto, opset)
        except Exception as e:
            raise SegkdError(
                f"--opset {opset}: the exporter wrote opset {written} and converting it back failed "
                f"({type(e).__name__}: {e!s:.160})"
            ) from None
    simplified = False
    if do_simplify:
        slim, why_not = simplify(proto)
        if why_not is None:
            proto, simplified = slim, True
        else:
            notes.append(f"not simplified: {why_not}")
    finalize(proto, "model.onnx")
    if default_opset(proto) != opset:
        raise SegkdError(
            f"--opset {opset}: the written graph declares opset {default_opset(proto)}"
        )
    return Fp32Export(model=proto, exporter=exporter, simplified=simplified, notes=tuple(notes))
