"""Pipeline configuration: built-in defaults < config file (YAML or TOML) < --set overrides.

Every option of every stage has a key here, so one file describes a whole run; the
command line overrides any of them with `--set section.key=value`.
"""

from __future__ import annotations

import copy
import json
import math
import typing
from pathlib import Path
from typing import Any

import yaml

from core.errors import SegkdError
from core.options import OptionSet
from core.schema.bench import BENCH
from core.schema.distill import DISTILL
from core.schema.evaluate import EVAL
from core.schema.export import EXPORT
from core.schema.qat import QAT
from core.schema.tolerances import TOLERANCE_NAMES, TOLERANCES
from core.schema.train import TRAIN


# The synthetic default below is a profile sized for a 2-core CPU: every key takes its
# stage's default (core/schema/<stage>.py) except where a value here says otherwise.
def _training(model: str, iters: int) -> dict[str, Any]:
    """Every training option a pipeline stage can set (None: the dataset's default)."""
    return {
        **TRAIN.config_section(),
        "model": model,
        "iters": iters,
        "batch_size": 4,
        "crop_size": "64x128",
        "lr": 0.01,
        "val_images": 20,
    }


# A real-time student (DDRNet-23-slim, 9 GMAC at 512x1024, about a tenth of PSPNet-R18)
# distilled from a teacher trained 4x longer, and the saving spent on seeds: the student
# alone and the distilled student run twice each, so the report states the gain against its
# seed spread. DDRNet trains on whole 128x256 images: on 64x128 crops its 1/64 branch is 1x2
# pixels and it learns nothing in a few hundred steps (6 mIoU, docs/BENCHMARKS.md). The
# teacher is the same network trained longer because a large teacher trained from scratch on
# a CPU is the weaker one (PSPNet-R101 12.5 vs R18 22.7 mIoU at equal settings; a 600-step
# PSPNet-R18 teacher at 30 mIoU made the distilled DDRNet worse than alone). The Cityscapes
# configs use the paper's ImageNet-initialised PSPNet-R101.
TEACHER_ITERS, STUDENT_ITERS = 1200, 300


def _realtime(iters: int) -> dict[str, Any]:
    return {**_training("ddrnet23_slim", iters), "crop_size": "128x256"}


# The export section: the export's options and its two agreement gates.
_EXPORT_SECTION = OptionSet(
    [*EXPORT.values(), *TOLERANCES.only(*TOLERANCE_NAMES).renamed(TOLERANCE_NAMES).values()]
)


DEFAULTS: dict[str, Any] = {
    "data": "synthetic:size=128x256",
    **{k: TRAIN.default(k) for k in ("seed", "device", "dist_timeout")},
    "num_workers": 1,
    "teacher": {
        # A given teacher instead of training one: a segkd .pt or a model-zoo SPEC (FILE,
        # mmseg:FILE, cirkd:FILE, torchvision:NAME:FILE; distill/zoo). None: trained here.
        "checkpoint": None,
        **_realtime(TEACHER_ITERS),
        "readout_iters": 100,
    },
    # One validation, at the end: best.pt is the final model, not the best of several noisy
    # looks at 20 images (the pipeline's own eval scores every val image).
    "student": {**_realtime(STUDENT_ITERS), "eval_interval": STUDENT_ITERS},
    "baseline": True,  # also train the student alone, to report what distillation adds
    # The students' seeds: the student alone and the distilled student are trained once per
    # seed, so the report states the gain against its seed-to-seed spread (one seed is
    # noise). The first seed's distilled student is the one exported. None: [seed].
    "student_seeds": [0, 1],
    # The library's defaults (chosen from the synthetic ablation: docs/METHOD.md says why).
    "distill": DISTILL.config_section(),
    "export": _EXPORT_SECTION.config_section(),
    # Quantization-aware distillation after the export (`segkd qat`, docs/notes/qat.md):
    # steps 0 = off. The INT8 files it writes go to export-qat/, beside the PTQ ones.
    "qat": {**QAT.config_section(), "steps": 0},
    "eval": {**EVAL.config_section(), "max_images": 100},
    "bench": {**BENCH.config_section(), "iters": 20, "warmup": 3},
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


# The declared options of each section: the type an option whose default is None takes.
_SCHEMAS = (TRAIN, DISTILL, _EXPORT_SECTION, QAT, EVAL, BENCH)


def _none_types() -> dict[str, tuple[type, ...]]:
    """What an option whose default is None takes when set (the rest follow their default),
    from its declared type: a number may be written as an integer, a path as text."""
    found: dict[str, tuple[type, ...]] = {
        "checkpoint": (str,),  # a SPEC, not always a path (mmseg:FILE): distill.zoo parses it
    }
    for options in _SCHEMAS:
        for o in options.values():
            kinds = [t for t in typing.get_args(o.type) if t is not type(None)]
            if o.config and kinds:
                found[o.name] = {float: (int, float), Path: (str,)}.get(kinds[0], (kinds[0],))
    return found


_NONE_TYPES = _none_types()
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


def student_seeds(cfg: dict[str, Any]) -> list[int]:
    """The students' seeds as a list of distinct non-negative ints ([seed] when unset)."""
    raw = cfg.get("student_seeds")
    if raw is None:
        return [int(cfg["seed"])]
    items = [p.strip() for p in raw.split(",") if p.strip()] if isinstance(raw, str) else raw
    seeds: list[int] = []
    for item in items:
        try:  # ints, or digits from a "0,1" string; True or 1.5 is not a seed
            seed = None if isinstance(item, (bool, float)) else int(item)
        except (TypeError, ValueError):
            seed = None
        if seed is None or not 0 <= seed < 2**32:  # numpy's generators: 0..2**32-1
            raise SegkdError(
                f"config option student_seeds: expected seeds in 0..{2**32 - 1}, got {raw!r}"
            )
        if seed in seeds:
            raise SegkdError(f"config option student_seeds: seed {seed} is listed twice")
        seeds.append(seed)
    if not seeds:
        raise SegkdError("config option student_seeds: give at least one seed (or null)")
    return seeds


def read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SegkdError(f"--config: file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark is not a key
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
