"""PyTorch -> fp32 ONNX: the wrapper with an optional in-graph argmax, and the exporter call.

The legacy TorchScript exporter (dynamo=False) is tried first: it writes the opset we
ask for and keeps the matmul pooling's shape arithmetic symbolic. If a torch build has
dropped it, the dynamo exporter is used with external_data=False, and a silently
raised opset (it writes 18 when asked for 17, docs/DEPLOY_FACTS.md, "ONNX export") is
converted back.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import SegkdError
from core.preprocess import PreprocessSpec
from export.onnx_file import default_opset, finalize, load_onnx
from export.simplify import simplify

OutputKind = Literal["logits", "labels", "labels-lowres"]
LabelDtype = Literal["uint8", "int32"]
InputDtype = Literal["float32", "uint8"]

INPUT_NAME = "input"
# labels-lowres: the argmax at the network's own output stride (1/8), before the final
# upsample; the host's one nearest resize to the frame size replaces the graph's Resize.
OUTPUT_NAMES = {"logits": "logits", "labels": "labels", "labels-lowres": "labels"}
OUTPUT_KINDS = tuple(OUTPUT_NAMES)
INPUT_DTYPES = ("float32", "uint8")
_LABEL_DTYPES = {"uint8": torch.uint8, "int32": torch.int32}


class PixelInput(nn.Module):
    """uint8 pixels (B,H,W,3 in the spec's input order) -> the normalised float32 NCHW input.

    The graph's first ops: Cast, Transpose, the channel flip when the frame order is not
    the network's, then one multiply and one add per value, the same (x - mean) / std
    the host would do (PreprocessSpec.normalize). The Cast comes first because TensorRT
    takes a UINT8 network input only into a Cast (docs/DEPLOY_FACTS.md, "TensorRT's ONNX
    limits"); TensorRT fuses the pointwise chain with the input reformat; onnxruntime
    runs it on its threads.
    """

    def __init__(self, spec: PreprocessSpec) -> None:
        super().__init__()
        if not spec.raw_pixels:
            raise ValueError("PixelInput needs a uint8-input PreprocessSpec")
        std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / std, persistent=False)
        self.register_buffer("shift", -mean / std, persistent=False)
        self.nhwc = spec.layout == "NHWC"
        self.flip = spec.graph_order != spec.color_order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        if self.flip:
            x = torch.flip(x, dims=[1])
        return x * self.scale + self.shift


def check_output_kind(output: str) -> None:
    if output not in OUTPUT_NAMES:
        raise SegkdError(f"--output must be one of {', '.join(OUTPUT_KINDS)}, got {output!r}")


def check_label_stride(model: nn.Module, label_stride: int | None) -> int | None:
    """--label-stride for labels-lowres: None (or the model's output stride) = no Resize;
    2 or 4 (< the output stride) = logits resized to 1/stride before the argmax."""
    if label_stride is None:
        return None
    stride = int(getattr(model, "output_stride", 8))
    if isinstance(label_stride, bool) or not isinstance(label_stride, int):
        raise SegkdError(f"--label-stride must be an integer, got {label_stride!r}")
    if not 1 < label_stride <= stride:
        raise SegkdError(
            f"--label-stride must be in 2..{stride} (the model's output stride; 1 is "
            f"--output labels), got {label_stride}"
        )
    return None if label_stride == stride else label_stride


def lowres_logits(model: nn.Module, x: torch.Tensor, label_stride: int | None) -> torch.Tensor:
    """The logits a labels-lowres graph takes its argmax of: at the model's output stride,
    or resized (bilinear, half-pixel) to 1/`label_stride` of the input."""
    logits = model.extract(x, with_aux=False)["logits"]
    if label_stride is None:
        return logits
    size = (x.shape[-2] // label_stride, x.shape[-1] // label_stride)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class ExportWrapper(nn.Module):
    """[uint8 pixels ->] model -> logits (B,K,H,W) float32, or argmax labels (B,H,W).

    The argmax lives in the graph because a 19-class 1024x2048 float map is 159 MB a
    frame and the label map 2 MB; it is cast because ArgMax's int64 read into the
    wrong buffer type is garbage (export/tensorrt_graph.py then routes a uint8 cast
    through float32, the only way TensorRT makes UINT8). "labels-lowres" takes the argmax of the logits at the
    model's output stride (`model.extract`), before the upsample to the input size.
    `pixels`: a uint8-input spec; the graph then normalises itself (PixelInput).
    """

    def __init__(
        self,
        model: nn.Module,
        output: OutputKind = "labels",
        label_dtype: LabelDtype = "uint8",
        pixels: PreprocessSpec | None = None,
        label_stride: int | None = None,
    ) -> None:
        super().__init__()
        check_output_kind(output)
        if label_dtype not in _LABEL_DTYPES:
            raise SegkdError(f"--label-dtype must be 'uint8' or 'int32', got {label_dtype!r}")
        if output == "labels-lowres" and not callable(getattr(model, "extract", None)):
            raise SegkdError(
                f"--output labels-lowres needs a segkd architecture (with extract()); "
                f"{type(model).__name__} has none: use --output labels"
            )
        self.model = model
        self.output = output
        self.label_dtype = _LABEL_DTYPES[label_dtype]
        self.pixels = PixelInput(pixels) if pixels is not None else None
        self.label_stride = check_label_stride(model, label_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pixels is not None:
            x = self.pixels(x)
        if self.output == "labels-lowres":
            logits = lowres_logits(self.model, x, self.label_stride)
        else:
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


def _dynamic_axes(output: OutputKind, nhwc: bool = False) -> dict[str, dict[int, str]]:
    out_name = OUTPUT_NAMES[output]
    spatial = {0: "batch", 2: "height", 3: "width"}
    inp = {0: "batch", 1: "height", 2: "width"} if nhwc else spatial
    if output == "logits":
        out_axes = spatial
    elif output == "labels":
        out_axes = {0: "batch", 1: "height", 2: "width"}
    else:  # at the output stride: its own symbolic sizes
        out_axes = {0: "batch", 1: "out_height", 2: "out_width"}
    return {INPUT_NAME: inp, out_name: out_axes}


def _export_torchscript(
    wrapper: ExportWrapper,
    x: torch.Tensor,
    path: Path,
    opset: int,
    dynamic: bool,
    output: OutputKind,
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
            dynamic_axes=_dynamic_axes(output, x.dtype == torch.uint8) if dynamic else None,
            do_constant_folding=True,
        )


def _export_dynamo(
    wrapper: ExportWrapper,
    x: torch.Tensor,
    path: Path,
    opset: int,
    dynamic: bool,
    output: OutputKind,
) -> None:
    dynamic_shapes = None
    if dynamic:
        dim = torch.export.Dim
        h, w = (1, 2) if x.dtype == torch.uint8 else (2, 3)
        dynamic_shapes = ({0: dim("batch"), h: dim("height"), w: dim("width")},)
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
    pixels: PreprocessSpec | None = None,
    label_stride: int | None = None,
) -> Fp32Export:
    """Trace `model` (eval mode, CPU) at 1x3xHxW and return a checked, single-file ONNX model.

    pixels: a uint8-input spec (PreprocessSpec.uint8_input): the graph takes its uint8
    layout and normalises inside; None: the float32 NCHW input normalised on the host.
    """
    wrapper = ExportWrapper(model, output, label_dtype, pixels, label_stride).eval()
    if pixels is not None:
        x = torch.zeros(pixels.with_input_size(input_size).input_shape(1), dtype=torch.uint8)
    else:
        x = torch.zeros(1, 3, *input_size, dtype=torch.float32)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="segkd-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        exporter = "torchscript"
        with torch.no_grad():
            try:
                _export_torchscript(wrapper, x, path, opset, dynamic, output)
            except OSError:  # a full temp folder: the other exporter would fail the same way
                raise
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
