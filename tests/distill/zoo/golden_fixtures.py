"""Reading the golden fixtures (tests/distill/zoo/golden/*.npz) and rebuilding their weights.

The fixtures were written by tools/golden/*.py running the upstream code in a throwaway
environment; the weights and the input come from tools/golden/formula.py, loaded here by
path (tools/ is not a package of segkd).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
GOLDEN = Path(__file__).parent / "golden"

_spec = importlib.util.spec_from_file_location("golden_formula", ROOT / "tools/golden/formula.py")
assert _spec is not None and _spec.loader is not None
formula = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(formula)


def read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(info, arrays) of one fixture."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != "info"}
        info = json.loads(str(z["info"]))
    return info, arrays


def state_dict(info: dict[str, Any]) -> dict[str, torch.Tensor]:
    return formula.state_dict([(k, tuple(s)) for k, s in info["layout"]])


def image(info: dict[str, Any]) -> torch.Tensor:
    return formula.image(*info["input"])


def rel_err(got: torch.Tensor | np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (want is float16: ~1e-3 is its own rounding)."""
    g = torch.as_tensor(np.asarray(got, dtype=np.float32))
    w = torch.as_tensor(want.astype(np.float32))
    assert g.shape == w.shape, f"shape {tuple(g.shape)} vs the fixture's {tuple(w.shape)}"
    return float((g - w).abs().max() / w.abs().max())
