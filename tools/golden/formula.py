"""Weights and inputs anyone can recompute from a key's name and shape (golden fixtures).

Both sides use this file: the generators run it beside the upstream code in a throwaway
environment, segkd's tests run it to rebuild the same state dict in the upstream key layout.
Only hashlib and torch: no upstream code and no segkd code.

value(key, i) = 2 frac(43758.5453 sin(i a + b)) - 1, a in [0.5, 1.5) and b in [0, 2pi)
from sha256(key): the classic sine hash, spread over [-1, 1) like uniform noise (a plain
sinusoid is too regular: its convolutions cancel and the outputs lose the input);
- conv/linear weights: value * sqrt(6 / fan_in) (He-uniform: activations keep their
  scale through ReLUs and BatchNorm in eval mode, which does not renormalise);
- BatchNorm weight 1 + 0.1 value, bias / running_mean 0.1 value, running_var
  1 + 0.5 |value| (positive), num_batches_tracked 0;
- other 1-D tensors (biases): 0.1 value.
A fixture stores the key layout (key_layout: 'name:d0xd1x...' strings) and its input's size;
image(H, W) is the input, images(N, H, W) a batch of shifted views of the same pattern
(image 0 is image(H, W)) for networks whose train mode needs more than one image.
"""

from __future__ import annotations

import hashlib
import math

import torch


def _wave(key: str, n: int) -> torch.Tensor:
    h = hashlib.sha256(key.encode()).digest()
    a = 0.5 + h[0] / 256.0
    b = 2 * math.pi * h[1] / 256.0
    i = torch.arange(n, dtype=torch.float64)
    return 2 * torch.frac(43758.5453 * torch.sin(i * a + b)).abs() - 1


def weight(key: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    n = math.prod(shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.long)
    v = _wave(key, n)
    leaf = key.rsplit(".", 1)[-1]
    if len(shape) >= 2:
        v = v * math.sqrt(6 / (n // shape[0]))
    elif leaf == "running_var":
        v = 1 + 0.5 * v.abs()
    elif leaf == "weight":  # 1-D: a norm layer's scale (conv and linear weights are >= 2-D)
        v = 1 + 0.1 * v
    else:
        v = 0.1 * v
    return v.reshape(shape).to(dtype)


def state_dict(layout: list[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    return {k: weight(k, tuple(s)) for k, s in layout}


def key_layout(state: dict[str, torch.Tensor]) -> list[str]:
    """A state dict's keys and shapes as 'name:d0xd1x...' strings (how a fixture stores them)."""
    return [f"{k}:{'x'.join(map(str, v.shape))}" for k, v in state.items()]


def parse_layout(entries) -> dict[str, tuple[int, ...]]:  # type: ignore[no-untyped-def]
    """key_layout's strings (a list or a numpy string array) back to {name: shape}."""
    out = {}
    for entry in entries:
        name, dims = str(entry).rsplit(":", 1)
        out[name] = tuple(int(d) for d in dims.split("x")) if dims else ()
    return out


def image(h: int, w: int, channels: int = 3, shift: int = 0) -> torch.Tensor:
    """A fixed normalised input (1, C, H, W): smooth waves plus a fine pattern, so both
    large receptive fields and single taps see structure. `shift` moves the origin
    diagonally by that many pixels (another view of the same pattern)."""
    y = torch.arange(shift, shift + h, dtype=torch.float64).view(h, 1)
    x = torch.arange(shift, shift + w, dtype=torch.float64).view(1, w)
    planes = [
        torch.sin(0.031 * (c + 1) * y + 0.017 * x + c)
        + 0.5 * torch.cos(0.23 * x - 0.11 * (c + 2) * y)
        + 0.25 * torch.sin(1.7 * x * (c + 1) + 2.3 * y)
        for c in range(channels)
    ]
    return torch.stack(planes).unsqueeze(0).float()


def images(n: int, h: int, w: int, channels: int = 3) -> torch.Tensor:
    """(N, C, H, W): image(h, w) and n - 1 views shifted by 37 pixels each, so batch
    statistics (BatchNorm in train mode) mix images that differ."""
    return torch.cat([image(h, w, channels, shift=37 * i) for i in range(n)])
