"""The checkpoint artifact: atomic writes, weights_only loading, clear refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from core.errors import SegkdError
from core.labels import LabelSpec
from core.preprocess import PreprocessSpec
from distill.checkpoint import atomic_torch_save, load_checkpoint, load_model, make_checkpoint
from distill.models import build_model

LABELS = LabelSpec(names=("a", "b", "c"))


def _ckpt(tmp_path: Path, arch: str = "pspnet_r18", classes: LabelSpec = LABELS) -> Path:
    model = build_model(arch, classes.num_classes)
    ckpt = make_checkpoint(
        model=model, arch=arch, model_kwargs=model.model_kwargs, labels=classes,
        preprocess=PreprocessSpec(input_size=(64, 64)), iteration=3, role="student",
    )  # fmt: skip
    path = tmp_path / f"{arch}-{classes.num_classes}.pt"
    atomic_torch_save(ckpt, path)
    return path


class Payload:
    """A pickle that would run a shell command when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_round_trip_and_no_temp_files_left(tmp_path: Path) -> None:
    path = _ckpt(tmp_path)
    model, ckpt = load_model(path)
    assert ckpt["arch"] == "pspnet_r18" and ckpt["iteration"] == 3 and ckpt["role"] == "student"
    assert not model.training
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_executable_pickle_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    torch.save({"format": "segkd-checkpoint", "x": Payload(marker)}, bad)
    with pytest.raises(SegkdError, match=r"refused to load .*evil\.pt"):
        load_checkpoint(bad)
    assert not marker.exists()


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = _ckpt(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SegkdError, match=r"cut\.pt"):
        load_checkpoint(cut)


def test_other_files_are_not_checkpoints(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(SegkdError, match="not a segkd checkpoint"):
        load_checkpoint(plain)
    with pytest.raises(SegkdError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_weights_of_another_class_count_do_not_load(tmp_path: Path) -> None:
    path = _ckpt(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["num_classes"] = 5  # metadata says 5 (labels too, consistently), weights hold 3
    ckpt["labels"] = {
        **ckpt["labels"],
        "names": [*ckpt["labels"]["names"], "d", "e"],
        "palette": [*ckpt["labels"]["palette"], [1, 2, 3], [4, 5, 6]],
    }
    bad = tmp_path / "mismatch.pt"
    atomic_torch_save(ckpt, bad)
    with pytest.raises(SegkdError, match="do not fit pspnet_r18 with 5 classes"):
        load_model(bad)


def test_weights_of_another_architecture_do_not_load(tmp_path: Path) -> None:
    ckpt = torch.load(_ckpt(tmp_path), weights_only=True)
    ckpt["arch"] = "deeplabv3_r18"
    bad = tmp_path / "arch.pt"
    atomic_torch_save(ckpt, bad)
    with pytest.raises(SegkdError, match="do not fit deeplabv3_r18"):
        load_model(bad)


def test_failed_save_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "keep.pt"
    atomic_torch_save({"v": torch.ones(1)}, path)

    class Unsaveable:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"v": Unsaveable()}, path)
    assert torch.load(path, weights_only=True)["v"].item() == 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["keep.pt"]
