"""The ONNX file contract: one self-contained file, an IR/opset the runtimes accept, segkd metadata.

Every ONNX artifact segkd writes goes through `finalize` + `save_onnx`, so each one
is checked, carries its metadata under the "segkd" key and is replaced atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

from core.atomic_io import write_bytes_atomic
from core.errors import SegkdError
from runtime.metadata import METADATA_KEY

# The oldest runtimes segkd supports fix the ceiling, not whatever happens to be installed:
# TensorRT 10.3 (JetPack 6) parses with ONNX 1.16, whose IR version is 10 and whose
# TensorRT parser stops at opset 20; onnxruntime 1.18 (the floor in pyproject.toml) is
# built on ONNX 1.16 too. onnx 1.23's helpers write IR 14. IR 11-14 only add data types
# (4-bit, float8 variants...) that no segkd graph uses.
MAX_IR_VERSION = 10
MAX_OPSET = 20

_PROTOBUF_LIMIT = 2**31 - 1  # a single-file ModelProto cannot exceed 2 GiB

_ELEM_NAMES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.BOOL: "bool",
}


def default_opset(model: onnx.ModelProto) -> int:
    """The opset of the default ("ai.onnx") domain as written in the file."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise SegkdError("ONNX model declares no default-domain opset")


def cap_ir_version(model: onnx.ModelProto, max_ir: int = MAX_IR_VERSION) -> None:
    """Lower the IR version to what onnxruntime accepts.

    Only the version field moves: newer IR versions add data types (float8/float4 and
    the like) that none of our graphs use, and `onnx.checker` re-validates afterwards.
    """
    if model.ir_version > max_ir:
        model.ir_version = max_ir


def prune_opset_imports(model: onnx.ModelProto) -> None:
    """Drop opset imports of domains no node uses.

    onnxruntime's pre-processing declares a dozen vendor domains (com.microsoft.nchwc,
    org.pytorch.aten...); TensorRT's parser needs none of them and they only invite
    "unsupported domain" doubts.
    """
    used = {n.domain or "" for n in model.graph.node}
    for fn in model.functions:
        used.update(n.domain or "" for n in fn.node)
        used.add(fn.domain)
    keep = [imp for imp in model.opset_import if (imp.domain or "") in used | {""}]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def set_metadata(model: onnx.ModelProto, meta: dict[str, Any]) -> None:
    """Write `meta` as JSON under metadata_props["segkd"], replacing an older entry."""
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.helper.set_model_props(
        model,
        {
            **{p.key: p.value for p in kept},
            METADATA_KEY: json.dumps(meta, sort_keys=True),
        },
    )


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    shape = value_info.type.tensor_type.shape
    out: list[int | str] = []
    for d in shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or "?")
    return out


def io_signature(model: onnx.ModelProto) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(inputs, outputs) as [{"name", "shape", "dtype"}]; symbolic dims stay strings."""
    init_names = {i.name for i in model.graph.initializer}

    def describe(vi: onnx.ValueInfoProto) -> dict[str, Any]:
        elem = vi.type.tensor_type.elem_type
        return {
            "name": vi.name,
            "shape": _dims(vi),
            "dtype": _ELEM_NAMES.get(elem, onnx.TensorProto.DataType.Name(elem).lower()),
        }

    inputs = [describe(v) for v in model.graph.input if v.name not in init_names]
    outputs = [describe(v) for v in model.graph.output]
    return inputs, outputs


def finalize(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """Cap the IR version, drop unused opset imports, check the opset and run the full checker."""
    cap_ir_version(model)
    prune_opset_imports(model)
    opset = default_opset(model)
    if opset > MAX_OPSET:
        raise SegkdError(
            f"{where}: opset {opset} is newer than TensorRT 10.3 (JetPack 6) parses "
            f"(at most {MAX_OPSET})"
        )
    if model.ByteSize() > _PROTOBUF_LIMIT:
        raise SegkdError(f"{where}: model is larger than 2 GiB and cannot be a single ONNX file")
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SegkdError(f"{where}: exported ONNX graph is invalid ({first[:200]})") from None
    return model


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    """Serialize `model` into ONE file (no external .onnx.data), via temp file + os.replace."""
    return write_bytes_atomic(path, model.SerializeToString())


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load a model with its external data (the dynamo exporter may have written some)."""
    try:
        return onnx.load(str(path), load_external_data=True)
    except Exception as e:  # protobuf DecodeError and friends
        raise SegkdError(f"cannot read ONNX file {path}: {type(e).__name__}: {e}") from None
