"""The distillation gain over several seeds: mean, spread, and the verdict the report states."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import SegkdError
from pipeline.config import load_config, student_seeds
from pipeline.gain import seed_gain
from pipeline.report import write_report


def test_gain_is_the_difference_of_means_and_spread_the_widest_row() -> None:
    g = seed_gain([0, 1], [0.30, 0.32], [0.36, 0.35])
    assert g["gain_vs_baseline"] == pytest.approx(4.5)
    assert g["gain_per_seed"] == pytest.approx([6.0, 3.0])
    assert g["spread"] == pytest.approx(2.0)  # baseline 30..32 is wider than 35..36
    assert g["gain_exceeds_spread"] is True
    assert g["baseline_stats"]["std"] == pytest.approx(1.41421356, rel=1e-6)


def test_a_gain_inside_the_spread_is_not_a_measured_gain() -> None:
    g = seed_gain([0, 1, 2], [0.25, 0.30, 0.28], [0.29, 0.27, 0.31])
    assert g["gain_vs_baseline"] == pytest.approx(1.333333, rel=1e-5)
    assert g["spread"] == pytest.approx(5.0) and g["gain_exceeds_spread"] is False


def test_one_seed_or_no_baseline_gives_no_verdict() -> None:
    one = seed_gain([3], [0.30], [0.34])
    assert one["gain_vs_baseline"] == pytest.approx(4.0) and one["spread"] is None
    assert one["gain_exceeds_spread"] is None
    none = seed_gain([0, 1], None, [0.3, 0.31])
    assert none["gain_vs_baseline"] is None and none["gain_exceeds_spread"] is None
    with pytest.raises(ValueError):
        seed_gain([0, 1], [0.3], [0.3, 0.31])


@pytest.mark.parametrize(("value", "seeds"), [("[4, 7]", [4, 7]), ("'2,3'", [2, 3]), ("null", [5])])
def test_student_seeds_from_the_command_line(value: str, seeds: list[int]) -> None:
    cfg = load_config(None, ["seed=5", f"student_seeds={value}"])
    assert student_seeds(cfg) == seeds


@pytest.mark.parametrize(
    ("value", "message"),
    [("[0, 0]", "listed twice"), ("[-1]", r"seeds in 0\.\."), ("[]", "at least one seed"),
     ("[1.5]", r"seeds in 0\.\."), ("'a,b'", r"seeds in 0\.\.")],
)  # fmt: skip
def test_bad_student_seeds_are_named(value: str, message: str) -> None:
    with pytest.raises(SegkdError, match=f"student_seeds.*{message}|{message}"):
        student_seeds(load_config(None, [f"student_seeds={value}"]))


def _report(dist: dict) -> dict:
    model = {"arch": "ddrnet23_slim", "val_miou": 0.35, "input_size": [128, 256]}
    return {
        "title": "t",
        "student": {**model, "losses": ["cwd", "idd", "pid"]},
        "baseline": {**model, "val_miou": 0.30},
        "teacher": {**model, "val_miou": 0.45},
        "distillation": dist,
        "artifacts": [],
        "examples": [],
    }


def test_report_states_the_gain_with_its_spread_and_per_seed_rows(tmp_path: Path) -> None:
    dist = seed_gain([0, 1], [0.30, 0.32], [0.36, 0.35])
    md = Path(write_report(_report(dist), tmp_path)["markdown"]).read_text()
    assert "| seed 0 | 30.00% | 36.00% | +6.00 |" in md
    assert "| seed 1 | 32.00% | 35.00% | +3.00 |" in md
    assert "+4.50 pts ± 2.00" in md and "larger than the spread" in md
    assert "35.50%** mIoU (mean of 2 seeds)" in md  # the summary states means, not seed 0


def test_report_says_when_the_gain_is_within_the_spread(tmp_path: Path) -> None:
    dist = seed_gain([0, 1], [0.30, 0.34], [0.33, 0.32])
    md = Path(write_report(_report(dist), tmp_path)["markdown"]).read_text()
    assert "within the spread" in md and "larger than the spread" not in md


@pytest.mark.parametrize("key", ["min_fp16", "min_int8"])
def test_export_gates_out_of_range_are_refused_before_any_step(key: str, tmp_path: Path) -> None:
    from pipeline.run import check_stages

    with pytest.raises(SegkdError, match=f"export.{key}: must be <= 1"):
        check_stages(load_config(None, [f"export.{key}=1.5"]), tmp_path)
