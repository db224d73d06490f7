"""Training options: one dataclass, defaults per dataset, every field overridable."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from core.errors import SegkdError

# Names only (this module is read without torch); distill.losses.recipe builds them.
SUPERVISED_LOSSES = ("ce", "ohem")
CLASS_WEIGHT_SETS = ("cityscapes",)


@dataclass
class TrainConfig:
    data: str = "synthetic"
    model: str = "pspnet_r18"
    out: str = "runs/train"
    iters: int | None = None  # None: the dataset's default
    batch_size: int | None = None
    crop_size: tuple[int, int] | None = None
    scale_range: tuple[float, float] | None = None  # random rescale before cropping
    export_size: tuple[int, int] | None = None  # the input size written into the checkpoint's spec
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    poly_power: float = 0.9
    warmup_iters: int = 0
    aux_weight: float = 0.4
    # Supervised loss (distill.losses.recipe): "ce" (segkd's plain cross-entropy) or "ohem"
    # (the DDRNet/PIDNet authors' OHEM recipe, docs/notes/authors.md). The four below only
    # apply to "ohem": its threshold, pixels always kept per process batch, a named set of
    # class weights ("cityscapes" or None) and the upsampling's align_corners.
    loss: str = "ce"
    ohem_threshold: float = 0.9
    ohem_min_kept: int = 131072
    class_weights: str | None = None
    ohem_align: bool = False
    eval_interval: int | None = None  # None: 4 evaluations per run
    val_images: int | None = None  # val images (spread evenly) every evaluation scores; None: all
    log_interval: int = 10
    num_workers: int | None = None  # None: from the CPUs this process may use (loader.py)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # only takes effect on CUDA
    amp_dtype: str = "float16"  # float16 (with GradScaler) | bfloat16 (GPUs that have it)
    max_skips: int = 20  # fp16 AMP: consecutive non-finite steps GradScaler may skip
    # Seconds a rank waits for the others in one collective before it stops with an error
    # naming itself (torch's defaults: 10 min NCCL, 30 min gloo): long enough for rank 0's
    # checkpoint writes and readout fit while the others wait, short enough that a dead
    # rank does not hold 8 GPUs for half an hour.
    dist_timeout: float = 900.0
    channels_last: bool = True  # only takes effect on CUDA
    sync_bn: bool = False  # only under torchrun with more than one process
    deep_stem: bool = False
    backbone_weights: str | None = None
    resume: bool = False
    role: str = "model"  # written into the checkpoint: teacher / student / model
    extra: dict[str, Any] = field(default_factory=dict)  # stage-specific settings (distill)

    def resolved(self, defaults: dict[str, Any]) -> TrainConfig:
        """Fill every None field from the dataset's defaults and validate."""
        cfg = TrainConfig(**asdict(self))
        for f in fields(cfg):
            if getattr(cfg, f.name) is None and f.name in defaults:
                setattr(cfg, f.name, defaults[f.name])
        if cfg.export_size is None:
            cfg.export_size = defaults.get("eval_size") or cfg.crop_size
        cfg.crop_size = tuple(cfg.crop_size)  # type: ignore[assignment]
        cfg.scale_range = tuple(cfg.scale_range or (0.5, 2.0))  # type: ignore[assignment]
        cfg.export_size = tuple(cfg.export_size)  # type: ignore[assignment]
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def positive(name: str) -> None:
            v = getattr(self, name)
            if v is not None and not (v > 0 and math.isfinite(v)):  # nan/inf would train to nan
                raise SegkdError(f"--{name.replace('_', '-')} must be positive, got {v}")

        for name in ("iters", "batch_size", "lr", "log_interval", "eval_interval", "val_images"):
            positive(name)
        if not 0 <= self.seed < 2**32:  # numpy's generators take no negative seed
            raise SegkdError(f"--seed must be in 0..{2**32 - 1}, got {self.seed}")
        for name in ("momentum", "poly_power", "aux_weight"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise SegkdError(f"{name} must be a finite number >= 0, got {v}")
        if self.amp_dtype not in ("float16", "bfloat16"):
            raise SegkdError(f"--amp-dtype must be float16 or bfloat16, got {self.amp_dtype!r}")
        positive("max_skips")
        positive("dist_timeout")
        if self.loss not in SUPERVISED_LOSSES:
            raise SegkdError(
                f"--loss: unknown value {self.loss!r}; choose one of {', '.join(SUPERVISED_LOSSES)}"
            )
        if self.class_weights is not None and self.class_weights not in CLASS_WEIGHT_SETS:
            raise SegkdError(
                f"--class-weights: unknown set {self.class_weights!r}; known: "
                f"{', '.join(CLASS_WEIGHT_SETS)}"
            )
        if not 0 < self.ohem_threshold <= 1:
            raise SegkdError(f"--ohem-threshold must be in (0, 1], got {self.ohem_threshold}")
        if self.ohem_min_kept < 1:
            raise SegkdError(f"--ohem-min-kept must be >= 1, got {self.ohem_min_kept}")
        if self.loss == "ce" and (self.class_weights is not None or self.ohem_align):
            raise SegkdError("--class-weights and --ohem-align apply to --loss ohem only")
        if self.num_workers is not None and self.num_workers < 0:
            raise SegkdError(f"--num-workers must be >= 0, got {self.num_workers}")
        if self.weight_decay is not None and not (
            self.weight_decay >= 0 and math.isfinite(self.weight_decay)
        ):
            raise SegkdError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if self.batch_size is not None and self.batch_size < 2:
            # BatchNorm after the 1x1 pyramid bin sees one value per channel at batch 1.
            raise SegkdError("--batch-size must be at least 2 (BatchNorm in the pooling bins)")
        if self.scale_range is not None and not (0 < self.scale_range[0] <= self.scale_range[1]):
            raise SegkdError(f"--scale-range must be 0 < min <= max, got {self.scale_range}")
        for name in ("crop_size", "export_size"):
            v = getattr(self, name)
            if v is not None and (len(v) != 2 or min(v) < 32):
                raise SegkdError(f"--{name.replace('_', '-')} must be HxW with both >= 32, got {v}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("crop_size", "export_size", "scale_range"):
            if d[k] is not None:
                d[k] = list(d[k])
        return d
