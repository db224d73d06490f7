"""Section 1 of the GPU check: what the machine and its Python hold.

GPU, driver, CUDA, cuDNN, torch and the export/runtime stack (ONNX Runtime with its
providers, TensorRT, cuda-python), plus every other module segkd imports and where it
came from, so a result can be traced to the wheels carried to the machine (docs/GPU.md).
"""

from __future__ import annotations

import importlib
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from gpu_check_plan import Plan, first_line, row

from runtime.machine import cpu_info, describe_cpu

# import name -> distribution name, for everything segkd imports beyond torch, onnx,
# onnxruntime and numpy (the list `make gpu-wheels` prepares; opencv must be there).
SEGKD_MODULES = {
    "cv2": "opencv-python-headless",
    "typer": "typer",
    "pydantic": "pydantic",
    "rich": "rich",
    "tqdm": "tqdm",
    "yaml": "pyyaml",
    "PIL": "pillow",
    "onnxscript": "onnxscript",
    "onnx_ir": "onnx-ir",
    "onnxslim": "onnxslim",
    "ml_dtypes": "ml-dtypes",
}


def _module(name: str) -> dict[str, Any]:
    try:
        mod = importlib.import_module(name)
    except Exception as e:  # a broken install raises more than ImportError
        return {"ok": False, "error": first_line(e)}
    version = getattr(mod, "__version__", None) or getattr(mod, "VERSION", None)
    where = getattr(mod, "__file__", None)
    return {"ok": True, "version": str(version), "path": str(Path(where).parent) if where else None}


def _nvidia_smi() -> dict[str, Any]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"error": "nvidia-smi is not on the PATH"}
    query = "name,driver_version,memory.total,clocks.max.sm,power.limit"
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError) as e:
        return {"error": first_line(e)}
    fields = [f.strip() for f in out.splitlines()[0].split(",")] if out else []
    return dict(zip(query.split(","), fields, strict=False))


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[1]
    try:
        return subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return None


def _tensorrt() -> dict[str, Any]:
    from runtime.backends.tensorrt_builder import tensorrt_unavailable_reason

    reason = tensorrt_unavailable_reason()
    if reason is not None:
        return {"available": False, "reason": reason}
    import tensorrt

    return {"available": True, "version": tensorrt.__version__}


def section_env(plan: Plan, out: Path, deadline: float) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "cpu_line": describe_cpu(),
        "segkd_commit": _git_commit(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        # The fp32 baselines below run under these defaults (cuDNN convolutions in TF32).
        "tf32": {
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        },
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "tensorrt": _tensorrt(),
        "cuda_python": _module("cuda.bindings") if plan.device == "cuda" else None,
        "torchvision": _module("torchvision"),
        "modules": {dist: _module(name) for name, dist in SEGKD_MODULES.items()},
    }
    if plan.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: torch.cuda.is_available() is False")
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "count": torch.cuda.device_count(),
        }
        env["nvidia_smi"] = _nvidia_smi()
    missing = [d for d, m in env["modules"].items() if not m["ok"]]
    env["missing_modules"] = missing
    gpu = env.get("gpu")
    trt = env["tensorrt"]
    env["rows"] = [
        row(
            "GPU",
            "ok" if gpu else "n/a",
            f"{gpu['name']}, {gpu['memory_gib']} GiB, CC {gpu['compute_capability']}, "
            f"driver {env['nvidia_smi'].get('driver_version', '?')}"
            if gpu
            else "CPU run (--device cpu)",
        ),
        row("CPU", "ok", env["cpu_line"]),
        row(
            "torch",
            "ok",
            f"{env['torch']} (CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}), Python {env['python']}",
        ),
        row(
            "onnx / onnxruntime",
            "ok",
            f"onnx {env['onnx']}, onnxruntime {env['onnxruntime']}: "
            + ", ".join(env["onnxruntime_providers"]),
        ),
        row(
            "TensorRT",
            "ok" if trt["available"] else "absent",
            trt.get("version") or trt["reason"],
        ),
        row(
            "segkd's other modules",
            "ok" if not missing else "missing",
            "all importable" if not missing else "missing: " + ", ".join(missing),
        ),
    ]
    return env
