"""Training options: one dataclass, defaults per dataset, every field overridable."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from core.errors import SegkdError
from core.schema.train import AMP_DTYPES, CLASS_WEIGHT_SETS, SUPERVISED_LOSSES, TRAIN
from distill.data.spec import dataset_defaults, parse_dataset_spec

_D = TRAIN.defaults()


@dataclass
class TrainConfig:
    """A training run's settings; None: the dataset's default (distill/data/spec.py).
    Defaults, command-line help and the reasons for them: core/schema/train.py."""

    data: str = _D["data"]
    model: str = _D["model"]
    out: str = _D["out"]
    iters: int | None = _D["iters"]
    batch_size: int | None = _D["batch_size"]
    crop_size: tuple[int, int] | None = _D["crop_size"]
    scale_range: tuple[float, float] | None = _D["scale_range"]  # random rescale before cropping
    export_size: tuple[int, int] | None = _D["export_size"]  # written into the checkpoint's spec
    lr: float | None = _D["lr"]
    momentum: float = _D["momentum"]
    weight_decay: float | None = _D["weight_decay"]
    poly_power: float = _D["poly_power"]
    warmup_iters: int = _D["warmup_iters"]
    aux_weight: float = _D["aux_weight"]
    # Supervised loss (distill.losses.recipe): "ce" or the DDRNet/PIDNet authors' "ohem";
    # the four after it only apply to "ohem".
    loss: str = _D["loss"]
    ohem_threshold: float = _D["ohem_threshold"]
    ohem_min_kept: int = _D["ohem_min_kept"]
    class_weights: str | None = _D["class_weights"]
    ohem_align: bool = _D["ohem_align"]
    eval_interval: int | None = _D["eval_interval"]  # None: 4 evaluations per run
    val_images: int | None = _D["val_images"]  # spread evenly over the split; None: all
    log_interval: int = _D["log_interval"]
    num_workers: int | None = _D["num_workers"]  # None: from the CPUs this process may use
    seed: int = _D["seed"]
    device: str = _D["device"]  # auto | cpu | cuda | cuda:N
    amp: bool = _D["amp"]  # only takes effect on CUDA
    amp_dtype: str = _D["amp_dtype"]
    max_skips: int = _D["max_skips"]
    dist_timeout: float = _D["dist_timeout"]
    channels_last: bool = _D["channels_last"]  # only takes effect on CUDA
    sync_bn: bool = _D["sync_bn"]  # only under torchrun with more than one process
    deep_stem: bool = _D["deep_stem"]
    backbone_weights: str | None = _D["backbone_weights"]
    resume: bool = _D["resume"]
    role: str = _D["role"]  # written into the checkpoint: teacher / student / model
    extra: dict[str, Any] = field(default_factory=dict)  # stage-specific settings (distill)

    def resolved(self, defaults: dict[str, Any] | None = None) -> TrainConfig:
        """Fill every None field from the dataset's defaults (by default those of its own
        `data` spec) and validate."""
        if defaults is None:
            defaults = dataset_defaults(parse_dataset_spec(self.data))
        cfg = TrainConfig(**asdict(self))
        for f in fields(cfg):
            if getattr(cfg, f.name) is None and f.name in defaults:
                setattr(cfg, f.name, defaults[f.name])
        if cfg.export_size is None:
            cfg.export_size = defaults.get("eval_size") or cfg.crop_size
        cfg.crop_size = tuple(cfg.crop_size)  # type: ignore[assignment]
        cfg.scale_range = tuple(cfg.scale_range)  # type: ignore[assignment]
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
        if self.amp_dtype not in AMP_DTYPES:
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
