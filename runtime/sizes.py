"""Parsing of HxW size strings given on the command line or in configs."""

from __future__ import annotations

import re

from core.errors import SegkdError

_SIZE = re.compile(r"^\s*(\d+)\s*[xX,]\s*(\d+)\s*$")


def parse_size(text: str, option: str = "--input-size", minimum: int = 1) -> tuple[int, int]:
    """'512x1024' -> (512, 1024); also accepts '512,1024' and a single '512' for a square."""
    try:  # int() refuses '²' (a digit, not a decimal) and numbers of over 4300 digits
        if isinstance(text, (tuple, list)) and len(text) == 2:
            h, w = int(text[0]), int(text[1])
        else:
            s = str(text).strip()
            m = _SIZE.match(s)
            if m:
                h, w = int(m.group(1)), int(m.group(2))
            elif s.isdecimal():
                h = w = int(s)
            else:
                raise ValueError(s)
    except (TypeError, ValueError):
        raise SegkdError(f"{option}: expected HxW such as 512x1024, got {text!r}") from None
    if h < minimum or w < minimum:
        raise SegkdError(f"{option}: both sides must be >= {minimum}, got {h}x{w}")
    if h > 16384 or w > 16384:
        raise SegkdError(f"{option}: {h}x{w} is larger than 16384 on a side")
    return h, w
