"""`Segmenter`: the one inference interface, whatever backend runs underneath.

frame (BGR uint8, any size) -> PreprocessSpec.apply -> backend -> argmax if logits
-> label map back at the frame's size. Bench, eval and demo all go through here, so
they measure and score exactly what a deployment runs.

The host work follows what the artifact offers: a uint8-input graph gets the frame
resized straight into the input buffer (no float work on the host); a labels-lowres
graph's 1/8 label map gets one nearest resize straight to the frame size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.errors import SegkdError
from core.labels import LabelSpec
from core.preprocess import ColorOrder, Letterbox, PreprocessSpec
from runtime.backends.base import Runner
from runtime.metadata import ModelMeta
from runtime.postprocess import as_label_batch, restore_size, upsample_argmax, upsample_labels
from runtime.slide import slide_logits

log = logging.getLogger(__name__)


class Segmenter:
    def __init__(
        self,
        backend: Runner,
        meta: ModelMeta,
        model_path: Path | str | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        self._backend = backend
        self._meta = meta
        self._path = Path(model_path) if model_path is not None else None
        spec = meta.preprocess
        dims = backend.input_shape
        fixed_h, fixed_w = (dims[1], dims[2]) if spec.layout == "NHWC" else (dims[2], dims[3])
        fixed = (fixed_h, fixed_w) if fixed_h and fixed_w else None
        if input_size is not None:
            input_size = (int(input_size[0]), int(input_size[1]))
            if fixed and input_size != fixed:
                raise SegkdError(
                    f"{self._path}: model is fixed at {fixed[0]}x{fixed[1]}; it cannot run at "
                    f"--input-size {input_size[0]}x{input_size[1]} (re-export with dynamic shapes)"
                )
            spec = spec.with_input_size(input_size)
        elif fixed and fixed != spec.input_size:
            # The graph is the truth: a mismatched spec would only produce a shape error later.
            log.warning(
                "%s: metadata input size %s differs from the model's fixed %s; using the model's",
                self._path,
                spec.input_size,
                fixed,
            )
            spec = spec.with_input_size(fixed)
        self._preprocess = spec
        self._warned_size = False

    # -- description -------------------------------------------------------------------
    @property
    def labels(self) -> LabelSpec:
        return self._meta.labels

    @property
    def preprocess(self) -> PreprocessSpec:
        return self._preprocess

    @property
    def meta(self) -> ModelMeta:
        return self._meta

    @property
    def arch(self) -> str:
        return self._meta.arch

    @property
    def backend_name(self) -> str:
        return self._backend.name

    @property
    def device(self) -> str:
        return self._backend.device

    @property
    def provider(self) -> str:
        return self._backend.provider

    @property
    def precision(self) -> str:
        return self._backend.precision

    @property
    def input_size(self) -> tuple[int, int]:
        return self._preprocess.input_size

    @property
    def fixed_batch(self) -> int | None:
        return self._backend.input_shape[0]

    @property
    def model_path(self) -> Path | None:
        return self._path

    def describe(self) -> dict[str, Any]:
        return {
            "model": str(self._path) if self._path else None,
            "arch": self.arch,
            "backend": self.backend_name,
            "device": self.device,
            "provider": self.provider,
            "precision": self.precision,
            "input_size": list(self.input_size),
            "num_classes": self.labels.num_classes,
        }

    # -- inference ---------------------------------------------------------------------
    @property
    def output_kind(self) -> str:
        """The raw output: logits, labels (input size) or labels-lowres (output stride)."""
        return self._backend.output_kind

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Network input (the spec's dtype and layout) -> BxHxW uint8 label maps at the input size."""
        labels = self.to_labels(self.run(batch))
        if self.output_kind == "labels-lowres":
            labels = upsample_labels(labels, self.input_size)
        return labels

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The backend alone: network input -> raw model output (logits or label maps)."""
        spec = self._preprocess
        want = spec.input_shape(batch.shape[0] if batch.ndim == 4 else 1)
        if batch.ndim != 4 or batch.shape != want:
            dims = "x".join(str(d) for d in want[1:])
            raise ValueError(f"expected a Bx{dims} {spec.dtype} batch, got shape {batch.shape}")
        fixed = self.fixed_batch
        if fixed and batch.shape[0] != fixed:
            raise SegkdError(
                f"{self._path}: model was exported for batch {fixed}, got a batch of "
                f"{batch.shape[0]} (re-export with a dynamic batch axis)"
            )
        if spec.raw_pixels and batch.dtype != np.uint8:
            raise ValueError(f"{self._path} takes uint8 pixels, got a {batch.dtype} batch")
        return self._backend.run(np.ascontiguousarray(batch, dtype=spec.dtype))

    def to_labels(self, output: np.ndarray) -> np.ndarray:
        """Raw model output -> BxHxW label maps at the input size (argmax when it is logits).

        A labels-lowres graph's maps stay at its output stride: `predict_batch` resizes
        them once, to the frame; `infer` to the input size.
        """
        h, w = self.input_size
        labels = as_label_batch(output, self._backend.output_kind)
        if labels.shape[1:] != (h, w) and self.output_kind != "labels-lowres":
            # A graph without the final upsample; nearest is the best we can do on ids.
            if not self._warned_size:
                log.warning(
                    "%s outputs %s, not the input size %s; resizing label maps",
                    self._path,
                    labels.shape[1:],
                    (h, w),
                )
                self._warned_size = True
            labels = np.stack(
                [cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST) for m in labels]
            )
        return labels

    def preprocess_frames(
        self, frames: Sequence[np.ndarray], input_order: ColorOrder = "BGR"
    ) -> tuple[np.ndarray, list[Letterbox]]:
        """Frames (HxWx3 uint8, any sizes) -> one network-input batch and each frame's letterbox.

        Bx3xHxW float32 normalised on the host, or, for a uint8-input graph, the frames
        resized straight into the BxHxWx3 uint8 batch (one cv2.resize a frame, no copy).
        """
        spec = self._preprocess
        h, w = self.input_size
        batch = np.empty(spec.input_shape(len(frames)), dtype=spec.dtype)
        direct = (
            spec.raw_pixels
            and spec.layout == "NHWC"
            and spec.resize == "stretch"
            and input_order == spec.graph_order
        )
        boxes = []
        for i, frame in enumerate(frames):
            if frame is None or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
                shape = None if frame is None else (frame.shape, frame.dtype)
                raise ValueError(f"expected an HxWx3 uint8 frame, got {shape}")
            if direct:
                fh, fw = frame.shape[:2]
                if (fh, fw) == (h, w):
                    batch[i] = frame
                else:
                    cv2.resize(frame, (w, h), dst=batch[i], interpolation=cv2.INTER_LINEAR)
                boxes.append(Letterbox(scale=h / fh, top=0, left=0, height=h, width=w))
                continue
            x, box = spec.apply(frame, input_order)
            batch[i] = x[0]
            boxes.append(box)
        return batch, boxes

    def predict_batch(
        self,
        frames: Sequence[np.ndarray],
        *,
        input_order: ColorOrder = "BGR",
        out_sizes: Sequence[tuple[int, int]] | None = None,
        timings: dict[str, float] | None = None,
    ) -> list[np.ndarray]:
        """Frames -> label maps at each frame's own size (or `out_sizes`).

        If `timings` is given it receives seconds spent in "preprocess" (resize, normalise),
        "infer" (the backend, host<->device copies included) and "postprocess" (argmax if
        the model outputs logits, resize back to the frame) for this call.
        """
        t0 = time.perf_counter()
        batch, boxes = self.preprocess_frames(frames, input_order)
        t1 = time.perf_counter()
        raw = self.run(batch)
        t2 = time.perf_counter()
        labels = self.to_labels(raw)
        sizes = out_sizes or [f.shape[:2] for f in frames]
        size_in = self.input_size
        out = [restore_size(m, b, s, size_in) for m, b, s in zip(labels, boxes, sizes, strict=True)]
        t3 = time.perf_counter()
        if timings is not None:
            timings.update(preprocess=t1 - t0, infer=t2 - t1, postprocess=t3 - t2)
        return out

    def predict(
        self,
        frame: np.ndarray,
        *,
        input_order: ColorOrder = "BGR",
        out_size: tuple[int, int] | None = None,
        timings: dict[str, float] | None = None,
    ) -> np.ndarray:
        """One HxWx3 uint8 frame -> HxW uint8 label map at the frame's size (or `out_size`)."""
        sizes = [out_size] if out_size is not None else None
        return self.predict_batch(
            [frame], input_order=input_order, out_sizes=sizes, timings=timings
        )[0]

    @property
    def outputs_logits(self) -> bool:
        """Whether logits can be had: the main output, or another one of the runner (torch)."""
        return self._backend.logits_output is not None

    def _logits(self, batch: np.ndarray, any_size: bool = False) -> np.ndarray:
        """The runner's logits: its main output through `run` (`run_any_size` for slide's
        windows), or the extra logits output it offers (torch)."""
        name = self._backend.logits_output
        if name is None:
            raise SegkdError(f"{self._path} gives label maps, not logits")
        if name == self._backend.output_name:
            return np.asarray(self.run_any_size(batch) if any_size else self.run(batch))
        x = np.ascontiguousarray(batch, dtype=self._preprocess.dtype)
        return self._backend.infer({self._backend.input_name: x}, [name])[name]

    def predict_upsampled(
        self,
        frame: np.ndarray,
        *,
        input_order: ColorOrder = "BGR",
        out_size: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """One frame -> HxW class ids, logits resized bilinearly to `out_size`, then argmax.

        The evaluation convention of Cityscapes, mmsegmentation and CIRKD; `predict`
        (argmax at the network's resolution, label map resized) is what a deployment runs.
        """
        if not self.outputs_logits:
            raise SegkdError(
                f"{self._path}: outputs label maps, not logits; it can only be scored by "
                "resizing its labels (re-export with --output logits)"
            )
        batch, boxes = self.preprocess_frames([frame], input_order)
        logits = self._logits(batch)[0]
        h, w = self.input_size
        if logits.shape[1:] != (h, w):  # a graph without its final upsample
            logits = np.stack(
                [cv2.resize(np.asarray(c, np.float32), (w, h)) for c in logits]
            )  # fmt: skip
        return upsample_argmax(logits, boxes[0], out_size or frame.shape[:2])

    def predict_slide(
        self,
        frame: np.ndarray,
        crop: tuple[int, int],
        stride: tuple[int, int],
        *,
        input_order: ColorOrder = "BGR",
        out_size: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """mmseg's sliding-window test (runtime.slide): the frame preprocessed at the input
        size as for a whole-image run, windows of `crop` every `stride` (H, W), logits
        averaged, then resized bilinearly to `out_size` and argmax."""
        fixed = self._backend.input_shape[2:]
        if any(d is not None for d in fixed) or self._preprocess.layout != "NCHW":
            raise SegkdError(
                f"--mode slide: {self._path} runs only at its exported input size "
                f"{self.input_size[0]}x{self.input_size[1]}; slide needs a model that takes "
                "any size (the torch backend: a .pt checkpoint or a model-zoo file)"
            )
        if not self.outputs_logits:
            raise SegkdError(f"--mode slide: {self._path} gives label maps, not logits")
        batch, boxes = self.preprocess_frames([frame], input_order)
        logits = slide_logits(partial(self._logits, any_size=True), batch, crop, stride)[0]
        return upsample_argmax(logits, boxes[0], out_size or frame.shape[:2])

    def run_any_size(self, batch: np.ndarray) -> np.ndarray:
        """The backend on a batch of any spatial size (a dynamic-shape model only)."""
        return self._backend.run(np.ascontiguousarray(batch, dtype=self._preprocess.dtype))

    # -- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Segmenter({self._path}, backend={self.backend_name}, device={self.device!r}, "
            f"precision={self.precision}, input={self.input_size[0]}x{self.input_size[1]})"
        )
