"""Which CUDA GPU this is, through cuda-python: the one way segkd names a GPU.

An engine is tied to the GPU model (name, compute capability) that built it, so the
builder keys its cache on these, and the workspace default comes from the free memory.
No torch: this runs on a Jetson with JetPack's cuda-python (NVIDIA's own TensorRT
samples use cuda-python since 10.14, docs/DEPLOY_FACTS.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from core.errors import SegkdError


@dataclass(frozen=True)
class GpuIdentity:
    index: int
    name: str
    compute_capability: str  # "8.7" on every Orin, "9.0" on an H100
    total_bytes: int
    free_bytes: int
    integrated: bool  # Jetson: the GPU shares the system memory

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def import_cudart() -> Any:
    """cuda-python's runtime module: `cuda.bindings.runtime` (12.6+), else `cuda.cudart`."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise SegkdError(
                "the tensorrt backend needs cuda-python for GPU memory and streams "
                "(pip install cuda-python matching your CUDA major version)"
            ) from None
    return cudart


class CudaError(RuntimeError):
    """A cuda-python call returned an error."""


def cuda_call(rt: Any, result: Any) -> Any:
    """The values of a cuda-python call, which returns (error, *values); CudaError if failed."""
    err, *values = result if isinstance(result, tuple) else (result,)
    code = int(getattr(err, "value", err))
    if code != 0:
        name = rt.cudaGetErrorName(err)[1]
        name = name.decode() if isinstance(name, bytes) else str(name)
        raise CudaError(f"CUDA error {code} ({name})")
    return values[0] if len(values) == 1 else (values or None)


def _ok(rt: Any, result: Any, what: str) -> Any:
    try:
        return cuda_call(rt, result)
    except CudaError as e:
        raise SegkdError(f"no usable CUDA GPU: {what} failed ({e})") from None


def gpu_identity(index: int = 0) -> GpuIdentity:
    """Name, compute capability and memory of CUDA device `index` (SegkdError when none)."""
    rt = import_cudart()
    count = _ok(rt, rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if not 0 <= index < int(count):
        raise SegkdError(
            f"no CUDA GPU {index}: {int(count)} visible; TensorRT engines are built on the "
            "GPU that runs them"
        )
    _ok(rt, rt.cudaSetDevice(index), "cudaSetDevice")
    props = _ok(rt, rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    free, total = _ok(rt, rt.cudaMemGetInfo(), "cudaMemGetInfo")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return GpuIdentity(
        index=index,
        name=name.rstrip("\x00").strip(),
        compute_capability=f"{int(props.major)}.{int(props.minor)}",
        total_bytes=int(total),
        free_bytes=int(free),
        integrated=bool(getattr(props, "integrated", 0)),
    )


def gpu_unavailable_reason(index: int = 0) -> str | None:
    """None when a CUDA GPU is usable through cuda-python, else one line saying why not."""
    try:
        gpu_identity(index)
    except SegkdError as e:
        return str(e)
    return None
