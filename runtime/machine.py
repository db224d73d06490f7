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


# arm64 /proc/cpuinfo has no "model name": the core is named by implementer and part
# (Linux arch/arm64/include/asm/cputype.h). The ones a Jetson or an Arm server has.
ARM_PARTS = {
    (0x41, 0xD05): "Arm Cortex-A55",
    (0x41, 0xD08): "Arm Cortex-A72",
    (0x41, 0xD0B): "Arm Cortex-A76",
    (0x41, 0xD0C): "Arm Neoverse-N1",
    (0x41, 0xD40): "Arm Neoverse-V1",
    (0x41, 0xD41): "Arm Cortex-A78",
    (0x41, 0xD42): "Arm Cortex-A78AE",  # Jetson Orin
    (0x41, 0xD49): "Arm Neoverse-N2",
    (0x41, 0xD4F): "Arm Neoverse-V2",  # Grace
    (0x41, 0xD8E): "Arm Neoverse-V3AE",  # Jetson Thor
    (0x4E, 0x004): "NVIDIA Carmel",  # Jetson Xavier
}


def _hex(value: str) -> int | None:
    try:
        return int(value.strip(), 0)
    except ValueError:
        return None


def parse_cpuinfo(text: str) -> tuple[str | None, set[str]]:
    """(model, flags) from /proc/cpuinfo text: x86 'model name' and 'flags'; arm64
    'Features' and the core named from 'CPU implementer' + 'CPU part'."""
    model, flags = None, set()
    implementer = part = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware") and model is None:
            model = value.strip() or None
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key == "cpu implementer" and implementer is None:
            implementer = _hex(value)
        elif key == "cpu part" and part is None:
            part = _hex(value)
    if model is None and implementer is not None and part is not None:
        model = ARM_PARTS.get((implementer, part), f"Arm core {implementer:#x}/{part:#05x}")
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
