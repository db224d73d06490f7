"""Issue 23: each failure closed as a class. One test per class tries many spellings and
members of it through the real command line; where a failure could damage a result
already written, every file the test made is checked byte for byte (sha256) afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests import test_bad_inputs as rows
from tests.test_bad_inputs import (
    EXPORT_FAST,
    Run,
    assert_one_error,
    export_folder_with,
    make_folder,
    sha256,
    write_video,
)

# The fixtures of the older rows, shared (pytest finds fixtures by module attribute).
models, data, segkd_here = rows.models, rows.data, rows.segkd_here


def tree_hashes(root: Path) -> dict[str, str]:
    """Every file under root (symlinks not followed) -> sha256: the 'nothing changed' check."""
    found = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath, name)
            if not p.is_symlink():
                found[str(p.relative_to(root))] = sha256(p)
    return found


# -- class 1: an output on anything the command reads or writes --------------------------
@pytest.fixture()
def workspace(models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp/w: ex/ (an export folder), ds/ (a dataset), in.mp4, student.pt, a symlink
    `link` -> ex, a hard link `hard.onnx` to ex/model.onnx; the cwd is w."""
    w = tmp_path / "w"
    w.mkdir()
    export_folder_with(models, w / "ex")
    make_folder(w / "ds", splits=True)
    write_video(w / "in.mp4", 3, "mp4v")
    shutil.copy(models["three"], w / "student.pt")
    (w / "link").symlink_to(w / "ex", target_is_directory=True)
    os.link(w / "ex" / "model.onnx", w / "hard.onnx")
    (w / "run").mkdir()
    shutil.copy(models["three"], w / "run" / "best.pt")
    (w / "p.yaml").write_text("data: synthetic:size=64x128,train=2,val=1\n")
    monkeypatch.chdir(w)
    return w


# Spellings of the export folder's manifest: relative, ./, ../, symlinked, absolute,
# through `..`, with a doubled slash.
MANIFEST = ["ex/export.json", "./ex/export.json", "../w/ex/export.json", "link/export.json",
            "{w}/ex/export.json", "ex/../ex/export.json", "ex//export.json"]  # fmt: skip
# Other members: the folder itself (with and without a trailing slash, through the link),
# the artifact just run, a hard link to it, a new file inside the folder.
FOLDER = ["ex", "ex/", "./link/", "ex/model.onnx", "hard.onnx", "ex/new.json", "link/new.json"]
DEMO = ("demo", "in.mp4", "--out", "o.mp4")
TRAIN = ("--data", "folder:ds", "--iters", "1", "--batch-size", "2", "--crop-size", "32x32")

CASES: list[tuple[tuple[str, ...], str]] = [
    *((("eval", "ex", "--data", "folder:ds", "--json", s), "--json") for s in MANIFEST + FOLDER),
    *(
        (("eval", "ex/model.onnx", "--data", "folder:ds", "--json", s), "--json")
        for s in ["ex/export.json", "link/model.onnx", "ex/model.onnx.json"]
    ),
    *((("bench", "ex", "--iters", "1", "--json", s), "--json") for s in MANIFEST[:4] + FOLDER[:4]),
    *((("bench", "ex/model.onnx", "--json", s), "--json") for s in ["ex/", "hard.onnx"]),
    *(
        (("demo", "in.mp4", "--model", "ex", "--out", "o.mp4", "--json", s), "--json")
        for s in ["ex/export.json", "link/", "in.mp4", "o.mp4", "./o.mp4"]
    ),
    (("demo", "in.mp4", "--model", "ex", "--out", "ex/o.mp4"), "--out"),
    (("demo", "in.mp4", "--model", "ex", "--out", "frames", "--json", "frames/s.json"), "--json"),
    (("demo", "ds/images", "--model", "ex", "--out", "ds/images/"), "--out"),
    (("demo", "ds/images", "--model", "ex", "--out", "ds"), "--out"),
    (("eval", "ex", "--data", "folder:ds", "--json", "ds/r.json"), "--json"),
    (
        ("eval", "ex", "--data", "folder:./ds/", "--save-predictions", "ds/masks"),
        "--save-predictions",
    ),
    (("eval", "ex", "--data", "folder:ds", "--save-predictions", "."), "--save-predictions"),
    (
        ("eval", "ex", "--data", "folder:ds", "--save-predictions", "p", "--json", "p/r.json"),
        "--json",
    ),
    (("eval", "mmseg:student.pt", "--data", "folder:ds", "--json", "student.pt"), "--json"),
    (
        ("eval", "ex", "--reference", "student.pt", "--data", "folder:ds", "--json", "student.pt"),
        "--json",
    ),
    (("export", "student.pt", *EXPORT_FAST, "--out", "e2", "--json", "e2/export.json"), "--json"),
    (("export", "student.pt", *EXPORT_FAST, "--out", "."), "--out"),
    (("export", "student.pt", *EXPORT_FAST, "--calib-data", "folder:ds", "--out", "ds/e"), "--out"),
    (("export", "student.pt", *EXPORT_FAST, "--out", "e2", "--json", "student.pt"), "--json"),
    (("train", "--model", "pspnet_r18", *TRAIN, "--out", "ds/run"), "--out"),
    (
        (
            "train",
            "--model",
            "pspnet_r18",
            *TRAIN,
            "--out",
            "run",
            "--backbone-weights",
            "run/best.pt",
        ),
        "--out",
    ),
    (("distill", "--teacher", "run/best.pt", *TRAIN, "--out", "./run/"), "--out"),
    (("distill", "--teacher", "cirkd:run/best.pt", *TRAIN, "--out", "run"), "--out"),
    (("pipeline", "--config", "p.yaml", "--out", "p.yaml"), "--out"),
    (("pipeline", "--out", "ds/", "--data", "folder:ds"), "--out"),
    (("pipeline", "--out", "run/x", "--teacher", "./run/"), "--out"),
    (("models", "--json", "ex/"), "--json"),
]


def test_any_output_on_an_input_or_another_output_is_refused(
    segkd_here: Run, workspace: Path
) -> None:
    """Each row: exit 2, one `error:` line naming the option, every file in the workspace
    byte-identical, and nothing new written."""
    before = tree_hashes(workspace)
    names = sorted(os.listdir(workspace))
    failures = []
    for args, option in CASES:
        argv = [a.format(w=workspace) for a in args]
        r = segkd_here(*argv)
        try:
            line = assert_one_error(r, option)
            assert "choose" in line or "give" in line, line
        except AssertionError as e:
            failures.append(f"{' '.join(argv)}: {e}")
        assert tree_hashes(workspace) == before, argv
        assert sorted(os.listdir(workspace)) == names, argv
    assert not failures, "\n".join(failures)
    assert len(CASES) >= 50  # the matrix's size is stated in docs/TROUBLESHOOTING.md


def test_the_guard_lets_ordinary_outputs_through(segkd_here: Run, workspace: Path) -> None:
    """The same workspace, outputs beside the inputs: the guard is not what fails above."""
    r = segkd_here("eval", "link/", "--data", "folder:./ds/", "--json", "r.json",
                   "--save-predictions", "preds")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(Path("r.json").read_text())["miou"] >= 0
    assert (workspace / "preds").is_dir()
