"""Options of an export (`segkd export`, the pipeline's export section); export.api's
export_checkpoint takes the same names. The agreement gates are in tolerances.py, the
TensorRT builder's settings in tensorrt.py."""

from __future__ import annotations

from core.options import Option, OptionSet

EXPORT = OptionSet([
    Option("precisions", str, ("fp32", "fp16", "int8"), "comma list of fp32, fp16, int8"),
    Option("input_size", str | None, None, "HxW [the checkpoint's export size]"),
    # The pipeline calibrates on its own dataset (its top-level `data`).
    Option("calib_data", str | None, None,
           "dataset SPEC for INT8 calibration and verification [training data]", config=False),
    # 32/16 (the pipeline used 16/8 on its own): at the synthetic 128x256 size the extra
    # images cost seconds, and a 16-image calibration is thin for real data.
    Option("calib_images", int, 32, "calibration images (train split)", min=1),
    Option("verify_images", int, 16, "held-out images (val split) for parity/agreement", min=1),
    Option("sample_seed", int, 0, "seed of the calibration/verification image draw", min=0,
           config=False),
    Option("output", str, "labels",
           "labels (argmax in the graph), labels-lowres (argmax at 1/8, resized on the host) "
           "or logits"),
    Option("label_dtype", str, "uint8", "uint8 or int32 label map"),
    Option("input_dtype", str, "float32",
           "float32 (host normalises) or uint8 (NHWC BGR pixels, in-graph)"),
    Option("label_stride", int | None, None,
           "labels-lowres: argmax at 1/N of the input (2, 4) [output stride]", config=False),
    Option("dynamic", bool, False, "dynamic batch/H/W instead of the static input size"),
    Option("opset", int, 17, "ONNX opset, checked in the file (the TensorRT INT8 file: >= 19)"),
    Option("simplify", bool, True, "simplify the graph with onnxslim"),
    Option("int8_method", str, "minmax", "calibration: minmax, entropy or percentile"),
    Option("int8_variants", str, ("tensorrt", "cpu"),
           "tensorrt (symmetric Q/DQ), cpu (ORT-CPU-friendly)"),
    Option("require_trt", bool, False,
           "fail instead of skipping engines when TensorRT is absent"),
])  # fmt: skip

# `segkd export --precision`: one flag names one or more precisions.
EXPORT_CLI_NAMES = {"precisions": "precision"}
