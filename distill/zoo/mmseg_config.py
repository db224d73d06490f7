"""What an mmsegmentation checkpoint's own config says segkd must build, read without running it.

The weights cannot tell a stride, a dilation, a pooling scale or align_corners (those have
no parameters), so files with the same keys differ only in their config: d8 vs d16-mg124,
769x769 files with align_corners=True and sliding-window testing. mmseg 0.x stores the
config as text in meta['config'], mmseg 1.x (mmengine) in meta['cfg']: both are
`Config.pretty_text`, Python source made of assignments of literals and dict(...) calls.
It is parsed with `ast` and evaluated by a walker that knows only literals, tuples, lists,
dicts and dict(k=v) calls: nothing in the text runs.

Where the file stores no config, the user can name the upstream config (its 1.x name, its
0.x name, or the checkpoint's file name), looked up in distill/zoo/data/mmseg_configs.json,
a table written by tools/golden/mmseg_configs.py from mmsegmentation's own config files.
Otherwise the d8 defaults are assumed and the settings that could not be checked are named.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

from core.errors import SegkdError

TABLE = Path(__file__).with_name("data") / "mmseg_configs.json"
CITYSCAPES_SIZE = (1024, 2048)  # (H, W) of every Cityscapes image
_DATE_SUFFIX = re.compile(r"_\d{8}_\d{6}-[0-9a-f]{8}$")  # ..._20200606_112211-e1e1100f


class _Unreadable:
    """A config value the safe walker does not evaluate (a name, an expression...)."""

    def __repr__(self) -> str:
        return "<not a literal>"


UNREADABLE = _Unreadable()


def _literal(node: ast.AST, names: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_literal(e, names) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Dict):
        return {
            _literal(k, names): _literal(v, names)
            for k, v in zip(node.keys, node.values, strict=True)
            if k is not None
        }
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        if node.args or any(kw.arg is None for kw in node.keywords):
            return UNREADABLE
        return {kw.arg: _literal(kw.value, names) for kw in node.keywords}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _literal(node.operand, names)
        return -value if isinstance(value, (int, float)) else UNREADABLE
    if isinstance(node, ast.Name):  # an earlier top-level assignment (crop_size, norm_cfg)
        return names.get(node.id, UNREADABLE)
    return UNREADABLE


def parse_config_text(text: str) -> dict[str, Any]:
    """Top-level `name = literal` assignments of a config's pretty_text; never executed."""
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        raise SegkdError(f"the stored mmseg config is not Python source ({e.msg})") from None
    names: dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
            target = stmt.targets[0]
            if isinstance(target, ast.Name):
                names[target.id] = _literal(stmt.value, names)
    return names


@dataclass(frozen=True)
class MMSegSettings:
    """The settings of an mmseg EncoderDecoder that change what it computes at test time."""

    origin: str  # where they were read, for messages
    backbone: str = "ResNetV1c"
    depth: int | None = None
    strides: tuple[int, ...] = (1, 2, 1, 1)
    dilations: tuple[int, ...] = (1, 1, 2, 4)
    contract_dilation: bool = True
    multi_grid: tuple[int, ...] | None = None
    head: str | None = None  # PSPHead / ASPPHead / FCNHead; None: from the keys
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    aspp_dilations: tuple[int, ...] = (1, 12, 24, 36)
    fcn_dilation: int = 1
    align_corners: bool = False
    aux_dilation: int = 1
    aux_align_corners: bool = False
    num_classes: int | None = None
    test_mode: str = "whole"
    crop_size: tuple[int, int] | None = None  # (H, W)
    stride: tuple[int, int] | None = None  # (H, W)
    test_scale: tuple[int, int] | None = None  # Resize scale (W, H) of the test pipeline
    unchecked: tuple[str, ...] = ()  # settings assumed, not read (no config)

    def differs(self, other: MMSegSettings) -> str | None:
        """The first setting (by name) on which two readings disagree, or None."""
        for f in fields(self):
            if f.name in ("origin", "unchecked"):
                continue
            if getattr(self, f.name) != getattr(other, f.name):
                return f"{f.name}: {getattr(self, f.name)} vs {getattr(other, f.name)}"
        return None

    def input_size(self, num_classes: int) -> tuple[int, int]:
        """(H, W) the test pipeline gives a Cityscapes image: Resize keep_ratio fits it into
        test_scale (mmcv's rescale_size: factor min(long/long, short/short), rounded)."""
        if num_classes != 19:
            return (512, 512)
        if self.test_scale is None:
            return CITYSCAPES_SIZE
        h, w = CITYSCAPES_SIZE
        long_side, short_side = max(self.test_scale), min(self.test_scale)
        factor = min(long_side / max(h, w), short_side / min(h, w))
        return int(h * factor + 0.5), int(w * factor + 0.5)


