"""An export folder is replaced all at once or not at all, whatever write fails.

A real export of a small untrained PSPNet-R18 runs once per write it makes; each run
injects a full disk (ENOSPC) at one more write: in the writer itself (after the bytes
went to the temp file), in each rename, link and in the final folder swap. After every
failed run the earlier export must be byte for byte what it was; after the clean run it
must be exactly the new export, the user's own file kept, and every hash check pass.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from core import atomic_io
from core.errors import SegkdError
from core.labels import LabelSpec
from core.preprocess import PreprocessSpec
from distill.checkpoint import atomic_torch_save, make_checkpoint
from distill.models import build_model
from export.api import Tolerances, export_checkpoint
from runtime.loader import open_segmenter

DATA = "synthetic:size=64x128,train=2,val=1"
FAST = {"calib_data": DATA, "verify_images": 1, "simplify": False, "build_engines": False}
NEW_FILES = {"export.json", "model.onnx", "model.fp16.onnx", "reference.npz", "notes.txt"}
LOOSE = Tolerances(fp16_min_agreement=0.0)  # an untrained net: fp16 may flip labels


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model("pspnet_r18", 3, aux=False).eval()
    path = tmp_path_factory.mktemp("ckpt") / "student.pt"
    atomic_torch_save(
        make_checkpoint(
            model=model, arch="pspnet_r18", model_kwargs=model.model_kwargs,
            labels=LabelSpec(names=("a", "b", "c")), preprocess=PreprocessSpec(input_size=(32, 32)),
        ),
        path,
    )  # fmt: skip
    return path


def snapshot(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


class DiskFull:
    """Counts every write-like call; raises ENOSPC at the `fail_at`-th one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fail_at: int | None = None
        self.count = 0
        real_output = atomic_io.atomic_output

        @contextmanager
        def output(path: str | Path, mode: str = "wb", *args: Any, **kw: Any) -> Iterator[object]:
            with real_output(path, mode, *args, **kw) as f:
                yield f
                self.tick()  # the bytes are in the temp file; the disk fills before the rename

        def wrap(real):  # type: ignore[no-untyped-def]
            def call(*args, **kwargs):  # type: ignore[no-untyped-def]
                self.tick()
                return real(*args, **kwargs)

            return call

        monkeypatch.setattr(atomic_io, "atomic_output", output)
        monkeypatch.setattr(atomic_io, "_exchange", wrap(atomic_io._exchange))
        for name in ("replace", "rename", "link"):
            monkeypatch.setattr(os, name, wrap(getattr(os, name)))

    def tick(self) -> None:
        self.count += 1
        if self.count == self.fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_at_any_write_leaves_the_old_export_whole(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "export"
    export_checkpoint(ckpt, out, precisions="fp32", tolerances=LOOSE, **FAST)
    (out / "notes.txt").write_text("the user's own file")
    old = snapshot(out)
    assert set(old) == {"export.json", "model.onnx", "reference.npz", "notes.txt"}

    new_run = {"precisions": "fp32,fp16", "tolerances": LOOSE, **FAST}
    # Count the writes of a clean run over a copy of the old export, then fail each in turn.
    scratch = tmp_path / "scratch"
    shutil.copytree(out, scratch)
    disk = DiskFull(monkeypatch)
    export_checkpoint(ckpt, scratch, **new_run)
    writes = disk.count
    shutil.rmtree(scratch)
    assert writes >= 9, writes  # 2 ONNX files + renames, 2 moves, a link, export.json, swap
    pristine = tmp_path / "pristine"
    shutil.copytree(out, pristine)
    failed = 0
    for k in range(1, writes + 1):
        disk.count, disk.fail_at = 0, k
        try:
            export_checkpoint(ckpt, out, **new_run)
        except SegkdError as e:  # the export failed: the old folder, byte for byte
            assert "No space left on device" in str(e) and "unchanged" in str(e), e
            assert snapshot(out) == old, f"write {k} of {writes} damaged the old export"
            failed += 1
        else:  # a write with a fallback (a hard link became a copy): entirely the new one
            assert set(snapshot(out)) == NEW_FILES, k
            shutil.rmtree(out)
            shutil.copytree(pristine, out)
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
        assert not leftovers, (k, leftovers)
    assert failed >= writes - 1, (failed, writes)
    disk.fail_at = None
    export_checkpoint(ckpt, out, **new_run)
    new = snapshot(out)
    assert set(new) == NEW_FILES
    assert new["notes.txt"] == old["notes.txt"]
    listed = {a["file"] for a in json.loads((out / "export.json").read_text())["artifacts"]}
    assert listed == {"model.onnx", "model.fp16.onnx"}
    for precision in ("fp32", "fp16"):
        with open_segmenter(out, "onnxruntime", "cpu", precision):  # checks the sha256
            pass


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.5])
@pytest.mark.parametrize(
    ("field", "option"),
    [("int8_min_agreement", "--min-agreement-int8"), ("fp16_min_agreement", "--min-agreement-fp16"),
     ("fp32_max_abs_diff", "fp32_max_abs_diff")],
)  # fmt: skip
def test_a_nan_gate_is_refused(field: str, option: str, bad: float) -> None:
    with pytest.raises(SegkdError, match=option):
        Tolerances(**{field: bad})


