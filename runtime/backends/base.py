"""The one runner contract every inference backend (ONNX Runtime, TensorRT, torch) keeps.

A runner maps a feed of named input arrays to named output arrays, `infer(feed)`, and
says what it is: where it runs (device, provider), at which precision, and each input's
and output's name, shape, dtype and kind (logits, labels or labels-lowres). `Segmenter`,
export verification, eval, bench and demo use nothing else, so one backend is swapped for
another without asking what it can do. (The shape follows Polygraphy's runners.)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from core.errors import SegkdError

# What an output holds: logits (B,K,H,W), label maps at the input size (B,H,W), or the
# label maps of an argmax taken at the output stride (B,h,w).
OUTPUT_KINDS = ("logits", "labels", "labels-lowres")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int | None, ...]  # None: a dynamic axis
    dtype: np.dtype


class Runner(ABC):
    name: ClassVar[str]  # "onnxruntime", "tensorrt", "torch"
    device: str  # human description of where it really runs
    provider: str  # the engine inside the backend that really ran (ORT provider, TRT version)
    precision: str  # "fp32", "fp16", "int8"
    inputs: tuple[TensorInfo, ...]  # the network input (Bx3xHxW or BxHxWx3) first
    outputs: tuple[TensorInfo, ...]  # the main output first
    output_kinds: dict[str, str]  # output name -> an OUTPUT_KINDS entry, where known

    @abstractmethod
    def infer(
        self, feed: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Named inputs -> the named `outputs` (None: every output), as host arrays."""

    @abstractmethod
    def close(self) -> None:
        """Release the session, engine or model; the runner is unusable afterwards."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what follows from the facts above, the same for every backend -------------------
    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def output_name(self) -> str:
        return self.outputs[0].name

    @property
    def output_kind(self) -> str:
        """The main output's kind."""
        return self.output_kinds[self.output_name]

    @property
    def input_shape(self) -> tuple[int | None, int | None, int | None, int | None]:
        """The network input's 4 dims; None where the model accepts any size."""
        s = self.inputs[0].shape
        return (s[0], s[1], s[2], s[3])

    @property
    def logits_output(self) -> str | None:
        """The output holding logits (the main one, or an extra one), if any."""
        if self.output_kind == "logits":
            return self.output_name
        return next((n for n, k in self.output_kinds.items() if k == "logits"), None)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """The network input alone -> the main output."""
        return self.infer({self.input_name: batch}, [self.output_name])[self.output_name]

    # -- for the backends ------------------------------------------------------------------
    def _input_batch(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        """The one input array of `feed`, which must name exactly this runner's inputs."""
        names = [i.name for i in self.inputs]
        if sorted(feed) != sorted(names):
            raise SegkdError(f"{self.name} runner: feed names {sorted(feed)}, it takes {names}")
        return feed[self.input_name]

    def _wanted(self, outputs: Sequence[str] | None) -> list[str]:
        names = [o.name for o in self.outputs]
        if outputs is None:
            return names
        unknown = [n for n in outputs if n not in names]
        if unknown:
            raise SegkdError(f"{self.name} runner: no output {unknown}; it gives {names}")
        return list(outputs)
