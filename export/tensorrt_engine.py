"""ONNX -> TensorRT engine, written for TensorRT 10.x (JetPack 6) and 11.x alike.

Precision comes from the ONNX graph (fp16 tensors, explicit Q/DQ), so the network is
built strongly typed wherever the flag exists. Everything version-specific is
feature-detected with hasattr: TensorRT 11 removed BuilderFlag.FP16/INT8, calibrators
and EXPLICIT_BATCH, and none of those is touched unless present (DEPLOY_FACTS.md).

This module imports tensorrt lazily; the cache key and the availability check work
without it. Built engines are verified through runtime.backends.tensorrt, the backend
that serves them. No machine this was written on had TensorRT: the build path is unrun.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import SegkdError
from runtime.numbers import finite


@dataclass(frozen=True)
class TrtOptions:
    workspace_gib: float = 4.0  # builder scratch memory limit
    optimization_level: int = 3  # 0..5; higher searches longer for faster tactics
    cache_dir: Path | None = None  # engine + timing cache folder; None = ~/.cache/segkd/tensorrt
    use_cache: bool = True
    timing_cache: bool = True
    weak_typing: bool = False  # TensorRT 10.x only: let the builder pick fp16/int8 per layer
    max_batch: int = 1  # dynamic exports: optimisation profile upper batch
    profile_min_size: tuple[int, int] | None = None  # dynamic exports; None = half the size
    profile_max_size: tuple[int, int] | None = None  # dynamic exports; None = the export size
    verbose: bool = False

    def __post_init__(self) -> None:
        finite("--trt-workspace", self.workspace_gib, low=0.0, low_open=True)

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        return base / "segkd" / "tensorrt"


def tensorrt_unavailable_reason() -> str | None:
    """None when engines can be built here, else one line saying why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt Python package is not installed"
    except Exception as e:  # a broken install (missing libnvinfer) raises other errors
        return f"tensorrt failed to import ({type(e).__name__}: {e!s:.120})"
    # Engines are verified through the runtime's TensorRT backend, which needs cuda-python.
    from runtime.backends.tensorrt import import_cudart

    try:
        import_cudart()
    except SegkdError:
        return "cuda-python (which the tensorrt backend uses for GPU memory) is not installed"
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU is visible"
    except ImportError:
        return "torch is needed to identify the GPU"
    return None


def gpu_identity() -> dict[str, Any]:
    """Name and compute capability of the current CUDA device (engines are tied to both)."""
    import torch

    if not torch.cuda.is_available():
        raise SegkdError(
            "no CUDA GPU is visible: TensorRT engines are built on the GPU that runs them"
        )
    idx = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(idx)
    return {"name": torch.cuda.get_device_name(idx), "compute_capability": f"{major}.{minor}"}


