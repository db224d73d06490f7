"""fp32 ONNX -> fp16 ONNX for strongly typed TensorRT (and any fp16-capable runtime).

TensorRT 11 takes precision only from the graph, so the fp16 artifact is a graph whose
tensors are float16. Inputs/outputs stay float32 (and uint8/int32 labels), so the same
preprocessing and postprocessing serve every precision.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence

import onnx

from core.errors import SegkdError

# Ops kept in float32 beyond onnxruntime's default block list: none. Measured on a
# trained PSPNet-R18 (24 val images, onnxruntime CPU): keeping Resize, ReduceSum or
# Concat in fp32 changed neither the max logit error (0.0127) nor the label agreement
# (99.97 %); the converter cannot block MatMul here (it emits duplicate Cast names).
DEFAULT_FP32_OPS: tuple[str, ...] = ()


def convert_fp16(
    model: onnx.ModelProto, keep_fp32_ops: Sequence[str] = DEFAULT_FP32_OPS
) -> onnx.ModelProto:
    """Convert float tensors and initializers to float16, keeping graph I/O types."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    src = onnx.ModelProto()
    src.CopyFrom(model)  # the converter rewrites its argument in place
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(keep_fp32_ops))
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            # It warns for every initializer clamped into the fp16 range; the verification
            # afterwards is what decides whether that mattered.
            warnings.simplefilter("ignore")
            out = convert_float_to_float16(
                src, keep_io_types=True, op_block_list=block, disable_shape_infer=False
            )
    except Exception as e:
        raise SegkdError(f"fp16 conversion failed ({type(e).__name__}: {e!s:.200})") from None
    # The converter appends its input Casts at the end of the node list; the ONNX spec
    # (and onnx.checker) wants nodes in topological order.
    OnnxModel(out).topological_sort()
    return out
