"""ONNX -> TensorRT engine, written for TensorRT 10.x (JetPack 6/7) and 11.x alike.

It sits beside its runner (runtime/backends/tensorrt.py) on the torch-free side, so a
Jetson builds engines from an export folder (runtime/engine_folder.py, `segkd build`)
with TensorRT, numpy and cuda-python only; `segkd export` uses it on a GPU box too.

Precision comes from the ONNX graph (fp16 tensors, explicit Q/DQ), so the network is
built strongly typed wherever the flag exists. Everything version-specific is
feature-detected with hasattr: TensorRT 11 removed BuilderFlag.FP16/INT8, calibrators
and EXPLICIT_BATCH, and none of those is touched unless present. TensorRT older than
10.3 is refused (8.6 on JetPack 6.0 makes an implicit-batch network the ONNX parser
rejects). Facts and sources: docs/DEPLOY_FACTS.md.

This module imports tensorrt lazily; the cache key, the version check and the workspace
rule work without it. No machine this was written on had TensorRT: the build path is
unrun (its tests drive it through a stand-in for the tensorrt module).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.atomic_io import sha256_of, write_bytes_atomic
from core.errors import SegkdError
from core.schema.tensorrt import TrtOptions
from runtime.backends.tensorrt_io import engine_io, manifest_entry
from runtime.gpu import GpuIdentity, gpu_identity, gpu_unavailable_reason, import_cudart
from runtime.jetson_release import l4t_release

log = logging.getLogger(__name__)

# The oldest TensorRT segkd builds with, and what to install where it finds an older one.
MIN_TENSORRT = (10, 3)
_UPGRADE = (
    "install JetPack 6.1 or newer on a Jetson Orin (TensorRT 10.3), or TensorRT >= 10.3 "
    "on a desktop (pip install tensorrt)"
)


def tensorrt_version_tuple(version: str) -> tuple[int, int]:
    parts = str(version).split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise SegkdError(f"cannot read the TensorRT version {version!r}") from None


def check_tensorrt_version(version: str) -> None:
    """SegkdError (one line naming what to install) for a TensorRT segkd cannot build with."""
    if tensorrt_version_tuple(version) < MIN_TENSORRT:
        raise SegkdError(f"TensorRT {version} is not supported (10.3 or newer needed): {_UPGRADE}")


def tensorrt_unavailable_reason() -> str | None:
    """None when engines can be built here, else one line saying why not."""
    try:
        import tensorrt
    except ImportError:
        return "the tensorrt Python package is not installed"
    except Exception as e:  # a broken install (missing libnvinfer) raises other errors
        return f"tensorrt failed to import ({type(e).__name__}: {e!s:.120})"
    try:
        check_tensorrt_version(str(tensorrt.__version__))
    except SegkdError as e:
        return str(e)
    # Engines are verified through the runtime's TensorRT backend, which needs cuda-python.
    try:
        import_cudart()
    except SegkdError:
        return "cuda-python (which the tensorrt backend uses for GPU memory) is not installed"
    return gpu_unavailable_reason()


def engine_cache_key(
    *,
    onnx_sha256: str,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    precision: str,
    input_shape: Any,
    l4t: str | None = None,
    build_options: dict[str, Any] | None = None,
) -> str:
    """A stable key for a built engine; any change to its inputs gives a new key.

    An engine is only valid for the exact TensorRT version and GPU model it was built
    for, and the ONNX hash covers the weights, the graph and the precision recipe; on a
    Jetson the L4T release too (a JetPack update changes the driver and CUDA).
    """
    payload = {
        "onnx_sha256": onnx_sha256,
        "tensorrt": tensorrt_version,
        "gpu": gpu_name,
        "cc": compute_capability,
        "l4t": l4t,
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


@dataclass(frozen=True)
class EngineBuild:
    path: Path
    tensorrt_version: str
    gpu: dict[str, Any]
    l4t: str | None
    cache_key: str
    from_cache: bool
    build_seconds: float
    strongly_typed: bool
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    profile: list[list[int]] | None
    workspace_bytes: int
    dla_core: int | None

    def manifest_facts(self) -> dict[str, Any]:
        """What export.json records of a built engine, whoever built it (export or build)."""
        return {
            "sha256": sha256_of(self.path),
            "size_bytes": self.path.stat().st_size,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "input_name": self.inputs[0]["name"],
            "output_name": self.outputs[0]["name"],
            "tensorrt_version": self.tensorrt_version,
            "gpu": self.gpu["name"],
            "compute_capability": self.gpu["compute_capability"],
            "l4t": self.l4t,
            "dla_core": self.dla_core,
            "strongly_typed": self.strongly_typed,
            "profile": self.profile,
            "workspace_bytes": self.workspace_bytes,
            "cache_key": self.cache_key,
            "from_cache": self.from_cache,
            "build_seconds": round(self.build_seconds, 2),
        }


def dla_in_tensorrt(version: str) -> bool:
    """TensorRT 10.7 was the last 10.x with DLA; 11.0-11.3 had none; 11.4.1 has it on AGX
    Orin with JetPack 7.2.2+ (TensorRT 11.4.1 docs, "Working with DLA")."""
    major, minor = tensorrt_version_tuple(version)
    return (major == 10 and minor <= 7) or (major, minor) == (11, 4)


def check_dla(
    dla_core: int | None, dla_cores: int, precision: str, gpu_name: str, version: str = "10.3"
) -> None:
    """Refuse a DLA build this module, this TensorRT or this file cannot make
    (docs/DEPLOY_FACTS.md, "DLA (Jetson)")."""
    if dla_core is None:
        return
    if not dla_in_tensorrt(version):
        raise SegkdError(
            f"--dla-core {dla_core}: TensorRT {version} has no DLA (10.8-10.16 and 11.0-11.3 "
            "dropped it): use JetPack 6.1/6.2 (TensorRT 10.3) or TensorRT 11.4 on JetPack "
            "7.2.2+ (AGX Orin), or drop --dla-core"
        )
    if dla_cores == 0:
        raise SegkdError(
            f"--dla-core {dla_core}: {gpu_name} has no DLA (Orin Nano has none; AGX Orin and "
            "Orin NX have two): drop --dla-core to build for the GPU"
        )
    if dla_core >= dla_cores:
        raise SegkdError(f"--dla-core {dla_core}: this module has DLA cores 0..{dla_cores - 1}")
    if precision == "fp32":
        raise SegkdError(
            f"--dla-core {dla_core}: the DLA runs fp16 or int8 only; build model.fp16.onnx "
            "or model.int8.onnx (--precision fp16,int8)"
        )


def _configure_dla(trt: Any, config: Any, dla_core: int) -> None:
    """Layers on DLA core `dla_core`, the rest falling back to the GPU layer by layer."""
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = int(dla_core)
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)


@dataclass(frozen=True)
class _Plan:
    """What one build is made of and keyed on (any change gives another cached engine)."""

    version: str
    precision: str
    gpu: GpuIdentity
    l4t: str | None
    profile: tuple[tuple[int, ...], ...] | None  # (min, opt, max); None = fixed shapes
    strongly_typed: bool
    workspace: int
    cache_key: str
    cache_dir: Path


def _plan(
    trt: Any,
    builder: Any,
    *,
    precision: str,
    onnx_sha256: str,
    input_size: tuple[int, int],
    dynamic: bool,
    opts: TrtOptions,
    layout: str,
) -> _Plan:
    version = str(trt.__version__)
    gpu, l4t = gpu_identity(), l4t_release()
    dla_cores = int(getattr(builder, "num_DLA_cores", 0))
    check_dla(opts.dla_core, dla_cores, precision, gpu.name, version)
    if opts.dla_core is not None and dynamic:
        log.info("DLA build: fixing the input at %dx%d, batch 1", *input_size)
        dynamic = False
    profile = profile_shapes(input_size, opts, layout) if dynamic else None
    strongly_typed = not (opts.weak_typing and hasattr(trt.BuilderFlag, "FP16"))
    workspace = opts.workspace_bytes(gpu.free_bytes)
    build_opts = {
        "strongly_typed": strongly_typed,
        "optimization_level": opts.optimization_level,
        "workspace_bytes": workspace,
        "dla_core": opts.dla_core,
    }
    key = engine_cache_key(
        onnx_sha256=onnx_sha256,
        tensorrt_version=version,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        precision=precision,
        input_shape=[list(s) for s in profile] if profile else list(_shape(1, input_size, layout)),
        l4t=l4t,
        build_options=build_opts,
    )
    return _Plan(
        version, precision, gpu, l4t, profile, strongly_typed, workspace, key,
        opts.resolved_cache_dir(),
    )  # fmt: skip


def _parse(trt: Any, builder: Any, logger: Any, onnx_path: Path, plan: _Plan) -> Any:
    """The network of `onnx_path`, strongly typed where the plan says so."""
    flags = 0
    flag_enum = trt.NetworkDefinitionCreationFlag
    if plan.strongly_typed and hasattr(flag_enum, "STRONGLY_TYPED"):
        flags |= 1 << int(flag_enum.STRONGLY_TYPED)  # ignored (always on) in 11.x
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise SegkdError(
            f"{onnx_path.name}: TensorRT {plan.version} cannot parse it: {'; '.join(errors)[:300]}"
        )
    return network


def _configure(trt: Any, builder: Any, network: Any, plan: _Plan, opts: TrtOptions) -> Any:
    """Builder config: workspace, optimisation level, precision flags, DLA, profile."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace)
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = int(opts.optimization_level)
    if not plan.strongly_typed:  # TensorRT 10.x weak typing; these flags do not exist in 11.x
        if plan.precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if plan.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # explicit Q/DQ: no calibrator
    if opts.dla_core is not None:
        _configure_dla(trt, config, opts.dla_core)
    if plan.profile is not None:
        opt_profile = builder.create_optimization_profile()
        opt_profile.set_shape(network.get_input(0).name, *plan.profile)
        config.add_optimization_profile(opt_profile)
    return config


