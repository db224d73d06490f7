"""One check for every float option: nan and inf are refused where they make no sense.

nan compares false with everything, so `x < 0` lets it through and a gate set to nan
silently passes (or fails) everything; inf turns into nan one step later.
"""

from __future__ import annotations

import math
from typing import Any

from core.errors import SegkdError


def finite(
    option: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """`value` as a float if it is a finite number in range, else SegkdError naming `option`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SegkdError(f"{option}: expected a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise SegkdError(f"{option}: must be a finite number, got {value!r}")
    if low is not None and (v <= low if low_open else v < low):
        raise SegkdError(f"{option}: must be {'>' if low_open else '>='} {low:g}, got {value!r}")
    if high is not None and v > high:
        raise SegkdError(f"{option}: must be <= {high:g}, got {value!r}")
    return v


def positive_int(option: str, value: Any) -> int:
    """`value` if it is an int >= 1 (True is not a count), else SegkdError naming `option`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SegkdError(f"{option} must be a positive integer, got {value!r}")
    return value
