"""The model registry, the one unwrap rule for foreign state dicts, and the import graph."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.errors import SegkdError
from distill.models import available_models, build_model
from distill.models.registry import model_entry, register_model
from distill.models.weights import remap_keys, unwrap_state_dict

ROOT = Path(__file__).resolve().parents[2]


def test_each_family_file_registers_its_builders() -> None:
    families = {name: model_entry(name).family for name in available_models()}
    assert families == {
        "pspnet_r18": "pspnet",
        "pspnet_r50": "pspnet",
        "pspnet_r101": "pspnet",
        "deeplabv3_r18": "deeplabv3",
        "deeplabv3_r50": "deeplabv3",
        "deeplabv3_r101": "deeplabv3",
        "ddrnet23_slim": "ddrnet",
        "pidnet_s": "pidnet",
    }
    assert available_models("realtime") == ["ddrnet23_slim", "pidnet_s"]
    for name in available_models():
        assert (ROOT / "distill" / "models" / f"{model_entry(name).family}.py").is_file()


def test_unknown_names_and_options_are_errors() -> None:
    with pytest.raises(SegkdError, match="unknown model architecture 'pspnet_r34'"):
        build_model("pspnet_r34", 3)
    with pytest.raises(SegkdError, match="num_classes must be >= 1"):
        build_model("pidnet_s", 0)
    with pytest.raises(TypeError):  # a checkpoint's model_kwargs the builder lacks
        build_model("pspnet_r18", 3, width=2)
    with pytest.raises(ValueError, match="registered twice"):
        entry = model_entry("pspnet_r18")
        register_model("resnet", weights=entry.weights)(entry.builder)


def test_one_unwrap_rule() -> None:
    t = torch.zeros(1)
    assert unwrap_state_dict({"state_dict": {"a": t}, "meta": {"x": 1}}) == ({"a": t}, {"x": 1})
    assert unwrap_state_dict({"model": {"module.a": t, "module.b": t}})[0] == {"a": t, "b": t}
    # a file where only some keys start with 'module.' names a real submodule: kept
    mixed = {"module.a": t, "b": t}
    assert unwrap_state_dict(mixed) == (mixed, {})
    assert unwrap_state_dict({"a": t}) == ({"a": t}, {})


def test_key_maps_rename_the_first_full_match_only() -> None:
    t = torch.zeros(1)
    rules = ((r"a\.(\d)\.(.+)", r"b.\1.\2"), (r"a\.(.+)", r"c.\1"))
    assert list(remap_keys({"a.1.w": t, "a.x.w": t, "za.1.w": t}, rules)) == [
        "b.1.w",
        "c.x.w",
        "za.1.w",
    ]


def test_no_import_cycle() -> None:
    """Every import statement of the project's own modules, function-level ones too, as
    benchmarks/code_shape.py reads them (it finds the one the tree had before issue 26)."""
    proc = subprocess.run(
        [sys.executable, "benchmarks/code_shape.py", "--no-trace"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "import cycles (including imports inside functions): 0" in proc.stdout, proc.stdout
