"""ONNX Runtime backend: CPU, CUDA or TensorRT execution providers.

`get_available_providers()` lists CUDA on machines without a GPU (docs/DEPLOY_FACTS.md,
"ONNX Runtime"), so the provider reported is `session.get_providers()[0]`: the one that
really runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import SegkdError
from runtime.backends.base import Runner, TensorInfo

log = logging.getLogger(__name__)

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
DEVICES = ("auto", "cpu", "cuda", "tensorrt")
OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise SegkdError(
            "the onnxruntime backend needs the onnxruntime package (pip install onnxruntime, "
            "or onnxruntime-gpu for CUDA; never both)"
        ) from None
    return onnxruntime


def _split_device(device: str) -> tuple[str, int]:
    """'cuda:1' -> ('cuda', 1); 'cpu' -> ('cpu', 0)."""
    kind, _, index = device.lower().partition(":")
    if kind not in DEVICES:
        raise SegkdError(
            f"--device {device!r}: choose one of {', '.join(DEVICES)} (cuda:N allowed)"
        )
    try:
        return kind, int(index) if index else 0
    except ValueError:
        raise SegkdError(f"--device {device!r}: the part after ':' must be a GPU index") from None


def choose_providers(
    device: str, available: list[str], trt_cache_dir: Path | None = None
) -> list[Any]:
    """Provider list for InferenceSession, most preferred first, always ending in CPU."""
    kind, index = _split_device(device)
    cuda = (CUDA, {"device_id": index})
    trt_opts: dict[str, Any] = {"device_id": index}
    if trt_cache_dir is not None:
        trt_opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(trt_cache_dir))
    if kind == "cpu":
        return [CPU]
    if kind == "auto":  # TensorRT EP builds an engine on first run (minutes): opt-in only
        return [cuda, CPU] if CUDA in available else [CPU]
    wanted = TRT if kind == "tensorrt" else CUDA
    if wanted not in available:
        raise SegkdError(
            f"--device {device}: this onnxruntime has no {wanted} (it offers "
            f"{', '.join(available)}); install onnxruntime-gpu or pick --device cpu"
        )
    return [(TRT, trt_opts), cuda, CPU] if kind == "tensorrt" else [cuda, CPU]


def _load_error(path: Path, e: Exception) -> SegkdError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return SegkdError(f"cannot load ONNX model {path}: {first[:200]}")


def _qdq_fusion_rejected(e: Exception) -> bool:
    """onnxruntime fused fp16 Q/DQ into a QLinear* op that only takes float32 scales."""
    return "QLinear" in str(e) and "float16" in str(e)


def has_fp16_qdq(source: str | bytes) -> bool | None:
    """Whether any Q/DQ node has an fp16 scale; None where the onnx package is missing.

    onnxruntime's CPU QDQ fusions mishandle fp16 scales (opset 19): DQ->Concat->Q becomes
    a QLinearConcat that fails to load, and the fusions that do load gave wrong labels
    (a ModelOpt fp16 Q/DQ file: 86 % pixel agreement fused, 99.4 % unfused;
    docs/notes/trtint8.md). Such graphs (the TensorRT INT8 file) run unfused.
    """
    try:
        import onnx
    except ImportError:
        return None
    try:
        model = (
            onnx.load_model_from_string(source)
            if isinstance(source, bytes)
            else onnx.load(source, load_external_data=False)
        )
    except Exception:
        return None  # onnxruntime's own load reports what is wrong with the file
    fp16 = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    return any(
        n.op_type in ("QuantizeLinear", "DequantizeLinear")
        and len(n.input) > 1
        and n.input[1] in fp16
        for n in model.graph.node
    )


@dataclass
class OrtSession:
    """An ONNX Runtime session and what really runs it (the loader's half)."""

    path: Path
    session: Any
    provider: str  # the first provider of the session: the one that really runs
    device: str
    qdq_fusion: bool  # False when onnxruntime's QDQ fusion had to be switched off

    @property
    def custom_metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)


def _session_options(
    ort: Any,
    graph_optimization: str,
    intra_op_threads: int | None,
    inter_op_threads: int | None,
    allow_spinning: bool,
) -> Any:
    if graph_optimization not in OPT_LEVELS:
        raise SegkdError(
            f"--graph-optimization {graph_optimization!r}: choose one of {', '.join(OPT_LEVELS)}"
        )
    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, OPT_LEVELS[graph_optimization]
    )
    if intra_op_threads is not None:
        opts.intra_op_num_threads = int(intra_op_threads)
    if inter_op_threads is not None:
        opts.inter_op_num_threads = int(inter_op_threads)
    opts.log_severity_level = 3  # errors only; provider fallbacks are reported by us
    if not allow_spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


_NO_QDQ_FUSION = "session.disable_quant_qdq"


def _qdq_fusion_on(opts: Any) -> bool:
    try:
        return opts.get_session_config_entry(_NO_QDQ_FUSION) != "1"
    except RuntimeError:  # never set
        return True


def _disable_qdq_fusion(path: Path, opts: Any) -> None:
    log.info("%s: fp16 Q/DQ graph; running it without onnxruntime's QDQ fusion", path)
    opts.add_session_config_entry(_NO_QDQ_FUSION, "1")


