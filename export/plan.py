"""The export plan: what the steps of `segkd export` share.

export_checkpoint (export/api.py) fills a plan with the checked options, then runs its
steps in order; each step is a function of the plan alone, reads what the earlier steps
left on it and adds its part (the loaded model, the staged files, the reference labels,
the engines, the sections of export.json). Files go to `staging` until the last step
publishes the whole folder (export/publish.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the plan only carries these; the steps import what they use
    import numpy as np
    import onnx
    import torch

    from core.labels import LabelSpec
    from core.preprocess import PreprocessSpec
    from core.schema.tensorrt import TrtOptions
    from core.schema.tolerances import Tolerances
    from export.calibration import Prepared, RawSample, SampledSplit
    from export.manifest import Manifest

# What each precision's portable ONNX file is called.
FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx"}


@dataclass
class Staged:
    """One ONNX artifact in the staging folder, and its export.json entry."""

    key: str  # "fp32", "fp16", "int8", "int8-cpu"
    file: str
    precision: str
    variant: str
    proto: onnx.ModelProto
    ship: bool
    entry: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the staged file, once written: what verification runs


@dataclass
class ExportPlan:
    # The options, checked (export.api.check_options) before any work starts.
    ckpt_path: Path
    out: Path
    precisions: list[str]
    variants: list[str]  # INT8 recipes; empty when no INT8 is wanted
    input_size: str | tuple[int, int] | None
    calib_data: str | None
    calib_images: int
    verify_images: int
    sample_seed: int
    output: str
    label_dtype: str
    input_dtype: str
    label_stride: int | None
    dynamic: bool
    opset: int
    simplify: bool
    int8_method: str
    tol: Tolerances
    require_trt: bool
    build_engines: bool
    trt: TrtOptions
    say: Callable[[str], None]
    # The checkpoint (export.api.load_checkpoint).
    model: torch.nn.Module | None = None
    ckpt: dict[str, Any] = field(default_factory=dict)
    labels: LabelSpec | None = None
    pre: PreprocessSpec | None = None  # at the export size, uint8 input applied
    size: tuple[int, int] = (0, 0)
    qat: dict[str, Any] | None = None  # a QAT checkpoint's scales; None: calibrate (PTQ)
    data_spec: str = ""
    # What export.json and every artifact's metadata say (export.api.describe).
    meta_base: dict[str, Any] = field(default_factory=dict)
    manifest: Manifest | None = None
    # The held-out verification images (export.api.load_verification_images).
    val_split: SampledSplit | None = None
    val_raw: list[RawSample] = field(default_factory=list)
    val: list[Prepared] = field(default_factory=list)
    with_gt: bool = False  # the data has the model's classes: mIoU vs ground truth
    # The staged work (export/steps.py, export/publish.py).
    target: Path = Path()  # the resolved --out: the folder that is replaced
    staging: Path = Path()
    staged: dict[str, Staged] = field(default_factory=dict)
    ref_labels: list[np.ndarray] = field(default_factory=list)
    engines: list[dict[str, Any]] = field(default_factory=list)
    written: dict[str, Any] = field(default_factory=dict)  # export.json as published
