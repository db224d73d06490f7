"""The TensorRT builder's options (`segkd export`'s --trt-*/--opt-level/..., `segkd build`)
and TrtOptions, the object export and runtime.backends.tensorrt_builder pass around."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import SegkdError
from core.numbers import finite
from core.options import Option, OptionSet

WORKSPACE_CAP_GIB = 4.0  # the default's ceiling; never more than half the free memory

TENSORRT = OptionSet([
    Option("workspace_gib", float | None, None,
           "TensorRT builder workspace (GiB) [half the free memory, <= 4]"),
    Option("optimization_level", int, 3, "TensorRT builder optimisation level", min=0, max=5),
    Option("cache_dir", Path | None, None,
           "TensorRT engine + timing cache folder [~/.cache/segkd/tensorrt]"),
    Option("use_cache", bool, True, "reuse an identical engine built before"),
    Option("timing_cache", bool, True, "keep the builder's timing cache", cli=False),
    Option("weak_typing", bool, False,
           "TensorRT 10.x: let the builder choose fp16/int8 per layer"),
    Option("max_batch", int, 1, "TensorRT profile's largest batch (dynamic exports)", min=1),
    # Dynamic exports' optimisation profile; None: half the export size / the export size.
    Option("profile_min_size", tuple | None, None, "smallest profile HxW", cli=False),
    Option("profile_max_size", tuple | None, None, "largest profile HxW", cli=False),
    Option("verbose", bool, False, "TensorRT builder log at verbose level"),
    Option("dla_core", int | None, None, "Jetson DLA core, GPU fallback (not on Orin Nano)",
           min=0),
])  # fmt: skip

# Each command's spelling and share: `segkd export` builds after exporting (--trt-*),
# `segkd build` builds from a copied export folder on the target.
EXPORT_TRT = TENSORRT.only(
    "workspace_gib", "optimization_level", "cache_dir", "weak_typing", "max_batch", "verbose"
).renamed({"workspace_gib": "trt_workspace", "optimization_level": "opt_level",
           "cache_dir": "engine_cache", "max_batch": "trt_max_batch", "verbose": "trt_verbose"})  # fmt: skip
BUILD_TRT = TENSORRT.only(
    "dla_core", "workspace_gib", "cache_dir", "use_cache", "optimization_level", "verbose"
).renamed({"workspace_gib": "workspace", "optimization_level": "opt_level",
           "cache_dir": "engine_cache", "use_cache": "cache"})  # fmt: skip

_D = TENSORRT.defaults()


@dataclass(frozen=True)
class TrtOptions:
    workspace_gib: float | None = _D["workspace_gib"]  # None: half the free memory, <= 4 GiB
    optimization_level: int = _D["optimization_level"]  # higher: longer tactic search
    cache_dir: Path | None = _D["cache_dir"]  # None: ~/.cache/segkd/tensorrt
    use_cache: bool = _D["use_cache"]
    timing_cache: bool = _D["timing_cache"]
    weak_typing: bool = _D["weak_typing"]  # TensorRT 10.x only
    max_batch: int = _D["max_batch"]
    profile_min_size: tuple[int, int] | None = _D["profile_min_size"]
    profile_max_size: tuple[int, int] | None = _D["profile_max_size"]
    verbose: bool = _D["verbose"]
    dla_core: int | None = _D["dla_core"]  # None: the GPU

    def __post_init__(self) -> None:
        if self.workspace_gib is not None:
            finite("--trt-workspace", self.workspace_gib, low=0.0, low_open=True)
        if self.dla_core is not None and (isinstance(self.dla_core, bool) or self.dla_core < 0):
            raise SegkdError(f"--dla-core must be an integer >= 0, got {self.dla_core!r}")

    def workspace_bytes(self, free_bytes: int) -> int:
        """The given limit, else min(4 GiB, half the free device memory): an 8 GB Orin Nano
        shares its memory with the CPU, and a 4 GiB default left the camera and the host
        pipeline short."""
        if self.workspace_gib is not None:
            return int(self.workspace_gib * 2**30)
        return int(min(WORKSPACE_CAP_GIB * 2**30, free_bytes // 2))

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        return base / "segkd" / "tensorrt"
