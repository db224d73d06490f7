"""What CPU a figure was measured on: model, cores and the instruction sets that move it.

INT8 speed and even INT8 labels depend on the ISA (VNNI or not), so every timing and
every verification records these flags; compare figures as ratios within one run.
Torch-free and Python 3.10-safe: it runs on a Jetson too.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path
from typing import Any

# x86: the SIMD levels and the int8 dot-product extensions onnxruntime and oneDNN pick
# kernels by; Arm: NEON, the int8 dot product and the int8 matrix multiply.
RELEVANT_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
)


def _cpuinfo_text() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def parse_cpuinfo(text: str) -> tuple[str | None, set[str]]:
    """(model name, flags) from /proc/cpuinfo text (x86 'flags', Arm 'Features')."""
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware") and model is None:
            model = value.strip() or None
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


@lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """{"model", "arch", "cores", "flags", "int8_dot"} of this machine's CPU."""
    model, flags = parse_cpuinfo(_cpuinfo_text())
    present = [f for f in RELEVANT_FLAGS if f in flags]
    int8_dot = any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp"))
    return {
        "model": model or platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "flags": present,
        "int8_dot": int8_dot,
    }


def describe_cpu() -> str:
    """One line for tables: 'AMD EPYC, x86_64, 2 cores, avx2 avx512f avx512_vnni'."""
    c = cpu_info()
    flags = " ".join(c["flags"]) or "no SIMD flags read"
    return f"{c['model']}, {c['arch']}, {c['cores']} cores, {flags}"
