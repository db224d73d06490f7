"""Pipeline configuration: built-in defaults < config file (YAML or TOML) < --set overrides.

Every option of every stage has a key here, so one file describes a whole run; the
command line overrides any of them with `--set section.key=value`.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import yaml

from distill.distillation import DistillConfig
from runtime.errors import SegkdError


def _training(model: str, iters: int) -> dict[str, Any]:
    """Every `segkd train` option a pipeline stage can set (None: the dataset's default)."""
    return {
        "model": model,
        "iters": iters,
        "batch_size": 4,
        "crop_size": "64x128",
        "scale_range": None,
        "export_size": None,
        "lr": 0.01,
        "weight_decay": None,
        "eval_interval": None,
        "val_images": 20,
        "deep_stem": False,
        "backbone_weights": None,
        "amp": True,
        "sync_bn": False,
    }


# The small synthetic default: the whole pipeline in about 10 minutes on a 2-core CPU.
# Its teacher is a PSPNet-R18 trained 3x longer than the student: trained from scratch for
# the few hundred iterations such a CPU allows, a PSPNet-R101 is far weaker than an R18
# (measured 12.5 vs 22.7 val mIoU at equal settings, docs/BENCHMARKS.md). The Cityscapes
# configs use the paper's PSPNet-R101 teacher.
DEFAULTS: dict[str, Any] = {
    "data": "synthetic:size=128x256",
    "seed": 0,
    "device": "auto",
    "num_workers": 1,
    "teacher": {
        "checkpoint": None,  # an existing teacher .pt; when None the pipeline trains one
        **_training("pspnet_r18", 600),
        "readout_iters": 100,
    },
    "student": _training("pspnet_r18", 200),
    "baseline": True,  # also train the student alone, to report what distillation adds
    # The library's defaults (chosen from the synthetic ablation: docs/METHOD.md says why),
    # every key but ignore_index, which follows the dataset.
    "distill": {k: v for k, v in DistillConfig().to_dict().items() if k != "ignore_index"},
    "export": {
        "precisions": ["fp32", "fp16", "int8"],
        "input_size": None,  # None: the size recorded in the student checkpoint
        "output": "labels",
        "label_dtype": "uint8",
        "input_dtype": "float32",  # uint8: NHWC pixels, normalised in the graph
        "opset": 17,
        "dynamic": False,
        "simplify": True,
        "calib_images": 16,
        "verify_images": 8,
        "int8_method": "minmax",
        "int8_variants": ["tensorrt", "cpu"],
        "require_trt": False,
    },
    "eval": {"split": "val", "max_images": 40, "max_drop": None},
    "bench": {"iters": 20, "warmup": 3, "threads": None},
    "report": {"examples": 3},
}


def _merge(base: dict[str, Any], override: dict[str, Any], where: str) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key not in base:
            raise SegkdError(f"{where}: unknown option {key!r}; valid: {', '.join(sorted(base))}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise SegkdError(f"{where}: {key!r} must be a section (a mapping)")
            out[key] = _merge(base[key], value, f"{where}:{key}")
        elif isinstance(value, dict):  # `--set teacher.iters.x=5` must not make iters a section
            raise SegkdError(f"{where}: {key!r} is a value, not a section; give it one value")
        else:
            out[key] = value
    return out


# Options whose default is None: what they take when set (the rest follow their default).
_NONE_TYPES: dict[str, tuple[type, ...]] = {
    "checkpoint": (str,),
    "scale_range": (list,),
    "export_size": (str,),
    "input_size": (str,),
    "weight_decay": (int, float),
    "eval_interval": (int,),
    "backbone_weights": (str,),
    "max_drop": (int, float),
    "threads": (int,),
}
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "text",
               list: "a list"}  # fmt: skip


def check_types(cfg: dict[str, Any], base: dict[str, Any] = DEFAULTS, where: str = "") -> None:
    """Every value has its option's type (`iters: "2"` is refused), before any step runs."""
    for key, value in cfg.items():
        name = f"{where}{key}"
        default = base.get(key)
        if isinstance(default, dict):
            check_types(value, default, f"{name}.")
            continue
        if value is None:
            continue
        if default is None:
            types = _NONE_TYPES.get(key, (object,))
        elif isinstance(default, bool):
            types = (bool,)
        elif isinstance(default, float):
            types = (int, float)
        elif isinstance(default, list):
            types = (list, str)  # "fp32,fp16" as well as [fp32, fp16]
        else:
            types = (type(default),)
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            want = (
                "a number"
                if types == (int, float)
                else " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)
            )
            raise SegkdError(f"config option {name}: expected {want}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise SegkdError(f"config option {name}: must be a finite number, got {value!r}")


def read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SegkdError(f"--config: file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as e:
        raise SegkdError(f"--config: cannot read {path}: {type(e).__name__}") from None
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib  # Python 3.11+
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text) or {}
    except yaml.MarkedYAMLError as e:  # name the line and column, not only the parser state
        mark = e.problem_mark or e.context_mark
        at = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = e.problem or e.context or "syntax error"
        raise SegkdError(f"--config {at}: YAML syntax error: {what}") from None
    except Exception as e:
        raise SegkdError(f"--config: cannot parse {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SegkdError(f"--config: {path} must hold a mapping of options")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """'student.iters=200' -> (['student', 'iters'], 200); the value is read as YAML."""
    if "=" not in item:
        raise SegkdError(f"--set: expected section.key=value, got {item!r}")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise SegkdError(f"--set: empty key in {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        cfg = _merge(cfg, read_config_file(path), str(path))
    for item in overrides or []:
        keys, value = parse_override(item)
        nested: dict[str, Any] = {keys[-1]: value}
        for k in reversed(keys[:-1]):
            nested = {k: nested}
        cfg = _merge(cfg, nested, f"--set {item}")
    check_types(cfg)
    return cfg


def section_hash_view(cfg: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The part of the config a step depends on (its stamp key is computed from this)."""
    return json.loads(json.dumps({k: cfg[k] for k in keys}, default=str))