def test_a_folder_that_is_not_an_export_is_not_replaced(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(SegkdError, match="not an export folder"):
        export_checkpoint(ckpt, out, precisions="fp32", **FAST)
    assert snapshot(out) == {"holiday.jpg": hashlib.sha256(b"not ours").hexdigest()}


def test_publish_falls_back_to_two_renames_and_restores_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the file system cannot exchange two folders, a failed second rename puts the
    old folder back under its name."""
    target, new = tmp_path / "exp", tmp_path / ".new"
    target.mkdir()
    (target / "a").write_text("old")
    new.mkdir()
    (new / "a").write_text("new")
    monkeypatch.setattr(atomic_io, "_exchange", lambda a, b: False)
    real_rename = os.rename
    calls = []

    def rename(src, dst):  # type: ignore[no-untyped-def]
        calls.append(src)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError):
        atomic_io.publish_folder(new, target)
    assert (target / "a").read_text() == "old"
    monkeypatch.setattr(os, "rename", real_rename)
    atomic_io.publish_folder(new, target)
    assert (target / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


def test_files_written_into_out_during_the_export_are_kept(ckpt: Path, tmp_path: Path) -> None:
    """An --engine-cache inside --out fills while the export runs: the swap must keep it."""
    out = tmp_path / "export"

    def progress(msg: str) -> None:
        if msg.startswith("verifying"):  # as TensorRT's cache would, mid-export
            (out / "cache").mkdir(parents=True, exist_ok=True)
            (out / "cache" / "timing.bin").write_bytes(b"cache")

    export_checkpoint(ckpt, out, precisions="fp32", progress=progress, **FAST)
    assert set(snapshot(out)) == {"export.json", "model.onnx", "reference.npz", "cache/timing.bin"}


def test_a_full_temporary_folder_during_calibration_is_one_error_not_a_fallback(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI once filled /tmp while onnxruntime pre-processed the graph for calibration. The
    pre-processing failure was taken for a graph it cannot handle, the export went on with
    the unprocessed graph and died later on a half-written file ("Missing opset"). A full
    disk is the user's to fix: one error naming the temporary folder, nothing written."""
    import tempfile

    import export.int8 as int8

    def full(src: str, dst: str, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dst)

    monkeypatch.setattr(int8, "quant_pre_process", full)
    out = tmp_path / "export"
    with pytest.raises(SegkdError) as e:
        export_checkpoint(ckpt, out, precisions="fp32,int8", tolerances=LOOSE, **FAST)
    msg = str(e.value)
    assert "No space left on device" in msg and "nothing was written" in msg, msg
    assert f"temporary folder {tempfile.gettempdir()}" in msg and "TMPDIR" in msg, msg
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []
