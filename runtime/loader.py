"""`open_segmenter`: any model artifact (.pt, .onnx, .engine, export folder) -> `Segmenter`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.errors import SegkdError
from runtime.metadata import (
    PRECISIONS,
    ModelMeta,
    parse_metadata_json,
    read_export_json,
    sidecar_meta,
    verify_sha256,
)
from runtime.segmenter import Segmenter

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
CHECKPOINT_SUFFIXES = (".pt", ".pth")
# Which keyword options each backend understands (None values are dropped first).
BACKEND_OPTIONS = {
    "onnxruntime": {"intra_op_threads", "inter_op_threads", "graph_optimization", "trt_cache_dir"},
    "tensorrt": {"cuda_graph"},
    "torch": {"channels_last", "cuda_graph"},
}
# Which artifact of an export folder to run: the fastest one for the runtime and device,
# among those the folder holds (every listed artifact passed its export gate). Keys are
# "precision/variant"; the TensorRT-bound INT8 file is "int8/tensorrt", the CPU one
# "int8/cpu". On ONNX Runtime's CPU provider the CPU INT8 variant is the fastest and the
# TensorRT-bound Q/DQ file slower than fp32 (1634 vs 1311 ms at 512x1024 on a 2-core AVX2
# CPU; CPU INT8 783 ms), fp16 slowest (its Casts); on CUDA fp16 is the fast float path;
# TensorRT (engines, or ONNX Runtime's TensorRT provider) runs the symmetric Q/DQ file.
# A precision asked for narrows the order to that precision's entries, in the same order.
PICK_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("int8/cpu", "fp32", "int8/tensorrt", "fp16"),
    "cuda": ("fp16", "fp32", "int8/tensorrt", "int8/cpu"),
    "tensorrt": ("int8/tensorrt", "fp16", "fp32", "int8/cpu"),
    "engine": ("int8/tensorrt", "fp16", "fp32"),
}

TorchModelLoader = Callable[[Path, str], tuple[Any, dict[str, Any]]]


def open_segmenter(
    path: str | Path,
    backend: str = "auto",
    device: str = "auto",
    precision: str | None = None,
    torch_model_loader: TorchModelLoader | None = None,
    *,
    input_size: tuple[int, int] | None = None,
    verify: bool = True,
    **opts: Any,
) -> Segmenter:
    """Open a model for inference.

    path: a `.pt` checkpoint (needs `torch_model_loader`, e.g. distill.checkpoint.load_model),
      an `.onnx` file, a TensorRT `.engine`, or an export folder with export.json.
    backend: auto | onnxruntime | tensorrt | torch. device: auto | cpu | cuda[:N] | tensorrt
      (the last = ONNX Runtime's TensorRT provider). precision picks an artifact in a folder.
    input_size: (H, W) to run a dynamic-shape model at another size than its metadata says.
    verify: check the sha256 recorded in export.json before loading.
    opts: backend options (intra_op_threads, inter_op_threads, graph_optimization,
      trt_cache_dir for onnxruntime; cuda_graph for tensorrt; channels_last, cuda_graph for torch).
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise SegkdError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if precision is not None and precision not in PRECISIONS:
        raise SegkdError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if not path.exists():
        raise SegkdError(f"model not found: {path}")
    if path.is_dir():
        folder, path = path, _pick_from_folder(path, backend, precision, device)
        if backend == "auto" and path.suffix.lower() in ENGINE_SUFFIXES:
            try:
                return _open_engine(path, device, input_size, verify, _opts("tensorrt", opts))
            except SegkdError as e:  # e.g. TensorRT present but no GPU, or a foreign engine
                log.warning("%s cannot run here (%s); falling back to ONNX Runtime", path, e)
                path = _pick_from_folder(folder, "onnxruntime", precision, device)
        if path.suffix.lower() == ".onnx" and backend != "tensorrt":
            _check_backend(path, backend, "onnxruntime")
            seg = _open_onnx(path, device, input_size, verify, _opts("onnxruntime", opts))
            # The provider list can promise CUDA where there is no GPU (docs/DEPLOY_FACTS.md,
            # "ONNX Runtime"): pick again for the provider that really runs, and reopen if
            # that is another file.
            ran = _provider_kind(seg.provider)
            if ran != _onnx_device_kind(device):
                better = _pick_from_folder(folder, backend, precision, device, kind=ran)
                if better != path:
                    seg.close()
                    log.info("%s: runs on %s; using %s instead", folder, seg.provider, better.name)
                    seg = _open_onnx(better, device, input_size, verify, _opts("onnxruntime", opts))
            return seg
    suffix = path.suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        chosen = _check_backend(path, backend, "torch")
        return _open_torch(
            path, device, precision, torch_model_loader, input_size, _opts(chosen, opts)
        )
    if suffix == ".onnx":
        if backend == "tensorrt":
            raise SegkdError(
                f"{path}: the tensorrt backend runs built engines; build one with `segkd export "
                "--precision fp16`, or run this file with --backend onnxruntime --device tensorrt"
            )
        chosen = _check_backend(path, backend, "onnxruntime")
        return _open_onnx(path, device, input_size, verify, _opts(chosen, opts))
    if suffix in ENGINE_SUFFIXES:
        chosen = _check_backend(path, backend, "tensorrt")
        return _open_engine(path, device, input_size, verify, _opts(chosen, opts))
    raise SegkdError(
        f"{path}: unknown model type {suffix or '(no suffix)'!r}; expected a .pt checkpoint, "
        "an .onnx file, a TensorRT .engine or an export folder"
    )


def _check_backend(path: Path, backend: str, needed: str) -> str:
    if backend not in ("auto", needed):
        raise SegkdError(
            f"{path}: a {path.suffix} file runs on the {needed} backend, not {backend}"
        )
    return needed


def _opts(backend: str, opts: dict[str, Any]) -> dict[str, Any]:
    known = set().union(*BACKEND_OPTIONS.values())
    out = {}
    for key, value in opts.items():
        if key not in known:
            raise SegkdError(f"unknown model option {key!r} (known: {', '.join(sorted(known))})")
        if value is None:
            continue
        if key in BACKEND_OPTIONS[backend]:
            out[key] = value
        else:
            log.debug("option %s does not apply to the %s backend; ignored", key, backend)
    return out


# -- export folder ---------------------------------------------------------------------
def _onnx_device_kind(device: str) -> str:
    """cpu | cuda | tensorrt: where ONNX Runtime will run for --device (before it runs)."""
    kind = device.lower().partition(":")[0]
    if kind in ("cpu", "cuda", "tensorrt"):
        return kind
    try:  # auto: CUDA when this onnxruntime offers it (checked again after opening)
        import onnxruntime

        return "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"
    except ImportError:
        return "cpu"


def _provider_kind(provider: str) -> str:
    return {"TensorrtExecutionProvider": "tensorrt", "CUDAExecutionProvider": "cuda"}.get(
        provider, "cpu"
    )


def _artifact_key(a: dict[str, Any]) -> str:
    precision = a.get("precision", "fp32")
    if precision != "int8":
        return str(precision)
    return "int8/cpu" if a.get("variant") == "cpu" else "int8/tensorrt"


def _pick_from_folder(
    folder: Path,
    backend: str,
    precision: str | None,
    device: str = "auto",
    kind: str | None = None,
) -> Path:
    """The artifact in an export folder that fits the backend and precision asked for:
    the first of PICK_ORDER for the runtime and device that the folder holds.

    kind: the ONNX Runtime device kind (cpu, cuda, tensorrt) to pick for; None = from
    `device`.
    """
    export = read_export_json(folder)
    arts = [
        a for a in export["artifacts"] if isinstance(a, dict) and isinstance(a.get("file"), str)
    ]
    onnx = [a for a in arts if a["file"].lower().endswith(".onnx")]
    engines = [a for a in arts if a["file"].lower().endswith(ENGINE_SUFFIXES)]
    if backend == "torch":
        raise SegkdError(
            f"{folder}: an export folder holds no checkpoint; pass the .pt file for --backend torch"
        )

    def pick(cands: list[dict[str, Any]], order: tuple[str, ...]) -> dict[str, Any] | None:
        wanted = [k for k in order if precision is None or k.split("/")[0] == precision]
        for key in wanted:
            for a in cands:
                if _artifact_key(a) == key:
                    return a
        return None

    from runtime.backends.tensorrt import tensorrt_available  # cheap: imports lazily itself

    art = None
    if backend == "tensorrt" or (backend == "auto" and engines and tensorrt_available()):
        art = pick(engines, PICK_ORDER["engine"])
        if art is None and backend == "tensorrt":
            have = ", ".join(f"{a['file']} ({a.get('precision')})" for a in engines) or "none"
            raise SegkdError(
                f"{folder}: no TensorRT engine{' for ' + precision if precision else ''} "
                f"(engines: {have}); build one on this machine with `segkd build {folder}`"
            )
    if art is None:
        art = pick(onnx, PICK_ORDER[kind or _onnx_device_kind(device)])
    if art is None:
        have = ", ".join(f"{a['file']} ({a.get('precision')})" for a in arts) or "none"
        raise SegkdError(
            f"{folder}: no artifact for backend {backend}"
            f"{' and precision ' + precision if precision else ''} (it has: {have})"
        )
    path = folder / art["file"]
    if not path.is_file():
        raise SegkdError(f"{folder / 'export.json'} lists {art['file']}, but {path} is missing")
    log.info("%s: using %s", folder, art["file"])
    return path


def folder_artifacts(folder: Path, engines: bool | None = None) -> list[Path]:
    """Every model file an export folder lists, in its order (for `segkd bench --all`).

    engines: include TensorRT engines; None = where TensorRT is installed.
    """
    from runtime.backends.tensorrt import tensorrt_available

    export = read_export_json(folder)
    with_engines = tensorrt_available() if engines is None else engines
    out = []
    for a in export["artifacts"]:
        name = a.get("file") if isinstance(a, dict) else None
        if not isinstance(name, str):
            continue
        if name.lower().endswith(ENGINE_SUFFIXES) and not with_engines:
            continue
        path = folder / name
        if not path.is_file():
            raise SegkdError(f"{folder / 'export.json'} lists {name}, but {path} is missing")
        out.append(path)
    return out


# -- one loader per artifact type ------------------------------------------------------
def _open_onnx(
    path: Path, device: str, input_size: tuple[int, int] | None, verify: bool, opts: dict[str, Any]
) -> Segmenter:
    from runtime.backends.onnxruntime import OnnxRuntimeBackend, load_session

    manifest = sidecar_meta(path)
    if verify and manifest is not None:
        verify_sha256(path, manifest)
    session = load_session(path, device=device, **opts)
    embedded = session.custom_metadata.get("segkd")
    meta = (
        parse_metadata_json(embedded, f"{path} (metadata_props['segkd'])") if embedded else manifest
    )
    if meta is None:
        raise SegkdError(
            f"{path}: no segkd metadata (no 'segkd' key in its metadata_props, no {path.name}.json "
            "or export.json beside it); export it with `segkd export`"
        )
    if embedded and manifest is not None:
        for key in ("precision", "output"):
            if getattr(meta, key) != getattr(manifest, key):
                log.warning(
                    "%s: embedded %s %r disagrees with export.json's %r; using the embedded one",
                    path,
                    key,
                    getattr(meta, key),
                    getattr(manifest, key),
                )
    backend = OnnxRuntimeBackend(
        session,
        precision=meta.precision,
        output_kind=meta.output,
        input_name=meta.input_name,
        output_name=meta.output_name,
    )
    return Segmenter(backend, meta, path, input_size)


def _open_engine(
    path: Path, device: str, input_size: tuple[int, int] | None, verify: bool, opts: dict[str, Any]
) -> Segmenter:
    from runtime.backends.tensorrt import TensorRTBackend, import_tensorrt

    meta = sidecar_meta(path)
    if meta is None:
        raise SegkdError(
            f"{path}: no metadata for this engine (needs export.json listing it, or "
            f"{path.name}.json beside it)"
        )
    import_tensorrt()  # a clear error before reading a large plan on a machine without it
    if verify:
        verify_sha256(path, meta)
    built = {k: meta.extra.get(k) for k in ("tensorrt_version", "gpu", "compute_capability")}
    backend = TensorRTBackend(
        path,
        device=device,
        precision=meta.precision,
        output_kind=meta.output,
        input_name=meta.input_name,
        output_name=meta.output_name,
        built_with=built,
        **opts,
    )
    return Segmenter(backend, meta, path, input_size)


def _open_torch(
    path: Path,
    device: str,
    precision: str | None,
    loader: TorchModelLoader | None,
    input_size: tuple[int, int] | None,
    opts: dict[str, Any],
) -> Segmenter:
    if loader is None:
        raise SegkdError(
            f"{path}: running a .pt checkpoint needs segkd's training package (torch + distill); "
            "install segkd[train] and use the segkd command, or run an exported .onnx/.engine"
        )
    from runtime.backends.torch import TorchBackend, resolve_device

    dev = resolve_device(device)
    model, ckpt = loader(path, dev)
    if not isinstance(ckpt, dict):
        raise SegkdError(f"{path}: the model loader returned no checkpoint dict")
    # test_mode: a zoo teacher's (mmseg test_cfg), for `segkd eval --mode auto`
    d = {k: ckpt[k] for k in ("arch", "labels", "preprocess", "test_mode") if k in ckpt}
    meta = ModelMeta.from_dict({**d, "output": "logits", "precision": precision or "fp32"}, path)
    backend = TorchBackend(model, device=dev, precision=precision or "fp32", **opts)
    if backend.precision != meta.precision:
        meta = ModelMeta.from_dict({**meta.to_dict(), "precision": backend.precision}, path)
    return Segmenter(backend, meta, path, input_size)
