"""Run exported artifacts next to the PyTorch model on the same preprocessed images.

Runners and comparison are separate (as in Polygraphy): every artifact runs through the
runtime's own backend (runtime/backends/), the code that serves it after export, and
`compare` only scores outputs. A labels graph (in-graph ArgMax) is run with its logits
tensor exposed as an extra output of an in-memory copy, so the logit error is measured
on the exact graph in the file, not on a sibling export.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from core.metrics import ConfusionMatrix
from core.preprocess import PreprocessSpec
from export.calibration import Prepared
from runtime.backends import base
from runtime.postprocess import as_label_batch, restore_size, upsample_labels

# x (the network input) -> (labels BxHxW at the input size, logits BxKxhxw float32 or None)
Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


def _logits_tensor(model: onnx.ModelProto) -> str | None:
    """Name of the tensor the output ArgMax reads (through Casts), if the output is labels."""
    producers = {out: node for node in model.graph.node for out in node.output}
    node = producers.get(model.graph.output[0].name)
    while node is not None and node.op_type in ("Cast", "Identity"):
        node = producers.get(node.input[0])
    if node is None or node.op_type != "ArgMax":
        return None
    return node.input[0]


def expose_logits(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """(model whose LAST output is float logits, whether the logits were added)."""
    if model.graph.output[0].type.tensor_type.elem_type in (
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
    ):
        return model, False
    name = _logits_tensor(model)
    if name is None:
        return model, False
    elem = onnx.TensorProto.FLOAT
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in inferred.graph.value_info:
        if vi.name == name:
            elem = vi.type.tensor_type.elem_type
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    return copy, True


class BackendRunner:
    """A runtime runner (runtime.backends.base.Runner) as a verification runner: its main
    output as labels, and its logits where it gives them (the main output or an extra)."""

    def __init__(self, runner: base.Runner, layout: str = "NCHW") -> None:
        self.runner = runner
        self.provider = runner.provider  # the one that really ran
        self.layout = layout

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        r = self.runner
        logits_name = r.logits_output
        names = [r.output_name] + (
            [logits_name] if logits_name not in (None, r.output_name) else []
        )
        got = r.infer({r.input_name: x}, names)
        labels = as_label_batch(got[r.output_name], r.output_kind)
        if r.output_kind == "labels-lowres":  # scored at the input size, as run
            labels = upsample_labels(labels, _spatial(x, self.layout))
        logits = None if logits_name is None else got[logits_name]
        return labels, None if logits is None else logits.astype(np.float32, copy=False)

    def close(self) -> None:
        self.runner.close()


def _spatial(x: np.ndarray, layout: str) -> tuple[int, int]:
    return (
        (int(x.shape[1]), int(x.shape[2]))
        if layout == "NHWC"
        else (int(x.shape[2]), int(x.shape[3]))
    )


def onnx_runner(
    path: Path, model: onnx.ModelProto, precision: str, output_kind: str, layout: str = "NCHW"
) -> BackendRunner:
    """The ONNX file at `path` (whose graph is `model`) on onnxruntime's CPU provider.

    Verification is a reference computation: always the CPU provider, whatever is
    installed; idle threads sleep rather than spin on a shared CPU.
    """
    from runtime.backends.onnxruntime import OnnxRuntimeBackend

    probe, added = expose_logits(model)
    backend = OnnxRuntimeBackend(
        path,
        precision=precision,
        output_kind=output_kind,
        input_name=model.graph.input[0].name,
        output_name=model.graph.output[0].name,
        logits_output=probe.graph.output[-1].name if added else None,
        device="cpu",
        model_bytes=probe.SerializeToString() if added else None,
        allow_spinning=False,
    )
    return BackendRunner(backend, layout)


def engine_runner(
    path: Path, precision: str, output_kind: str, layout: str = "NCHW"
) -> BackendRunner:
    """A TensorRT engine through the runtime's TensorRT backend (plain launches, no graph)."""
    from runtime.backends.tensorrt import TensorRTBackend

    backend = TensorRTBackend(
        path, device="cuda", precision=precision, output_kind=output_kind, cuda_graph=False
    )
    return BackendRunner(backend, layout=layout)


