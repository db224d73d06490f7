"""What a deserialized TensorRT engine takes and gives: the one place that lists its I/O.

The builder records it in export.json (`manifest_entry`), the runner binds its buffers
from it. Name-based API only (num_io_tensors, get_tensor_name/mode/shape/dtype): the
binding-index API is gone since TensorRT 10.0. No torch, and `trt` is passed in (the
module, imported lazily by the caller).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.errors import SegkdError
from runtime.backends.base import TensorInfo


def engine_io(trt: Any, engine: Any, where: object) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """(inputs, outputs) of `engine`, in its tensor order; -1 dims (dynamic) become None."""
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dims = tuple(int(d) for d in engine.get_tensor_shape(name))
        dt = engine.get_tensor_dtype(name)
        try:
            dtype = np.dtype(trt.nptype(dt))
        except TypeError:
            raise SegkdError(
                f"{where}: tensor {name!r} has type {dt}, which numpy cannot hold"
            ) from None
        info = TensorInfo(name, tuple(d if d >= 0 else None for d in dims), dtype)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        (inputs if is_input else outputs).append(info)
    return inputs, outputs


def manifest_entry(info: TensorInfo) -> dict[str, Any]:
    """A tensor as export.json lists it: dynamic dims as "dynamic"."""
    return {
        "name": info.name,
        "shape": ["dynamic" if d is None else d for d in info.shape],
        "dtype": info.dtype.name,
    }
