"""Weights and inputs anyone can recompute for the DDRNet/PIDNet golden fixtures: each tensor's values follow from its key name
and shape alone (a sinusoid whose frequency and phase come from the SHA-256 of the name),
so a golden fixture needs to store only the key list, and segkd's tests rebuild the same
weights in the upstream layout. numpy only: imported by the generators (run in a
throwaway environment with the upstream code) and by segkd's tests.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np


def weight_value(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """float32 (int64 for BN counters) values for the tensor `name` of `shape`.

    BN: gamma 1 + 0.2 s, beta/mean 0.1 s, running_var 0.5 + 0.5 s^2 (> 0). Conv/linear
    weights s * sqrt(3 / fan_in) (variance 1.5 / fan_in); biases 0.1 s.
    """
    shape = tuple(int(d) for d in shape)
    if name.endswith("num_batches_tracked"):
        return np.zeros(shape, np.int64)
    digest = hashlib.sha256(name.encode()).digest()
    freq = 0.05 + digest[0] / 255 * 0.9
    phase = digest[1] / 255 * 2 * math.pi
    s = np.sin(freq * np.arange(math.prod(shape), dtype=np.float64) + phase).reshape(shape)
    if name.endswith("running_var"):
        v = 0.5 + 0.5 * s * s
    elif name.endswith("running_mean"):
        v = 0.1 * s
    elif len(shape) == 1:
        v = 1 + 0.2 * s if name.endswith("weight") else 0.1 * s
    else:
        v = s * math.sqrt(3.0 / math.prod(shape[1:]))
    return v.astype(np.float32)


def input_image(batch: int, height: int, width: int) -> np.ndarray:
    """A fixed B x 3 x H x W float32 input with structure at several scales."""
    b, c, i, j = np.meshgrid(
        np.arange(batch), np.arange(3), np.arange(height), np.arange(width), indexing="ij"
    )
    x = np.sin(0.12 * i + 0.5 * c + b) * np.cos(0.07 * j - 0.3 * c)
    x += 0.5 * np.sign(np.sin(0.031 * i + 0.017 * j + 0.9 * b))  # large regions with edges
    x += 0.25 * np.sin(0.9 * (i * j) / 50.0 + c)
    return x.astype(np.float32)


def key_layout(state: dict) -> np.ndarray:
    """The key list with shapes, as the fixtures store it: 'name:d0xd1x...' strings."""
    return np.asarray([f"{k}:{'x'.join(map(str, v.shape))}" for k, v in state.items()])


def parse_layout(layout: np.ndarray) -> dict[str, tuple[int, ...]]:
    out = {}
    for entry in layout.tolist():
        name, dims = entry.rsplit(":", 1)
        out[name] = tuple(int(d) for d in dims.split("x")) if dims else ()
    return out