def engine_cache_key(
    *,
    onnx_sha256: str,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    precision: str,
    input_shape: Any,
    build_options: dict[str, Any] | None = None,
) -> str:
    """A stable key for a built engine; any change to its inputs gives a new key.

    An engine is only valid for the exact TensorRT version and GPU model it was built
    for, and the ONNX hash covers the weights, the graph and the precision recipe.
    """
    payload = {
        "onnx_sha256": onnx_sha256,
        "tensorrt": tensorrt_version,
        "gpu": gpu_name,
        "cc": compute_capability,
        "precision": precision,
        "input_shape": input_shape,
        "build": build_options or {},
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _shape(batch: int, hw: tuple[int, int], layout: str) -> tuple[int, ...]:
    return (batch, *hw, 3) if layout == "NHWC" else (batch, 3, *hw)


def profile_shapes(
    input_size: tuple[int, int], opts: TrtOptions, layout: str = "NCHW"
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) input shapes (1x3xHxW, or 1xHxWx3 for a uint8 NHWC input) for a
    dynamic network's optimisation profile."""
    h, w = input_size
    min_hw = opts.profile_min_size or (max(32, h // 2), max(32, w // 2))
    max_hw = opts.profile_max_size or (h, w)
    if not (min_hw[0] <= h <= max_hw[0] and min_hw[1] <= w <= max_hw[1]):
        raise SegkdError(
            f"TensorRT profile: the export size {h}x{w} must lie between the minimum "
            f"{min_hw[0]}x{min_hw[1]} and maximum {max_hw[0]}x{max_hw[1]}"
        )
    if opts.max_batch < 1:
        raise SegkdError(f"--trt-max-batch must be >= 1, got {opts.max_batch}")
    return (
        _shape(1, min_hw, layout),
        _shape(1, (h, w), layout),
        _shape(opts.max_batch, max_hw, layout),
    )


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class EngineBuild:
    path: Path
    tensorrt_version: str
    gpu: dict[str, Any]
    cache_key: str
    from_cache: bool
    build_seconds: float
    strongly_typed: bool
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    profile: list[list[int]] | None


def _io_tensors(trt: Any, engine: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    ins, outs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        entry = {
            "name": name,
            "shape": [int(d) if d >= 0 else "dynamic" for d in engine.get_tensor_shape(name)],
            "dtype": np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name,
        }
        (ins if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outs).append(entry)
    return ins, outs


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    precision: str,
    onnx_sha256: str,
    input_size: tuple[int, int],
    dynamic: bool,
    opts: TrtOptions,
    layout: str = "NCHW",
) -> EngineBuild:
    """Build (or reuse from the cache) the engine for `onnx_path` and write it to `engine_path`.

    layout: the ONNX input's layout (NHWC for a uint8-pixel input, whose Cast TensorRT
    10+ runs on the GPU: uint8 is a valid network I/O type there).
    """
    import tensorrt as trt

    gpu = gpu_identity()
    version = str(trt.__version__)
    profile = profile_shapes(input_size, opts, layout) if dynamic else None
    flag_enum = trt.NetworkDefinitionCreationFlag
    strongly_typed = not (opts.weak_typing and hasattr(trt.BuilderFlag, "FP16"))
    build_opts = {
        "strongly_typed": strongly_typed,
        "optimization_level": opts.optimization_level,
        "workspace_gib": opts.workspace_gib,
    }
    key = engine_cache_key(
        onnx_sha256=onnx_sha256,
        tensorrt_version=version,
        gpu_name=gpu["name"],
        compute_capability=gpu["compute_capability"],
        precision=precision,
        input_shape=[list(s) for s in profile] if profile else list(_shape(1, input_size, layout)),
        build_options=build_opts,
    )
    cache_dir = opts.resolved_cache_dir()
    cached = cache_dir / f"{key}.engine"
    logger = trt.Logger(trt.Logger.VERBOSE if opts.verbose else trt.Logger.WARNING)
    started = time.perf_counter()
    from_cache = opts.use_cache and cached.is_file()
    if from_cache:
        shutil.copyfile(cached, engine_path)
    else:
        builder = trt.Builder(logger)
        flags = 0
        if strongly_typed and hasattr(flag_enum, "STRONGLY_TYPED"):
            flags |= 1 << int(flag_enum.STRONGLY_TYPED)  # ignored (always on) in 11.x
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise SegkdError(
                f"{onnx_path.name}: TensorRT {version} cannot parse it: {'; '.join(errors)[:300]}"
            )
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gib * 2**30))
        if hasattr(config, "builder_optimization_level"):
            config.builder_optimization_level = int(opts.optimization_level)
        if not strongly_typed:  # TensorRT 10.x weak typing; these flags do not exist in 11.x
            if precision in ("fp16", "int8"):
                config.set_flag(trt.BuilderFlag.FP16)
            if precision == "int8":
                config.set_flag(trt.BuilderFlag.INT8)  # explicit Q/DQ: no calibrator
        if profile is not None:
            opt_profile = builder.create_optimization_profile()
            opt_profile.set_shape(network.get_input(0).name, *profile)
            config.add_optimization_profile(opt_profile)
        # A timing cache is only valid for the TensorRT version that wrote it.
        timing_path = cache_dir / f"timing-trt{version}.cache"
        timing = None
        if opts.timing_cache and hasattr(config, "create_timing_cache"):
            previous = timing_path.read_bytes() if timing_path.is_file() else b""
            timing = config.create_timing_cache(previous)
            config.set_timing_cache(timing, ignore_mismatch=False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise SegkdError(
                f"{onnx_path.name}: TensorRT {version} built no engine for {precision} "
                "(re-run with --trt-verbose; if the log mentions memory, raise --trt-workspace)"
            )
        data = bytes(serialized)
        _atomic_write(engine_path, data)
        if timing is not None:
            _atomic_write(timing_path, bytes(config.get_timing_cache().serialize()))
        if opts.use_cache:
            _atomic_write(cached, data)
    seconds = time.perf_counter() - started
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise SegkdError(f"{engine_path}: TensorRT {version} cannot load the engine it built")
    inputs, outputs = _io_tensors(trt, engine)
    return EngineBuild(
        path=engine_path,
        tensorrt_version=version,
        gpu=gpu,
        cache_key=key,
        from_cache=from_cache,
        build_seconds=seconds,
        strongly_typed=strongly_typed,
        inputs=inputs,
        outputs=outputs,
        profile=[list(s) for s in profile] if profile else None,
    )