DEFAULT_UNCHECKED = (
    "backbone strides/dilations/multi_grid (d8 assumed)",
    "pool_scales / ASPP dilations (1,2,3,6 / 1,12,24,36 assumed)",
    "align_corners (False assumed)",
    "test mode (whole assumed)",
)

# Config entries that do not change the test-time computation (training, init, logging).
_INERT = {
    "type", "norm_cfg", "norm_eval", "out_indices", "pretrained", "init_cfg", "with_cp",
    "zero_init_residual", "frozen_stages", "loss_decode", "sampler", "dropout_ratio",
    "ignore_index", "in_channels", "channels", "num_classes", "align_corners", "in_index",
    "threshold", "out_channels", "num_stages", "depth", "stem_channels", "base_channels",
}  # fmt: skip
_BACKBONE = {"strides", "dilations", "contract_dilation", "multi_grid", "style", "deep_stem",
             "avg_down", "dcn", "plugins", "stage_with_dcn", "conv_cfg", "in_channels"}  # fmt: skip
_HEAD = {"pool_scales", "dilations", "dilation", "num_convs", "concat_input", "kernel_size",
         "act_cfg", "conv_cfg", "input_transform"}  # fmt: skip


def _refuse(origin: str, setting: str, value: Any) -> SegkdError:
    return SegkdError(f"{origin}: {setting}={value!r} is not implemented in segkd")


def _check_keys(section: Mapping[str, Any], known: set[str], where: str, origin: str) -> None:
    for key, value in section.items():
        if value is UNREADABLE:
            raise SegkdError(f"{origin}: cannot read {where}.{key} (not a literal)")
        if key not in known and key not in _INERT:
            raise _refuse(origin, f"{where}.{key}", value)


