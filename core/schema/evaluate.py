"""Options of `segkd eval` (and the pipeline's eval section: split, max_images, max_drop)."""

from __future__ import annotations

from pathlib import Path

from core.options import Option, OptionSet
from core.schema.runtime import RUNTIME

EVAL = OptionSet([
    Option("data", str, "synthetic", "dataset SPEC", config=False),
    Option("split", str, "val", "dataset split"),
    Option("reference", str | None, None,
           "a second model scored on the same images (e.g. the .pt)", config=False),
    Option("max_drop", float | None, None,
           "fail (exit 3) if mIoU drops more than PTS points below --reference"),
    Option("max_images", int | None, None, "score only the first N images", min=1),
    *(RUNTIME[n] for n in ("backend", "device", "precision")),
    Option("save_predictions", Path | None, None,
           "write label PNGs (dataset format) and overlays here", config=False),
    Option("convention", str, "auto",
           "logits: upsample logits bilinearly, then argmax (Cityscapes/mmseg); labels: "
           "argmax, then resize labels (deployment); auto: logits where the model has them",
           config=False),
    Option("json_out", Path | None, None, "write the results as JSON", flag="--json",
           config=False),
    Option("mode", str, "auto",
           "whole images, or slide: mmseg's sliding window (averaged logits); auto: "
           "slide where a zoo teacher's config tests that way, else whole", config=False),
    Option("crop", str | None, None, "slide window HxW (default: the config's)", config=False),
    Option("stride", str | None, None, "slide step HxW (default: the config's)", config=False),
])  # fmt: skip