def _serialize(
    trt: Any, builder: Any, logger: Any, onnx_path: Path, plan: _Plan, opts: TrtOptions
) -> bytes:
    """Build the engine's plan bytes, reading and updating the version's timing cache."""
    network = _parse(trt, builder, logger, onnx_path, plan)
    config = _configure(trt, builder, network, plan, opts)
    # A timing cache is only valid for the TensorRT version that wrote it.
    timing_path = plan.cache_dir / f"timing-trt{plan.version}.cache"
    timing = None
    if opts.timing_cache and hasattr(config, "create_timing_cache"):
        previous = timing_path.read_bytes() if timing_path.is_file() else b""
        timing = config.create_timing_cache(previous)
        config.set_timing_cache(timing, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise SegkdError(
            f"{onnx_path.name}: TensorRT {plan.version} built no engine for {plan.precision} "
            "(re-run with --trt-verbose; if the log mentions memory, raise --trt-workspace)"
        )
    if timing is not None:
        write_bytes_atomic(timing_path, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


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
    A DLA build (opts.dla_core) fixes the shapes: the DLA has no dynamic shapes, and a
    dynamic profile would push its layers back to the GPU.
    """
    import tensorrt as trt

    check_tensorrt_version(str(trt.__version__))
    logger = trt.Logger(trt.Logger.VERBOSE if opts.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    plan = _plan(
        trt, builder, precision=precision, onnx_sha256=onnx_sha256, input_size=input_size,
        dynamic=dynamic, opts=opts, layout=layout,
    )  # fmt: skip
    cached = plan.cache_dir / f"{plan.cache_key}.engine"
    started = time.perf_counter()
    from_cache = opts.use_cache and cached.is_file()
    if from_cache:
        write_bytes_atomic(engine_path, cached.read_bytes())
    else:
        data = _serialize(trt, builder, logger, onnx_path, plan, opts)
        write_bytes_atomic(engine_path, data)
        if opts.use_cache:
            write_bytes_atomic(cached, data)
    seconds = time.perf_counter() - started
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise SegkdError(f"{engine_path}: TensorRT {plan.version} cannot load the engine it built")
    inputs, outputs = engine_io(trt, engine, engine_path)
    return EngineBuild(
        path=engine_path,
        tensorrt_version=plan.version,
        gpu={"name": plan.gpu.name, "compute_capability": plan.gpu.compute_capability},
        l4t=plan.l4t,
        cache_key=plan.cache_key,
        from_cache=from_cache,
        build_seconds=seconds,
        strongly_typed=plan.strongly_typed,
        inputs=[manifest_entry(i) for i in inputs],
        outputs=[manifest_entry(o) for o in outputs],
        profile=[list(s) for s in plan.profile] if plan.profile else None,
        workspace_bytes=plan.workspace,
        dla_core=opts.dla_core,
    )
