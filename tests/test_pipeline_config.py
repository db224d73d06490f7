"""Pipeline configuration: shipped files, layering and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from distill.models.registry import available_models
from pipeline.config import DEFAULTS, load_config
from runtime.errors import SegkdError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_shipped_default_file_equals_the_built_in_default() -> None:
    assert yaml.safe_load((CONFIGS / "synthetic.yaml").read_text()) == DEFAULTS


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_config_is_complete_and_valid(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    raw = yaml.safe_load((CONFIGS / name).read_text())
    assert set(raw) == set(DEFAULTS), "a shipped config names every section"
    for section, value in DEFAULTS.items():
        if isinstance(value, dict):
            assert set(raw[section]) == set(value), f"{name}: {section} lists every option"
    assert cfg["student"]["model"] in available_models()


def test_command_line_overrides_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("student:\n  iters: 50\ndistill:\n  losses: [kd]\n")
    cfg = load_config(f, ["student.iters=7", "distill.w_idd=0.5", "eval.max_drop=1.5"])
    assert cfg["student"]["iters"] == 7 and cfg["distill"]["losses"] == ["kd"]
    assert cfg["distill"]["w_idd"] == 0.5 and cfg["eval"]["max_drop"] == 1.5
    assert cfg["teacher"] == DEFAULTS["teacher"]  # untouched sections keep the defaults


def test_toml_configs_are_read(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('data = "synthetic:size=64x128"\n[student]\niters = 3\n')
    cfg = load_config(f)
    assert cfg["data"] == "synthetic:size=64x128" and cfg["student"]["iters"] == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["student.iterz=3"], "unknown option 'iterz'"),
        (["nonsense"], "expected section.key=value"),
        (["student=3"], "must be a section"),
    ],
)
def test_bad_overrides_name_the_option(overrides: list[str], message: str) -> None:
    with pytest.raises(SegkdError, match=message):
        load_config(None, overrides)


def test_missing_or_broken_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SegkdError, match="file not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("student: [unclosed\n")
    with pytest.raises(SegkdError, match=r"bad\.yaml:2:1: YAML syntax error"):
        load_config(bad)
