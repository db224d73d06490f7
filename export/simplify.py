"""Graph simplification with onnxslim (maintained successor of onnx-simplifier).

Simplification only folds constants and fuses patterns; the caller verifies the
simplified graph against PyTorch exactly like the unsimplified one, so a bad rewrite
is caught instead of shipped.
"""

from __future__ import annotations

import contextlib
import io
import logging

import onnx


def simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """(simplified model, None) or (the input model, why simplification was skipped)."""
    try:
        import onnxslim
    except ImportError:
        return model, "onnxslim is not installed"
    # onnxslim prints a summary table; keep the export output to our own summary.
    logging.getLogger("onnxslim").setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            slim = onnxslim.slim(model)
    except Exception as e:  # a simplifier bug must not block the export
        return model, f"onnxslim failed ({type(e).__name__}: {str(e)[:160]})"
    if not isinstance(slim, onnx.ModelProto):
        return model, "onnxslim returned no model"
    return slim, None