def _ints(value: Any, origin: str, setting: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
        raise SegkdError(f"{origin}: {setting}={value!r} is not a list of integers")
    return tuple(value)


def _pair(value: Any, origin: str, setting: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    pair = _ints(value, origin, setting)
    if len(pair) != 2:
        raise SegkdError(f"{origin}: {setting}={value!r} is not (H, W)")
    return pair[0], pair[1]


def _backbone(b: Mapping[str, Any], origin: str) -> dict[str, Any]:
    _check_keys(b, _BACKBONE, "backbone", origin)
    kind = b.get("type", "ResNetV1c")
    if kind not in ("ResNetV1c", "ResNet"):
        raise _refuse(origin, "backbone.type", kind)
    for key, want in (("style", "pytorch"), ("dcn", None), ("plugins", None),
                      ("conv_cfg", None), ("avg_down", False), ("in_channels", 3),
                      ("num_stages", 4)):  # fmt: skip
        if key in b and b[key] != want:
            raise _refuse(origin, f"backbone.{key}", b[key])
    if "stage_with_dcn" in b and any(b["stage_with_dcn"]):
        raise _refuse(origin, "backbone.stage_with_dcn", b["stage_with_dcn"])
    deep = b.get("deep_stem", kind == "ResNetV1c")
    if deep != (kind == "ResNetV1c"):
        raise _refuse(origin, "backbone.deep_stem", deep)
    out: dict[str, Any] = {"backbone": kind}
    if isinstance(b.get("depth"), int):
        out["depth"] = b["depth"]
    if "strides" in b:
        out["strides"] = _ints(b["strides"], origin, "backbone.strides")
    if "dilations" in b:
        out["dilations"] = _ints(b["dilations"], origin, "backbone.dilations")
    if len(out.get("strides", (1,) * 4)) != 4 or len(out.get("dilations", (1,) * 4)) != 4:
        raise _refuse(origin, "backbone.strides/dilations (not 4 stages)", b.get("strides"))
    out["contract_dilation"] = bool(b.get("contract_dilation", False))
    if b.get("multi_grid") is not None:
        out["multi_grid"] = _ints(b["multi_grid"], origin, "backbone.multi_grid")
    return out


def _head(h: Mapping[str, Any], origin: str, where: str, aux: bool) -> dict[str, Any]:
    _check_keys(h, _HEAD, where, origin)
    kind = h.get("type")
    allowed = ("FCNHead",) if aux else ("PSPHead", "ASPPHead", "FCNHead")
    if kind not in allowed:
        raise _refuse(origin, f"{where}.type", kind)
    if h.get("in_index", 2 if aux else 3) != (2 if aux else 3):
        raise _refuse(origin, f"{where}.in_index", h.get("in_index"))
    for key, want in (("input_transform", None), ("conv_cfg", None), ("kernel_size", 3)):
        if key in h and h[key] != want:
            raise _refuse(origin, f"{where}.{key}", h[key])
    act = h.get("act_cfg")
    if act is not None and (not isinstance(act, Mapping) or act.get("type") != "ReLU"):
        raise _refuse(origin, f"{where}.act_cfg", act)
    if h.get("out_channels") not in (None, h.get("num_classes")):
        raise _refuse(origin, f"{where}.out_channels", h.get("out_channels"))
    align = bool(h.get("align_corners", False))
    prefix = "aux_" if aux else ""
    out: dict[str, Any] = {f"{prefix}align_corners": align}
    dilation = h.get("dilation", 1)
    if kind == "FCNHead":
        if not isinstance(dilation, int) or dilation < 1:
            raise _refuse(origin, f"{where}.dilation", dilation)
        out["aux_dilation" if aux else "fcn_dilation"] = dilation
    if aux:
        return out
    out["head"] = kind
    if kind == "PSPHead":
        out["pool_scales"] = _ints(
            h.get("pool_scales", (1, 2, 3, 6)), origin, f"{where}.pool_scales"
        )
    if kind == "ASPPHead":
        out["aspp_dilations"] = _ints(
            h.get("dilations", (1, 6, 12, 18)), origin, f"{where}.dilations"
        )
    if isinstance(h.get("num_classes"), int):
        out["num_classes"] = h["num_classes"]
    return out


def _test_cfg(t: Mapping[str, Any] | None, origin: str) -> dict[str, Any]:
    t = t or {}
    mode = t.get("mode", "whole")
    if mode not in ("whole", "slide"):
        raise _refuse(origin, "test_cfg.mode", mode)
    out: dict[str, Any] = {"test_mode": mode}
    if mode == "slide":
        out["crop_size"] = _pair(t.get("crop_size"), origin, "test_cfg.crop_size")
        out["stride"] = _pair(t.get("stride"), origin, "test_cfg.stride")
        if out["crop_size"] is None or out["stride"] is None:
            raise SegkdError(f"{origin}: test_cfg mode 'slide' without crop_size and stride")
    return out


def _preprocessor(d: Mapping[str, Any] | None, origin: str, mean: Any, std: Any) -> None:
    """mmseg's normalisation must be the one segkd feeds mmseg teachers (RGB, ImageNet)."""
    if not d:
        return
    for key, want in (("mean", mean), ("std", std)):
        got = d.get(key)
        if got is not None and [round(float(v), 3) for v in got] != [round(v, 3) for v in want]:
            raise _refuse(origin, f"data_preprocessor.{key}", got)
    if d.get("bgr_to_rgb", True) is not True:
        raise _refuse(origin, "data_preprocessor.bgr_to_rgb", d.get("bgr_to_rgb"))


def _test_scale(resize: Any) -> tuple[int, int] | None:
    """The (W, H) scale of a test pipeline's keep-ratio resize (1.x Resize, 0.x MultiScaleFlipAug)."""
    if not isinstance(resize, list):
        return None
    for step in resize:
        if not isinstance(step, Mapping):
            continue
        scale = step.get("scale") if step.get("type") == "Resize" else None
        if step.get("type") == "MultiScaleFlipAug":
            scale = step.get("img_scale")
        if isinstance(scale, (list, tuple)) and len(scale) == 2:
            return int(scale[0]), int(scale[1])
    return None


def settings_from_model(
    model: Mapping[str, Any],
    test_scale: tuple[int, int] | None,
    origin: str,
    mean: Any,
    std: Any,
) -> MMSegSettings:
    """Validate an mmseg `model` dict and read what segkd builds from it."""
    if not isinstance(model, Mapping):
        raise SegkdError(f"{origin}: cannot read its `model = dict(...)` settings")
    if model.get("type", "EncoderDecoder") != "EncoderDecoder":
        raise _refuse(origin, "model.type", model.get("type"))
    values: dict[str, Any] = {}
    values.update(_backbone(model.get("backbone") or {}, origin))
    values.update(_head(model.get("decode_head") or {}, origin, "decode_head", aux=False))
    aux = model.get("auxiliary_head")
    if isinstance(aux, list):
        raise _refuse(origin, "auxiliary_head (a list of heads)", len(aux))
    if aux:
        values.update(_head(aux, origin, "auxiliary_head", aux=True))
    values.update(_test_cfg(model.get("test_cfg"), origin))
    _preprocessor(model.get("data_preprocessor"), origin, mean, std)
    return MMSegSettings(origin=origin, test_scale=test_scale, **values)


def settings_from_text(text: str, origin: str, mean: Any, std: Any) -> MMSegSettings:
    names = parse_config_text(text)
    scale = _test_scale(names.get("test_pipeline"))
    norm = names.get("img_norm_cfg")  # mmseg 0.x keeps the normalisation here
    if isinstance(norm, Mapping):
        _preprocessor({**norm, "bgr_to_rgb": norm.get("to_rgb", True)}, origin, mean, std)
    return settings_from_model(names.get("model"), scale, origin, mean, std)


@cache
def _table() -> dict[str, Any]:
    return json.loads(TABLE.read_text())


def config_name_for(name: str) -> str | None:
    """The mmseg 1.x config name NAME refers to: itself, a checkpoint file's name (with or
    without .pth), or an mmseg 0.x config name (the checkpoint name less its date-hash)."""
    table = _table()
    stem = name[:-4] if name.endswith(".pth") else name
    if stem in table["configs"]:
        return stem
    if stem in table["checkpoints"]:
        return table["checkpoints"][stem]
    for ckpt, config in table["checkpoints"].items():  # 0.x config name
        if _DATE_SUFFIX.sub("", ckpt) == stem:
            return config
    return None


def settings_from_table(name: str, mean: Any, std: Any) -> MMSegSettings:
    config = config_name_for(name)
    if config is None:
        raise SegkdError(f"unknown mmseg config {name!r} (see {TABLE.name})")
    entry = _table()["configs"][config]
    resize = entry.get("test_resize") or {}
    scale = tuple(resize["scale"]) if resize.get("keep_ratio") and resize.get("scale") else None
    origin = f"mmseg config {config} (mmsegmentation {_table()['upstream']['mmsegmentation']})"
    return settings_from_model(entry["model"], scale, origin, mean, std)  # type: ignore[arg-type]


def stored_config(meta: Mapping[str, Any]) -> tuple[str, str] | None:
    """(text, where) of the config an mmseg checkpoint stores, or None."""
    for key in ("cfg", "config"):  # 1.x (mmengine) / 0.x
        text = meta.get(key)
        if isinstance(text, str) and text.strip():
            return text, f"meta[{key!r}]"
    return None


def resolve_settings(
    meta: Mapping[str, Any], path: Path, name: str | None, mean: Any, std: Any
) -> tuple[MMSegSettings, bool]:
    """(settings, whether NAME was a config name). The stored config wins; a named config
    must agree with it; with neither, the file's own name is tried, then the d8 defaults
    with the unchecked settings listed."""
    stored = stored_config(meta)
    read = settings_from_text(stored[0], f"{path} {stored[1]}", mean, std) if stored else None
    named = None
    if name is not None and config_name_for(name) is not None:
        named = settings_from_table(name, mean, std)
        if read is not None:
            diff = read.differs(named)
            if diff is not None:
                raise SegkdError(f"{path}: its stored config and {named.origin} differ ({diff})")
    if read is not None or named is not None:
        return (read or named), named is not None  # type: ignore[return-value]
    if config_name_for(path.name) is not None:
        return settings_from_table(path.name, mean, std), False
    return MMSegSettings(origin=f"{path} (no stored config)", unchecked=DEFAULT_UNCHECKED), False
