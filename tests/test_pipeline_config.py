"""Pipeline configuration: shipped files, layering and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.errors import SegkdError
from distill.models.registry import available_models
from pipeline.config import DEFAULTS, load_config
from pipeline.run import check_stages

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
    assert cfg["teacher"]["model"] in available_models()


# The Cityscapes settings: (file, student, its ImageNet file, the student's published recipe
# as configured: iterations, batch, crop, lr, weight decay).
CITYSCAPES = {
    "cityscapes_pspnet_r101_r18.yaml": ("pspnet_r18", None, (40000, 8, "512x1024", 0.01, 5e-4)),
    "cityscapes_deeplabv3_r101_r18.yaml": ("deeplabv3_r18", None, (40000, 8, "512x1024", 0.01, 5e-4)),
    "cityscapes_pspnet_r101_ddrnet23_slim.yaml": (
        "ddrnet23_slim", "DDRNet23s_imagenet.pth", (119548, 12, "1024x1024", 0.01, 5e-4)
    ),
    "cityscapes_pspnet_r101_pidnet_s.yaml": (
        "pidnet_s", "PIDNet_S_ImageNet.pth.tar", (119548, 12, "1024x1024", 0.01, 5e-4)
    ),
}  # fmt: skip


def test_every_cityscapes_config_is_listed() -> None:
    assert sorted(p.name for p in CONFIGS.glob("cityscapes_*.yaml")) == sorted(CITYSCAPES)


@pytest.mark.parametrize("name", sorted(CITYSCAPES))
def test_cityscapes_config_passes_every_stage_check(name: str, tmp_path: Path) -> None:
    student, weights, recipe = CITYSCAPES[name]
    cfg = load_config(CONFIGS / name)
    assert cfg["data"].startswith("cityscapes:")
    assert cfg["teacher"]["model"] == ("deeplabv3_r101" if "deeplabv3" in name else "pspnet_r101")
    s = cfg["student"]
    assert s["model"] == student
    assert (s["iters"], s["batch_size"], s["crop_size"], s["lr"], s["weight_decay"]) == recipe
    if weights is None:
        assert s["backbone_weights"] is None
        check_stages(cfg, tmp_path / "run")
        return
    assert Path(s["backbone_weights"]).name == weights
    assert "NOT YET RUN" in (CONFIGS / name).read_text().splitlines()[0]
    # The authors' file is not in the repository: the stage checks name it before any training...
    with pytest.raises(SegkdError, match=f"student.backbone_weights: file not found: .*{weights}"):
        check_stages(cfg, tmp_path / "run")
    # ... and pass once it is there.
    local = tmp_path / weights
    local.write_bytes(b"")
    cfg = load_config(CONFIGS / name, [f"student.backbone_weights={local}"])
    check_stages(cfg, tmp_path / "run")
    # A bad value in the student section is still refused by the training checks.
    bad = load_config(CONFIGS / name, [f"student.backbone_weights={local}", "student.batch_size=1"])
    with pytest.raises(SegkdError, match="config section student: --batch-size"):
        check_stages(bad, tmp_path / "run")


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


# The supervised loss each Cityscapes student trains with: the authors' OHEM recipe for the
# real-time students (docs/notes/authors.md), segkd's CE for the ResNet-18 ones.
@pytest.mark.parametrize("name", sorted(CITYSCAPES))
def test_cityscapes_students_train_with_their_authors_loss(name: str) -> None:
    s = load_config(CONFIGS / name)["student"]
    got = (s["loss"], s["ohem_threshold"], s["ohem_min_kept"], s["class_weights"])
    if s["model"] in ("ddrnet23_slim", "pidnet_s"):
        assert got == ("ohem", 0.9, 131072, "cityscapes")
        assert s["ohem_align"] is (s["model"] == "pidnet_s")
    else:
        assert s["loss"] == "ce"
    assert DEFAULTS["student"]["loss"] == "ce"  # the synthetic default stays plain CE


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["qat.schedule=linear"], "config section qat: --schedule must be one of constant, cosine"),
     (["qat.lr=0"], "config section qat: --lr: must be > 0, got 0"),
     (["qat.crop_size=12x"], "qat.crop_size"),
     (["qat.steps=-1"], "config section qat: --steps")],
)  # fmt: skip
def test_a_bad_qat_value_is_refused_before_any_training(
    overrides: list[str], message: str, tmp_path: Path
) -> None:
    """QAT runs after the teacher, the students and the export: its values are checked
    with every other stage's, before the first step. qat.steps=0 (off) checks nothing."""
    with pytest.raises(SegkdError, match=message):
        check_stages(load_config(None, ["qat.steps=5", *overrides]), tmp_path / "run")
    check_stages(load_config(None, ["qat.steps=0", "qat.schedule=linear"]), tmp_path / "run")
