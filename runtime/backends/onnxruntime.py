"""ONNX Runtime backend: CPU, CUDA or TensorRT execution providers.

`get_available_providers()` lists CUDA on machines without a GPU (docs/DEPLOY_FACTS.md,
"ONNX Runtime"), so the provider reported is `session.get_providers()[0]`: the one that
really runs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import SegkdError

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


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(
        self,
        path: Path | str,
        *,
        device: str = "auto",
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        graph_optimization: str = "all",
        trt_cache_dir: Path | str | None = None,
        model_bytes: bytes | None = None,
        allow_spinning: bool = True,
    ) -> None:
        """`model_bytes`: an in-memory variant of the file at `path` (export verification
        runs the shipped graph with its logits exposed); `path` then names it in messages.
        `allow_spinning=False` lets idle worker threads sleep (not a latency setting)."""
        ort = _import_ort()
        self.path = Path(path)
        source: str | bytes = model_bytes if model_bytes is not None else str(self.path)
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
        providers = choose_providers(
            device,
            list(ort.get_available_providers()),
            Path(trt_cache_dir) if trt_cache_dir else None,
        )
        kind, index = _split_device(device)
        self.qdq_fusion = True  # False when onnxruntime's QDQ fusion had to be switched off
        try:
            self.session = self._session(ort, source, opts, providers)
        except Exception as e:  # ORT raises its own Fail/InvalidProtobuf/... types
            if kind != "auto" or providers == [CPU]:
                raise _load_error(self.path, e) from None
            # "auto" on a GPU build whose CUDA libraries do not load: the CPU still works.
            log.info("%s: GPU providers failed (%s); retrying on the CPU", self.path, e)
            providers = [CPU]
            try:
                self.session = self._session(ort, source, opts, providers)
            except Exception as e2:
                raise _load_error(self.path, e2) from None

        self.provider = self.session.get_providers()[0]
        requested = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        if self.provider != requested:
            # Expected for "auto" on a machine without a GPU; a surprise if asked for.
            log.log(
                logging.INFO if kind == "auto" else logging.WARNING,
                "%s: asked for %s but onnxruntime runs it on %s",
                self.path,
                requested,
                self.provider,
            )
        self.device = (
            "CPU"
            if self.provider == CPU
            else f"CUDA:{index} ({self.provider.removesuffix('ExecutionProvider')})"
        )
        self.custom_metadata: dict[str, str] = dict(
            self.session.get_modelmeta().custom_metadata_map
        )
        self.adopt()

    def _session(self, ort: Any, source: str | bytes, opts: Any, providers: list[Any]) -> Any:
        if self.qdq_fusion and has_fp16_qdq(source):
            self._disable_qdq_fusion(opts)
        try:
            return ort.InferenceSession(source, sess_options=opts, providers=providers)
        except Exception as e:
            if not (self.qdq_fusion and _qdq_fusion_rejected(e)):  # e.g. no onnx package
                raise
        self._disable_qdq_fusion(opts)
        return ort.InferenceSession(source, sess_options=opts, providers=providers)

    def _disable_qdq_fusion(self, opts: Any) -> None:
        log.info("%s: fp16 Q/DQ graph; running it without onnxruntime's QDQ fusion", self.path)
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
        self.qdq_fusion = False

    def adopt(
        self,
        precision: str = "fp32",
        output_kind: str = "logits",
        input_name: str | None = None,
        output_name: str | None = None,
    ) -> None:
        """Take what the metadata says (read from this very session) about the graph."""
        self.precision = precision
        self.output_kind = output_kind
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        names_in, names_out = [i.name for i in inputs], [o.name for o in outputs]
        for name, names, what in (
            (input_name, names_in, "input"),
            (output_name, names_out, "output"),
        ):
            if name is not None and name not in names:
                raise SegkdError(
                    f"{self.path}: metadata names {what} {name!r}, the graph has {names}"
                )
        self.input_name = input_name or names_in[0]
        self.output_name = output_name or names_out[0]
        inp = inputs[names_in.index(self.input_name)]
        if len(inp.shape) != 4:
            raise SegkdError(
                f"{self.path}: input {inp.name!r} is {inp.shape}, expected N x 3 x H x W"
            )
        # Symbolic dims come back as strings (or None): those accept any size.
        dims = tuple(d if isinstance(d, int) and d > 0 else None for d in inp.shape)
        self.input_shape = (dims[0], dims[1], dims[2], dims[3])
        self.input_dtype = np.dtype(_NP_TYPES.get(inp.type, np.float32))

    def run(self, batch: np.ndarray) -> np.ndarray:
        if batch.dtype != self.input_dtype:  # fp16-input graphs
            batch = batch.astype(self.input_dtype)
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def run_outputs(self, batch: np.ndarray, names: list[str]) -> list[np.ndarray]:
        """Several named outputs of one run (verification reads labels and logits)."""
        if batch.dtype != self.input_dtype:
            batch = batch.astype(self.input_dtype)
        return self.session.run(names, {self.input_name: batch})

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
