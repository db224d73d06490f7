"""Reading a zoo file with torch.load(weights_only=True) and nothing but plain data.

mmsegmentation checkpoints are {'meta': {...}, 'state_dict': {...}} (meta holds versions,
the config text, CLASSES/PALETTE; newer ones numpy scalars such as the seed); CIRKD and
torchvision files are bare state dicts, CIRKD's sometimes with DDP's 'module.' prefix
(the one unwrap rule for all of them: distill.models.weights.unwrap_state_dict).
The only non-builtin types allowed are numpy's scalar/array reconstructors and dtypes
(under numpy 2's names and the numpy 1.x names older files carry) and inert stand-ins for
training state outside the weights (distill.zoo.inert): data, not code. Anything else is
refused with one line, and its payload never runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import SegkdError
from distill.finite_weights import refuse_non_finite
from distill.models.weights import WRAPPER_KEYS, unwrap_state_dict
from distill.weights_only import load_plain_data
from distill.zoo.inert import training_state_globals

# numpy 2 renamed numpy.core to numpy._core; torch's weights-only unpickler matches the
# name written in the file, so a file pickled under numpy 1.x names these functions by
# their old module. The objects are numpy 2's own (the same data reconstructors).
NUMPY1_NAMES = ("scalar", "_reconstruct")


def _numpy_globals() -> list[Any]:
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed core to _core
    allowed: list[Any] = [
        core.multiarray.scalar,
        core.multiarray._reconstruct,
        np.ndarray,
        np.dtype,
    ]
    for name in NUMPY1_NAMES:  # the numpy 1.x spelling, as an alias of the same function
        allowed.append((getattr(core.multiarray, name), f"numpy.core.multiarray.{name}"))
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles dtypes by their class
    if dtypes is not None:
        for name in dir(dtypes):
            obj = getattr(dtypes, name)
            if isinstance(obj, type) and issubclass(obj, np.dtype) and obj is not np.dtype:
                allowed.append(obj)
    return allowed


def read_weights_file(path: Path) -> Any:
    """The unpickled object, or one SegkdError line (missing, corrupt, or not plain data)."""
    if path.is_dir():
        raise SegkdError(f"{path} is a folder; give the weights file (.pth/.pt) inside it")
    if not path.is_file():
        raise SegkdError(f"teacher file not found: {path}")
    return load_plain_data(
        path,
        noun="",
        advice="load only files from sources you trust",
        not_a="a weights file",
        allowed_globals=_numpy_globals() + training_state_globals(),
    )


def split_state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, meta dict or {}) by segkd's one unwrap rule
    (distill.models.weights.unwrap_state_dict), checked to be named tensors, all finite."""
    state, meta = unwrap_state_dict(obj)
    if not isinstance(state, dict) or not state:
        raise SegkdError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    if any(k in state for k in (*WRAPPER_KEYS, "meta")):  # a wrapper without usable weights
        raise SegkdError(
            f"{path}: has {', '.join(repr(k) for k in list(state)[:4])} but no 'state_dict' "
            "of tensors: not a complete model-zoo checkpoint"
        )
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise SegkdError(f"{path}: entry {bad[0]!r} of the state dict is not a tensor")
    refuse_non_finite(state, path)
    return dict(state), meta
