"""Quantization-aware distillation into segkd's TensorRT Q/DQ graph (issue 24)."""