def _create(ort: Any, path: Path, source: str | bytes, opts: Any, providers: list[Any]) -> Any:
    """An InferenceSession; fp16 Q/DQ graphs run without onnxruntime's QDQ fusion."""
    if _qdq_fusion_on(opts) and has_fp16_qdq(source):
        _disable_qdq_fusion(path, opts)
    try:
        return ort.InferenceSession(source, sess_options=opts, providers=providers)
    except Exception as e:
        if not (_qdq_fusion_on(opts) and _qdq_fusion_rejected(e)):  # e.g. no onnx package
            raise
    _disable_qdq_fusion(path, opts)
    return ort.InferenceSession(source, sess_options=opts, providers=providers)


def load_session(
    path: Path | str,
    *,
    device: str = "auto",
    intra_op_threads: int | None = None,
    inter_op_threads: int | None = None,
    graph_optimization: str = "all",
    trt_cache_dir: Path | str | None = None,
    model_bytes: bytes | None = None,
    allow_spinning: bool = True,
) -> OrtSession:
    """`model_bytes`: an in-memory variant of the file at `path` (export verification
    runs the shipped graph with its logits exposed); `path` then names it in messages.
    `allow_spinning=False` lets idle worker threads sleep (not a latency setting)."""
    ort = _import_ort()
    path = Path(path)
    source: str | bytes = model_bytes if model_bytes is not None else str(path)
    opts = _session_options(
        ort, graph_optimization, intra_op_threads, inter_op_threads, allow_spinning
    )
    providers = choose_providers(
        device,
        list(ort.get_available_providers()),
        Path(trt_cache_dir) if trt_cache_dir else None,
    )
    kind, index = _split_device(device)
    try:
        session = _create(ort, path, source, opts, providers)
    except Exception as e:  # ORT raises its own Fail/InvalidProtobuf/... types
        if kind != "auto" or providers == [CPU]:
            raise _load_error(path, e) from None
        # "auto" on a GPU build whose CUDA libraries do not load: the CPU still works.
        log.info("%s: GPU providers failed (%s); retrying on the CPU", path, e)
        providers = [CPU]
        try:
            session = _create(ort, path, source, opts, providers)
        except Exception as e2:
            raise _load_error(path, e2) from None
    provider = session.get_providers()[0]
    requested = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    if provider != requested:
        # Expected for "auto" on a machine without a GPU; a surprise if asked for.
        log.log(
            logging.INFO if kind == "auto" else logging.WARNING,
            "%s: asked for %s but onnxruntime runs it on %s",
            path,
            requested,
            provider,
        )
    where = (
        "CPU" if provider == CPU else f"CUDA:{index} ({provider.removesuffix('ExecutionProvider')})"
    )
    return OrtSession(path, session, provider, where, _qdq_fusion_on(opts))


def _tensor_info(arg: Any) -> TensorInfo:
    # Symbolic dims come back as strings (or None): those accept any size.
    dims = tuple(d if isinstance(d, int) and d > 0 else None for d in (arg.shape or ()))
    return TensorInfo(arg.name, dims, np.dtype(_NP_TYPES.get(arg.type, np.float32)))


def _named_first(
    infos: list[TensorInfo], name: str | None, what: str, path: Path
) -> list[TensorInfo]:
    """`infos` with the one called `name` first (the graph's order where None)."""
    names = [i.name for i in infos]
    if name is None:
        return infos
    if name not in names:
        raise SegkdError(f"{path}: metadata names {what} {name!r}, the graph has {names}")
    return sorted(infos, key=lambda i: i.name != name)


class OnnxRuntimeBackend(Runner):
    name = "onnxruntime"

    def __init__(
        self,
        source: Path | str | OrtSession,
        *,
        precision: str = "fp32",
        output_kind: str = "logits",
        input_name: str | None = None,
        output_name: str | None = None,
        logits_output: str | None = None,
        **load_options: Any,
    ) -> None:
        """source: a loaded session (`load_session`), or a path loaded with `load_options`.

        The names and kinds come from segkd's metadata; `logits_output` names an extra
        output that holds logits (verification's exposed tensor)."""
        loaded = source if isinstance(source, OrtSession) else load_session(source, **load_options)
        self.path, self.session, self.qdq_fusion = loaded.path, loaded.session, loaded.qdq_fusion
        self.provider, self.device, self.precision = loaded.provider, loaded.device, precision
        inputs = _named_first(
            [_tensor_info(i) for i in self.session.get_inputs()], input_name, "input", self.path
        )
        outputs = _named_first(
            [_tensor_info(o) for o in self.session.get_outputs()], output_name, "output", self.path
        )
        if len(inputs[0].shape) != 4:
            raise SegkdError(
                f"{self.path}: input {inputs[0].name!r} is {list(inputs[0].shape)}, "
                "expected N x 3 x H x W"
            )
        self.inputs, self.outputs = tuple(inputs), tuple(outputs)
        self.output_kinds = {outputs[0].name: output_kind}
        if logits_output is not None:
            self.output_kinds[logits_output] = "logits"
        self._input_dtype = inputs[0].dtype

    def infer(
        self, feed: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        batch = self._input_batch(feed)
        if batch.dtype != self._input_dtype:  # fp16-input graphs
            batch = batch.astype(self._input_dtype)
        names = self._wanted(outputs)
        return dict(zip(names, self.session.run(names, {self.input_name: batch}), strict=True))

    def close(self) -> None:
        self.session = None