class TorchReference:
    """The PyTorch model as x -> float32 logits (B,K,H,W) at the input size, on the CPU.

    pixels: a uint8-input spec; its uint8 inputs are then normalised on the host by the
    float path (PreprocessSpec.normalize), so the graph's own normalisation is checked.
    `lowres(x)`: the logits a labels-lowres graph takes its argmax of (at the model's
    output stride, or resized to 1/label_stride).
    """

    def __init__(
        self,
        model: Any,
        pixels: PreprocessSpec | None = None,
        lowres: bool = False,
        label_stride: int | None = None,
    ) -> None:
        self.model = model
        self.pixels = pixels
        self.label_stride = label_stride
        # Reference labels the way a labels-lowres graph makes them (argmax at the output
        # stride, nearest to the input size); the full-size ones are then tallied apart.
        self.lowres_labels = lowres

    def _float(self, x: np.ndarray) -> np.ndarray:
        if self.pixels is None:
            return x
        spec = self.pixels
        hwc = x if spec.layout == "NHWC" else x.transpose(0, 2, 3, 1)
        flat = spec.float_input()
        return np.stack([flat.normalize(np.ascontiguousarray(im), spec.graph_order) for im in hwc])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model(torch.from_numpy(self._float(x))).float().numpy()

    def lowres(self, x: np.ndarray) -> np.ndarray | None:
        import torch

        from export.onnx_fp32 import lowres_logits

        if not callable(getattr(self.model, "extract", None)):
            return None
        with torch.no_grad():
            out = lowres_logits(self.model, torch.from_numpy(self._float(x)), self.label_stride)
        return out.float().numpy()


def torch_reference(
    model: Any,
    pixels: PreprocessSpec | None = None,
    lowres: bool = False,
    label_stride: int | None = None,
) -> TorchReference:
    return TorchReference(model, pixels, lowres, label_stride)


@dataclass
class Agreement:
    """How one artifact compares with the fp32 reference on held-out images."""

    images: int = 0
    input_shape: list[int] = field(default_factory=list)
    max_abs_logit_diff: float | None = None  # None when the artifact exposes no logits
    max_abs_logit: float | None = None  # largest |logit| seen: float error scales with it
    pixel_agreement: float = 0.0
    miou_vs_reference: float = 0.0
    miou_vs_ground_truth: float | None = None
    reference_miou_vs_ground_truth: float | None = None
    provider: str = ""
    # labels-lowres: agreement with the labels of the logits upsampled to the input size
    # (the logits graph's labels): the quality cost of taking the argmax at 1/8.
    pixel_agreement_vs_full_res: float | None = None
    miou_vs_full_res: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "input_shape": self.input_shape,
            # JSON has no infinity: an overflowing fp16 logit is reported as the string "inf".
            "max_abs_logit_diff": (
                self.max_abs_logit_diff
                if self.max_abs_logit_diff is None or math.isfinite(self.max_abs_logit_diff)
                else "inf"
            ),
            "max_abs_logit": self.max_abs_logit,
            "pixel_agreement": self.pixel_agreement,
            "miou_vs_fp32": self.miou_vs_reference,
            "miou_vs_ground_truth": self.miou_vs_ground_truth,
            "fp32_miou_vs_ground_truth": self.reference_miou_vs_ground_truth,
            "provider": self.provider,
            **(
                {
                    "pixel_agreement_vs_full_res": self.pixel_agreement_vs_full_res,
                    "miou_vs_full_res": self.miou_vs_full_res,
                }
                if self.pixel_agreement_vs_full_res is not None
                else {}
            ),
        }


class _RefBatch:
    """The reference's labels (and logits, where it is the model) for one batch."""

    def __init__(
        self,
        reference: Callable[[np.ndarray], np.ndarray] | Sequence[np.ndarray],
        x: np.ndarray,
        start: int,
        count: int,
    ) -> None:
        self.torch = reference if isinstance(reference, TorchReference) else None
        self.x = x
        self.logits: np.ndarray | None = None
        self._lowres: np.ndarray | None = None  # logits at the output stride, once computed
        self.full_labels: np.ndarray | None = None  # a lowres reference's full-size labels
        if not callable(reference):
            self.labels = np.stack(reference[start : start + count])
            return
        self.logits = reference(x)
        self.labels = as_label_batch(self.logits, "logits")
        if self.torch is not None and self.torch.lowres_labels:
            low = self.lowres()
            if low is not None:
                self.full_labels = self.labels
                self.labels = upsample_labels(as_label_batch(low, "logits"), self.labels.shape[1:])

    def lowres(self) -> np.ndarray | None:
        """The logits a labels-lowres graph takes its argmax of (None without a model)."""
        if self._lowres is None and self.torch is not None:
            self._lowres = self.torch.lowres(self.x)
        return self._lowres


class _Tally:
    def __init__(self, num_classes: int, ignore_index: int, with_gt: bool) -> None:
        self.max_abs: float | None = None
        self.scale: float | None = None
        self.same = 0
        self.total = 0
        self.vs_ref = ConfusionMatrix(num_classes, ignore_index)
        self.vs_gt = ConfusionMatrix(num_classes, ignore_index) if with_gt else None
        self.full_same = 0
        self.has_full = False
        self.vs_full = ConfusionMatrix(num_classes, ignore_index)

    def add_logits(self, a: np.ndarray, b: np.ndarray) -> None:
        d = float(np.max(np.abs(a - b))) if a.size else 0.0
        if not math.isfinite(d):
            d = math.inf
        self.max_abs = d if self.max_abs is None else max(self.max_abs, d)
        m = float(np.max(np.abs(b))) if b.size else 0.0
        self.scale = m if self.scale is None else max(self.scale, m)

    def add(
        self,
        key: str,
        labels: np.ndarray,
        logits: np.ndarray | None,
        ref: _RefBatch,
        group: Sequence[Prepared],
    ) -> None:
        """One artifact's output on one batch, scored against the reference's."""
        if labels.shape != ref.labels.shape:
            raise ValueError(
                f"{key}: output {labels.shape} does not match reference {ref.labels.shape}"
            )
        if ref.logits is not None and logits is not None:
            if logits.shape == ref.logits.shape:
                self.add_logits(logits, ref.logits)
            else:  # a labels-lowres graph: its logits are the model's before upsampling
                low = ref.lowres()
                if low is not None and low.shape == logits.shape:
                    self.add_logits(logits, low)
        self.same += int((labels == ref.labels).sum())
        self.total += int(labels.size)
        self.vs_ref.update(labels, ref.labels)
        if ref.full_labels is not None:
            self.has_full = True
            self.full_same += int((labels == ref.full_labels).sum())
            self.vs_full.update(labels, ref.full_labels)
        if self.vs_gt is not None:
            for lab, s in zip(labels, group, strict=True):
                self.vs_gt.update(restore_size(lab, s.box, s.mask.shape), s.mask)

    def agreement(
        self, images: int, shape: list[int], ref_miou: float | None, provider: str
    ) -> Agreement:
        return Agreement(
            images=images,
            input_shape=shape,
            max_abs_logit_diff=self.max_abs,
            max_abs_logit=self.scale,
            pixel_agreement=self.same / self.total if self.total else 0.0,
            miou_vs_reference=self.vs_ref.summary().miou,
            miou_vs_ground_truth=self.vs_gt.summary().miou if self.vs_gt is not None else None,
            reference_miou_vs_ground_truth=ref_miou,
            provider=provider,
            pixel_agreement_vs_full_res=(self.full_same / self.total if self.total else 0.0)
            if self.has_full
            else None,
            miou_vs_full_res=self.vs_full.summary().miou if self.has_full else None,
        )


def compare(
    samples: Sequence[Prepared],
    runners: Mapping[str, Runner],
    reference: Callable[[np.ndarray], np.ndarray] | Sequence[np.ndarray],
    num_classes: int,
    ignore_index: int,
    with_ground_truth: bool = True,
    batch: int = 1,
    providers: Mapping[str, str] | None = None,
) -> tuple[dict[str, Agreement], list[np.ndarray], float | None]:
    """Run every artifact on every sample in batches of `batch`.

    `reference` is the PyTorch model (x -> logits) or the reference label maps of an
    earlier pass (for TensorRT engines, verified after the ONNX files). Returns each
    artifact's agreement, the reference labels and the reference mIoU vs ground truth.
    """
    tallies = {k: _Tally(num_classes, ignore_index, with_ground_truth) for k in runners}
    ref_gt = ConfusionMatrix(num_classes, ignore_index) if with_ground_truth else None
    ref_labels_out: list[np.ndarray] = []
    shape: list[int] = []
    for start in range(0, len(samples), batch):
        group = samples[start : start + batch]
        x = np.concatenate([s.x for s in group], axis=0)
        shape = list(x.shape)
        ref = _RefBatch(reference, x, start, len(group))
        ref_labels_out.extend(ref.labels)
        if ref_gt is not None:
            for lab, s in zip(ref.labels, group, strict=True):
                ref_gt.update(restore_size(lab, s.box, s.mask.shape), s.mask)
        for key, run in runners.items():
            labels, logits = run(x)
            tallies[key].add(key, labels, logits, ref, group)
    ref_miou = ref_gt.summary().miou if ref_gt is not None else None
    out = {
        key: t.agreement(len(samples), shape, ref_miou, (providers or {}).get(key, ""))
        for key, t in tallies.items()
    }
    return out, ref_labels_out, ref_miou
