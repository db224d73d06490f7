"""Issue 23: each failure closed as a class. One test per class tries many spellings and
members of it through the real command line; where a failure could damage a result
already written, every file the test made is checked byte for byte (sha256) afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
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
segkd = rows.segkd


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


# -- classes 2, 3, 6: a demo that cannot write, or would mix with what is there -------
@contextlib.contextmanager
def small_filesystem(path: Path, free_kb: int) -> Iterator[Path]:
    """A tmpfs of 2 MiB at `path` filled up to `free_kb` KiB free (a full disk, for real).
    Needs root (mount); skips with that reason elsewhere: the RLIMIT_FSIZE rows still run."""
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(fs: Path, free_kb: int) -> None:
    st = os.statvfs(fs)
    (fs / "filler").write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - free_kb * 1024))


def segkd_limited(*args: Any, fsize: int) -> subprocess.CompletedProcess[str]:
    """`segkd ARGS` where no file may grow past `fsize` bytes (RLIMIT_FSIZE; SIGXFSZ
    ignored, so a write fails with EFBIG as on a full disk). Needs no root."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = {**os.environ, "PYTHONPATH": str(rows.REPO), "OMP_NUM_THREADS": "2",
           "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip
    return subprocess.run([sys.executable, "cli.py", *map(str, args)], cwd=rows.REPO, env=env,
                          capture_output=True, text=True, timeout=300, preexec_fn=limit)  # fmt: skip


def hidden_left(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".") and "tmp" in p.name]


def test_a_demo_that_cannot_write_fails_and_keeps_the_earlier_output(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """Full disk (video and images), a file-size limit, a folder named like the temporary
    file: exit non-zero within the timeout (no hang), one `error:` line naming --out
    (never a hidden name), the earlier video or folder byte-identical, no temporaries."""
    tiny = models["tiny"]
    long = write_video(tmp_path / "long.avi", 300, "MJPG")
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(40):
        cv2.imwrite(str(frames / f"f{i:03d}.png"), np.random.default_rng(i).integers(
            0, 256, (120, 160, 3), np.uint8))  # fmt: skip

    # size limit: the video outgrows 40 KB (the earlier one is smaller)
    old = write_video(tmp_path / "o.mp4", 3, "mp4v")
    before = sha256(old)
    r = segkd_limited("demo", long, "--model", tiny, "--out", old, fsize=40_000)
    assert_one_error(r, "--out", old, only=False)
    assert sha256(old) == before and not hidden_left(tmp_path)

    # the temporary name taken by a folder: named as the user's --out, nothing replaced
    (tmp_path / ".o.tmp.mp4").mkdir()
    r = segkd("demo", long, "--model", tiny, "--out", old, "--max-frames", "3")
    assert_one_error(r, "--out", old)
    assert sha256(old) == before
    (tmp_path / ".o.tmp.mp4").rmdir()

    with small_filesystem(tmp_path / "full", 0) as fs:
        # an earlier good video, then about 60 KB free
        good = shutil.copy(write_video(tmp_path / "good.mp4", 20, "mp4v"), fs / "o.mp4")
        ok = segkd("demo", frames, "--model", tiny, "--out", fs / "run", "--max-frames", "3")
        assert ok.returncode == 0, ok.stderr  # an earlier image run: 3 frames
        run_before, video_before = tree_hashes(fs / "run"), sha256(Path(good))
        fill(fs, 60)
        r = segkd("demo", long, "--model", tiny, "--out", fs / "o.mp4", timeout=300)
        assert_one_error(r, "--out", fs / "o.mp4", only=False)
        assert ".o.tmp" not in bar_error(r)
        assert sha256(Path(good)) == video_before
        r = segkd("demo", frames, "--model", tiny, "--out", fs / "run", timeout=300)
        assert_one_error(r, "--out", fs / "run", only=False)
        assert tree_hashes(fs / "run") == run_before
        assert not hidden_left(fs)


def bar_error(r: subprocess.CompletedProcess[str]) -> str:
    return next(line for line in r.stderr.splitlines() if line.startswith("error:"))


def test_a_demo_folder_is_replaced_whole_or_refused(
    segkd_here: Run, models: dict[str, Path], tmp_path: Path
) -> None:
    """Class 3: a non-empty folder that is not an earlier demo run is refused untouched
    (photos, a folder holding a folder named like a frame, a hidden file only); an
    earlier demo run is replaced whole: two runs never mix."""
    tiny = models["tiny"]
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, names in ((a, ["x1", "x2", "x3"]), (b, ["y1", "y2"])):
        folder.mkdir()
        for i, name in enumerate(names):
            cv2.imwrite(str(folder / f"{name}.png"), np.full((40, 48, 3), 60 * i, np.uint8))
    others = {
        "photos": {"holiday.jpg": b"\xff\xd8 my photo"},
        "frame-named-folder": {"x1.jpg/keep.txt": b"mine"},
        "hidden-only": {".config": b"mine"},
        "other-marker": {".segkd-demo": b"not the marker"},
    }
    for name, files in others.items():
        for rel, content in files.items():
            p = tmp_path / name / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(content)
        before = tree_hashes(tmp_path / name)
        for spelling in (tmp_path / name, f"{tmp_path / name}/"):
            r = segkd_here("demo", a, "--model", tiny, "--out", spelling)
            assert_one_error(r, "--out", tmp_path / name, "choose a new or empty folder")
            assert tree_hashes(tmp_path / name) == before
    out = tmp_path / "run"
    assert segkd("demo", a, "--model", tiny, "--out", out).returncode == 0
    assert sorted(p.name for p in out.glob("*.jpg")) == ["x1.jpg", "x2.jpg", "x3.jpg"]
    assert segkd("demo", b, "--model", tiny, "--out", out).returncode == 0
    assert sorted(p.name for p in out.glob("*.jpg")) == ["y1.jpg", "y2.jpg"]  # not mixed
    assert not hidden_left(tmp_path)
    help_text = re.sub(r"[│─╭╮╰╯]", " ", segkd("demo", "--help").stdout)  # rich's box
    assert "earlier demo run" in " ".join(help_text.split())


# -- class 4: inputs that used to give a plausible, wrong result --------------------------
def nan_copy(src: Path, dst: Path, value: float = float("nan"), only_first: bool = False) -> Path:
    import torch

    ckpt = torch.load(src, weights_only=True)
    for i, (key, t) in enumerate(ckpt["state_dict"].items()):
        if t.is_floating_point() and (not only_first or i == 0):
            ckpt["state_dict"][key] = torch.full_like(t, value)
    torch.save(ckpt, dst)
    return dst


def test_inputs_that_would_give_a_silently_wrong_result_are_refused(
    segkd_here: Run, models: dict[str, Path], tmp_path: Path
) -> None:
    import torch

    syn = ("--data", "synthetic:size=64x128,train=4,val=2")
    nan_pt = nan_copy(models["three"], tmp_path / "nan.pt")
    one_inf = nan_copy(models["three"], tmp_path / "inf.pt", float("inf"), only_first=True)
    mm = tmp_path / "mm.pth"  # an mmseg-layout file whose weights are NaN
    torch.save({"meta": {"CLASSES": ["road"]},
                "state_dict": {"backbone.conv1.weight": torch.full((4, 3, 3, 3), float("nan"))}},
               mm)  # fmt: skip
    distill = ("distill", "--teacher", models["three"], *syn, "--out", tmp_path / "d")
    cases: list[tuple[tuple[Any, ...], tuple[Any, ...]]] = [
        (("eval", nan_pt, *syn), (nan_pt, "NaN/inf")),
        (("eval", one_inf, *syn), (one_inf, "NaN/inf")),
        (("export", nan_pt, *EXPORT_FAST, "--out", tmp_path / "e"), (nan_pt, "NaN/inf")),
        (("eval", f"mmseg:{mm}", *syn), (mm, "NaN/inf")),
        (("distill", "--teacher", mm, *syn, "--out", tmp_path / "d"), (mm, "NaN/inf")),
        (("distill", "--teacher", nan_pt, *syn, "--out", tmp_path / "d"), (nan_pt, "NaN/inf")),
        ((*distill, "--losses", ""), ("--losses", "no distillation term")),
        ((*distill, "--losses", ","), ("--losses", "no distillation term")),
        ((*distill, "--losses", " , "), ("--losses", "no distillation term")),
        ((*distill, "--losses", "kd", "--w-kd", "0"), ("--losses", "no distillation term")),
        (("pipeline", "--out", tmp_path / "p", *syn, "--set", "distill.losses=[]"),
         ("distill.losses", "no distillation term")),
        (("pipeline", "--out", tmp_path / "p", *syn, "--set", "distill.losses=''"),
         ("distill.losses", "no distillation term")),
    ]  # fmt: skip
    for args, needles in cases:
        assert_one_error(segkd_here(*args), *needles)
    assert not any((tmp_path / n).exists() for n in ("d", "e", "p"))


def test_byte_order_marks_and_crlf_in_text_inputs_are_read_as_text(
    segkd_here: Run, models: dict[str, Path], tmp_path: Path
) -> None:
    """A BOM (Windows editors) or CRLF in classes.txt, a split list, a config, export.json:
    class 0 is "road", not "\\ufeffroad"; the split's first id is found; keys parse."""
    ds = make_folder(tmp_path / "ds", splits=True)
    bom = "\ufeff"
    classes = (ds / "classes.txt").read_text()
    (ds / "classes.txt").write_text(bom + classes.replace("\n", "\r\n"), newline="")
    for split in ("train", "val"):
        path = ds / "splits" / f"{split}.txt"
        path.write_text(bom + path.read_text().replace("\n", "\r\n"), newline="")
    ex = export_folder_with(models, tmp_path / "ex")
    (ex / "export.json").write_text(bom + (ex / "export.json").read_text())
    out = tmp_path / "r.json"
    r = segkd_here("eval", ex, "--data", f"folder:{ds}", "--json", out)
    assert r.returncode == 0, r.stderr
    iou = json.loads(out.read_text())["iou"]
    assert list(iou) == classes.split()  # no BOM in class 0's name
    assert json.loads(out.read_text())["num_samples"] == 2
    for suffix, text in ((".yaml", "data: synthetic\nseed: [oops\n"), (".toml", "seed = 'x'\n")):
        cfg = tmp_path / f"c{suffix}"
        cfg.write_text(bom + text)
        line = assert_one_error(segkd_here("pipeline", "--config", cfg, "--out", tmp_path / "p"))
        assert bom not in line and "\\ufeff" not in line


# -- classes 8 and 9: values that used to end in a traceback deep inside -----------------
def checkpoint_with(src: Path, dst: Path, **changes: Any) -> Path:
    import torch

    ckpt = torch.load(src, weights_only=True)
    for key, value in changes.items():
        if key == "palette":
            ckpt["labels"]["palette"] = value
        elif key == "names":
            ckpt["labels"]["names"] = value
        else:
            ckpt[key] = value
    torch.save(ckpt, dst)
    return dst


BAD_PALETTES = [
    [[300, 0, 0], [0, 0, 0], [1, 1, 1]],
    [[-1, 0, 0], [0, 0, 0], [1, 1, 1]],
    [[1.5, 0, 0], [0, 0, 0], [1, 1, 1]],
    [["a", 0, 0], [0, 0, 0], [1, 1, 1]],
    [[0, 0], [0, 0, 0], [1, 1, 1]],
    [[True, 0, 0], [0, 0, 0], [1, 1, 1]],
    "red",
]


def test_palettes_names_and_class_counts_are_checked_where_they_enter(
    segkd_here: Run, models: dict[str, Path], tmp_path: Path
) -> None:
    """Checkpoint, export.json, a `<model>.json` sidecar and classes.txt: a colour outside
    0..255 (or not three integers), names given as one string, an absurd class count."""
    syn = ("--data", "synthetic:size=64x128,train=2,val=1")
    for i, palette in enumerate(BAD_PALETTES):
        ck = checkpoint_with(models["three"], tmp_path / f"p{i}.pt", palette=palette)
        for cmd in (("export", ck, *EXPORT_FAST, "--out", tmp_path / "e"), ("eval", ck, *syn)):
            assert_one_error(segkd_here(*cmd), ck, "palette")
    for changes, needle in (({"names": "roa"}, "names"), ({"num_classes": 10**12}, "num_classes")):
        ck = checkpoint_with(models["three"], tmp_path / "n.pt", **changes)
        assert_one_error(
            segkd_here("export", ck, *EXPORT_FAST, "--out", tmp_path / "e"), ck, needle
        )
    assert_one_error(segkd_here("models", "--num-classes", str(10**12)), "--num-classes")
    assert not (tmp_path / "e").exists()

    ds = make_folder(tmp_path / "ds", splits=True)
    for i, (palette, needle) in enumerate(((256, "palette"), ("red", "palette"))):
        ex = export_folder_with(models, tmp_path / f"ex{i}")
        manifest = json.loads((ex / "export.json").read_text())
        manifest["labels"]["palette"][1] = [palette, 0, 0] if palette == 256 else palette
        (ex / "export.json").write_text(json.dumps(manifest))
        r = segkd_here("eval", ex, "--data", f"folder:{ds}")
        assert_one_error(r, ex / "export.json", needle)
    names = export_folder_with(models, tmp_path / "exn", labels={"names": "road"})
    assert_one_error(segkd_here("eval", names, "--data", f"folder:{ds}"), "names")
    plain = tmp_path / "plain.onnx"
    shutil.copy(models["plain"], plain)
    meta = json.loads(json.dumps(rows.segkd_meta("logits")))
    meta["labels"]["palette"] = [[0, 0, 999]] * len(meta["labels"]["names"])
    (tmp_path / "plain.onnx.json").write_text(json.dumps(meta))
    assert_one_error(segkd_here("eval", plain, "--data", f"folder:{ds}"), "plain.onnx.json")
    deep = export_folder_with(models, tmp_path / "deep")
    (deep / "export.json").write_text("[" * 100_000 + "]" * 100_000)
    assert_one_error(segkd_here("eval", deep, "--data", f"folder:{ds}"), "export.json", "nested")
    (ds / "classes.txt").write_text("road 0 0 256\ncar 1 2 3\nsky 3 3 3\nx 4 4 4\n")
    assert_one_error(segkd_here("eval", models["tiny"], "--data", f"folder:{ds}"),
                     ds / "classes.txt", "0..255")  # fmt: skip


# -- class 14: an option the user never gave --------------------------------------------
def test_convention_auto_resolves_for_each_model(
    segkd_here: Run, models: dict[str, Path], tmp_path: Path
) -> None:
    """A label-map artifact against a logits model, either way round: `auto` scores each
    as it can (and says so); an explicit --convention the artifact cannot do is refused."""
    import torch

    from tests.runtime.rt_models import export_onnx, make_tiny_net, segkd_meta

    class LabelMaps(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = make_tiny_net(0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).argmax(1).to(torch.int32)

    lab = export_onnx(LabelMaps(), tmp_path / "lab.onnx", "labels", segkd_meta("labels"))
    ds = make_folder(tmp_path / "ds", splits=True)
    out = tmp_path / "r.json"
    for model, ref in ((lab, models["tiny"]), (models["tiny"], lab)):
        r = segkd_here("eval", model, "--data", f"folder:{ds}", "--reference", ref, "--json", out)
        assert r.returncode == 0, r.stderr
        payload = json.loads(out.read_text())
        assert {payload["convention"], payload["reference"]["convention"]} == {"labels", "logits"}
        assert "note: the reference was scored" in " ".join(r.stdout.split())
    r = segkd_here("eval", models["tiny"], "--data", f"folder:{ds}", "--reference", lab,
                   "--convention", "logits")  # fmt: skip
    assert_one_error(r, "--convention logits", lab)


# -- class 5: a resumed run takes its settings from the run -------------------------------
def test_resume_keeps_the_run_settings_unless_a_change_is_named(
    segkd_here: Run, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    data = "synthetic:size=64x128,train=4,val=2"
    base = ("train", "--out", out, "--num-workers", "0", "--device", "cpu")
    first = (*base, "--data", data, "--iters", "2", "--batch-size", "2", "--crop-size", "32x32")
    assert segkd_here(*first).returncode == 0
    before = tree_hashes(out)
    cases: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
        (("--lr", "0.5"), ("--lr 0.5", "--change lr")),
        (("--batch-size", "4"), ("--batch-size 4", "--change batch-size")),
        (("--crop-size", "48x48"), ("--crop-size 48x48", "32x32")),
        (("--data", data + ",seed=5"), ("--data", "seed=5", "--change data")),
        (("--seed", "3"), ("--seed 3", "--change seed")),
        (("--weight-decay", "0.1"), ("--weight-decay",)),
        (("--iters", "4"), ("--iters 4", "--change iters")),
        ((), ("finished", "iteration 2")),  # no --iters: the run's 2, not the default 300
        (("--data", data), ("finished",)),  # the same value typed: accepted, then finished
        (("--change", "bogus"), ("--change", "bogus")),
    ]
    for extra, needles in cases:
        assert_one_error(segkd_here(*base, "--resume", *extra), *needles)
        assert tree_hashes(out) == before, extra
    assert_one_error(segkd_here(*first, "--change", "lr"), "--change", "--resume")
    r = segkd_here(*base, "--resume", "--iters", "3", "--change", "iters")
    assert r.returncode == 0, r.stderr
    import torch

    assert json.loads((out / "summary.json").read_text())["iters"] == 3
    config = torch.load(out / "last.pt", weights_only=True)["config"]
    assert (config["iters"], config["batch_size"], config["crop_size"]) == (3, 2, [32, 32])


# -- class 12: Ctrl-C and SIGTERM ---------------------------------------------------------
def test_ctrl_c_and_sigterm_end_with_one_line_saying_what_is_intact(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """A real signal to a running command (once its progress bar runs): exit 130 (SIGINT)
    or 143 (SIGTERM), no traceback, the last line says what stopped, what is intact and
    how to go on; the --json written before is unchanged."""
    import time

    json_out = tmp_path / "old.json"
    json_out.write_text("{}\n")
    cases = [
        (("train", "--data", "synthetic:size=64x128,train=64,val=2", "--iters", "100000",
          "--batch-size", "2", "--crop-size", "32x32", "--device", "cpu", "--num-workers", "0",
          "--out", tmp_path / "run"), signal.SIGINT, 130, ("train stopped", "--resume")),
        (("bench", models["tiny"], "--iters", "1000000", "--json", json_out), signal.SIGTERM,
         143, ("bench stopped", "old.json was not written")),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(rows.REPO), "OMP_NUM_THREADS": "1"}
    for args, sig, code, needles in cases:
        err_file = tmp_path / "stderr.txt"
        with err_file.open("w") as err_sink:
            proc = subprocess.Popen([sys.executable, "cli.py", *map(str, args)], cwd=rows.REPO,
                                    env=env, stdout=subprocess.DEVNULL, stderr=err_sink)  # fmt: skip
            end = time.monotonic() + 240
            while "it/s" not in err_file.read_text() and "s/it" not in err_file.read_text():
                assert proc.poll() is None and time.monotonic() < end, err_file.read_text()
                time.sleep(0.2)
            proc.send_signal(sig)
            assert proc.wait(timeout=300) == code, err_file.read_text()[-2000:]
        err = err_file.read_text()
        assert "Traceback" not in err, err[-2000:]
        last = rows.shown_lines(err)[-1]
        assert last.startswith(("interrupted:", "terminated")), last
        for needle in needles:
            assert needle in last, last
    assert json_out.read_text() == "{}\n"


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["export", "a.pt", "--out", "ex"], ("export stopped", "ex is as it was")),
        (["pipeline", "--out=p"], ("pipeline stopped", "kept in p", "again")),
        (["distill", "--teacher", "t.pt"], ("runs/distill", "--resume")),
        (["eval", "m.onnx", "--json", "r.json"], ("eval stopped", "r.json was not written")),
    ],
)
def test_the_interrupted_line_of_each_command(argv: list[str], needles: tuple[str, ...]) -> None:
    from runtime.interrupted import Terminated, interrupted_line

    for e, head in ((KeyboardInterrupt(), "interrupted:"), (Terminated(), "terminated")):
        line = interrupted_line(argv, e)
        assert line.startswith(head) and all(n in line for n in needles), line


# -- class 7: a full disk while training --------------------------------------------------
def test_a_checkpoint_write_on_a_full_disk_is_one_line_and_keeps_the_old_file(
    tmp_path: Path,
) -> None:
    """The writer every checkpoint goes through (best/last/resume.pt, the readout cache),
    on a real full tmpfs: one SegkdError naming the file (not torch's RuntimeError), the
    earlier file byte-identical, no temporary left. Sizes: 16 KiB free, 4 MiB of tensors,
    and 40 KiB free with many small tensors (torch fails at close there)."""
    import torch

    from core.errors import SegkdError
    from distill.checkpoint import atomic_torch_save

    with small_filesystem(tmp_path / "fs", 0) as fs:
        path = fs / "last.pt"
        atomic_torch_save({"w": torch.ones(10)}, path)
        before = sha256(path)
        for free_kb, obj in ((16, {"w": torch.ones(1 << 20)}),
                             (40, {f"w{i}": torch.ones(4096) for i in range(64)})):  # fmt: skip
            fill(fs, free_kb)
            with pytest.raises(SegkdError) as info:
                atomic_torch_save(obj, path)
            line = str(info.value)
            assert str(path) in line and "full disk" in line and ".tmp" not in line, line
            assert sha256(path) == before
            assert not hidden_left(fs)
            (fs / "filler").unlink()


# -- class 10: every value checked before the first step, in the user's words -----------
def test_values_are_refused_before_any_work_under_the_name_typed(
    segkd_here: Run, models: dict[str, Path], tmp_path: Path
) -> None:
    export = ("export", models["three"], *EXPORT_FAST, "--out", tmp_path / "e")
    pipeline = ("pipeline", "--out", tmp_path / "p", "--data", "synthetic:size=64x128")
    cases: list[tuple[tuple[Any, ...], tuple[str, ...]]] = [
        ((*export, "--min-int8", "nan"), ("--min-int8", "nan")),
        ((*export, "--min-int8", "95"), ("--min-int8", "<= 1")),
        ((*export, "--min-fp16", "-0.5"), ("--min-fp16", ">= 0")),
        ((*export, "--min-agreement-int8", "2"), ("--min-agreement-int8",)),
        ((*pipeline, "--set", "student_seeds=[4294967296]"), ("student_seeds", "4294967295")),
        ((*pipeline, "--set", "student_seeds=[-1]"), ("student_seeds",)),
        ((*pipeline, "--set", "distill.losses=[]"), ("distill.losses",)),
    ]
    for args, needles in cases:
        line = assert_one_error(segkd_here(*args), *needles)
        assert "--seed" not in line.replace("student_seeds", "")
    assert not (tmp_path / "e").exists() and not (tmp_path / "p" / "teacher").exists()


# -- class 13: model-zoo inputs named in the user's words --------------------------------
def test_zoo_inputs_are_named_as_given(
    segkd_here: Run, models: dict[str, Path], tmp_path: Path
) -> None:
    import torch

    syn = ("--data", "synthetic:size=64x128,train=4,val=2")
    ex = export_folder_with(models, tmp_path / "ex")
    meta_only = tmp_path / "meta.pth"
    torch.save({"meta": {"CLASSES": ["road"]}}, meta_only)
    folder = tmp_path / "teachers"
    folder.mkdir()
    distill = ("distill", *syn, "--out", tmp_path / "d", "--teacher")
    cases: list[tuple[tuple[Any, ...], tuple[Any, ...]]] = [
        (("eval", "mmseg:", *syn), ("mmseg:", "no file after")),
        (("eval", "torchvision:deeplabv3_resnet50:", *syn), ("no file after",)),
        (("eval", f"cirkd:{ex}/model.onnx", *syn), ("cirkd:", "without the prefix")),
        (("bench", f"mmseg:{ex}", "--iters", "1"), ("mmseg:", "without the prefix")),
        (("eval", "ex", "--reference", "mmseg:", *syn), ("--reference", "no file after")),
        ((*distill, folder), (folder, "is a folder")),
        ((*distill, f"mmseg:{meta_only}"), (meta_only, "no 'state_dict'")),
        ((*distill, meta_only), (meta_only, "no 'state_dict'")),
    ]
    for args, needles in cases:
        assert_one_error(segkd_here(*args), *needles)
    assert not (tmp_path / "d").exists()


# -- class 10 (labels): a label value outside 0..255 is named as what it is -------------
def label_layouts(root: Path) -> dict[str, tuple[str, Path]]:
    """One tiny dataset per reader (Cityscapes, VOC, ADE20K, folder), 8x10 pixels or more:
    kind -> (its --data spec, the mask file a bad value is written into)."""
    image = np.zeros((8, 10, 3), np.uint8)
    mask = np.zeros((8, 10), np.uint8)
    cs, voc, ade = root / "cs", root / "VOC2012", root / "ade"
    files = {
        cs / "leftImg8bit/val/aachen/a_000000_000001_leftImg8bit.png": image,
        cs / "gtFine/val/aachen/a_000000_000001_gtFine_labelIds.png": mask + 7,
        voc / "JPEGImages/v1.jpg": image,
        voc / "SegmentationClass/v1.png": mask,
        ade / "images/validation/ade1.jpg": image,
        ade / "annotations/validation/ade1.png": mask + 1,
    }
    for path, values in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), values)
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/val.txt").write_text("v1\n")
    folder = make_folder(root / "folder", splits=True)  # val: im4, im5
    return {
        "cityscapes": (
            f"cityscapes:{cs}",
            cs / "gtFine/val/aachen/a_000000_000001_gtFine_labelIds.png",
        ),
        "voc": (f"voc:{voc}", voc / "SegmentationClass/v1.png"),
        "ade20k": (f"ade20k:{ade}", ade / "annotations/validation/ade1.png"),
        "folder": (f"folder:{folder}", folder / "masks" / "im4.png"),
    }


def label_image(values: list[float], mode: str, shape: tuple[int, int]) -> Any:
    """A label image of `mode` whose first pixels hold `values` (the rest 0)."""
    from PIL import Image

    dtype = {"I": np.int32, "I;16": np.uint16, "F": np.float32, "P": np.uint8, "L": np.uint8}
    arr = np.zeros(shape, dtype[mode])
    arr.flat[: len(values)] = values
    im = Image.fromarray(arr, mode=None if mode == "I;16" else mode)
    if mode == "P":  # a full palette: without one Pillow renumbers the indices it saves
        im.putpalette([c for i in range(256) for c in (i, 255 - i, i // 2)])
    return im


# values written, image mode, what the error must say. PNG holds 8/16-bit; 32-bit integer
# and float masks are TIFF files (Pillow reads them whatever the name says).
BAD_LABELS: list[tuple[list[float], str, tuple[str, ...]]] = [
    ([-5, 250], "I", ("-5..250", "[-5]", "outside 0..255")),
    ([-5, 3], "I", ("-5..3", "[-5]")),
    ([-(2**31), 2**31 - 1], "I", ("[-2147483648, 2147483647]",)),
    (list(range(-30, 0)), "I", ("-30..", "and 20 more")),
    ([300, 2], "I;16", ("0..300", "[300]")),
    ([65531], "I;16", ("0..65531", "[65531]")),  # a -5 stored unsigned
    ([0.5, 2.25], "F", ("not whole numbers", "[0.5, 2.25]")),
    ([float("nan")], "F", ("NaN",)),
    ([float("inf")], "F", ("infinite",)),
    ([-1.0, 2.0], "F", ("-1..2", "[-1]")),
    ([256.0], "F", ("[256]",)),
]


def test_label_values_are_named_as_what_they_are(tmp_path: Path) -> None:
    """Every reader (Cityscapes, VOC, ADE20K, folder) goes through one label reader: a
    value outside 0..255 is named with the file, the values' range and the offending
    values, never as 'values up to 250'. A value in 0..255 that is no class (a palette or
    16-bit index >= the class count) names the values and the allowed ones."""
    from core.errors import SegkdError
    from distill.data import build_dataset

    layouts = label_layouts(tmp_path)
    failures = []
    for kind, (spec, mask) in layouts.items():
        shape = np.asarray(cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)).shape[:2]
        split = "val"
        rows_here = [*BAD_LABELS, ([200], "P", ("[200]", "neither a class")),
                     ([254], "L", ("[254]", "neither a class")),
                     ([200], "I;16", ("[200]", "neither a class"))]  # fmt: skip
        for values, mode, needles in rows_here:
            label_image(values, mode, shape).save(mask, format="TIFF" if mode in "IF" else "PNG")
            try:
                build_dataset(spec, split)[0]
                failures.append(f"{kind} {mode} {values}: accepted")
            except SegkdError as e:
                line = str(e)
                missing = [n for n in (str(mask), *needles) if n not in line]
                if missing or "up to" in line:
                    failures.append(f"{kind} {mode} {values}: {missing} not in {line}")
        # Whole numbers in range are read as they are, whatever the bit depth.
        ok = {"cityscapes": 7, "voc": 1, "ade20k": 1, "folder": 1}[kind]
        for mode in ("I", "I;16", "F", "L"):
            label_image([ok], mode, shape).save(mask, format="TIFF" if mode in "IF" else "PNG")
            assert build_dataset(spec, split)[0][1].dtype == np.uint8, (kind, mode)
    assert not failures, "\n".join(failures)


def test_a_bad_label_value_is_one_line_from_the_command(
    segkd_here: Run, models: dict[str, Path], tmp_path: Path
) -> None:
    """The same through `segkd eval` and `segkd train`: one `error:` line naming the mask."""
    data = make_folder(tmp_path / "ds", splits=True)
    mask = data / "masks" / "im4.png"  # in the val split
    label_image([-5, 250], "I", (rows.H, rows.W)).save(mask, format="TIFF")
    r = segkd_here("eval", models["tiny"], "--data", f"folder:{data}")
    assert "up to" not in assert_one_error(r, mask, "-5..250", "[-5]")
    for i in range(4):  # the train split: whichever the first batch draws is bad
        label_image([0.5], "F", (rows.H, rows.W)).save(data / "masks" / f"im{i}.png", "TIFF")
    r = segkd_here("train", "--data", f"folder:{data}", "--iters", "1", "--batch-size", "2",
                   "--crop-size", "32x32", "--num-workers", "0", "--out", tmp_path / "run")  # fmt: skip
    assert_one_error(r, data / "masks" / "im", "not whole numbers", "[0.5]", only=False)


# -- class 13 (readout): a stored readout with the right hash but bad contents ----------
def readout_corruptions(good: dict[str, Any]) -> dict[str, tuple[Any, str]]:
    """name -> (what the sidecar holds besides teacher_sha256, a word the warning says).
    `good` is a real fitted entry: {"readout": {...}, "report": {...}, "iters": n}."""
    import copy

    import torch

    def edited(change: Any) -> dict[str, Any]:
        entry = copy.deepcopy(good)
        change(entry["readout"], entry)
        return entry

    def non_finite(value: float) -> Any:
        def change(r: dict[str, Any], _e: Any) -> None:
            r["state_dict"]["body.2.weight"] = torch.full_like(r["state_dict"]["body.2.weight"],
                                                               value)  # fmt: skip

        return change

    return {
        "no readout": ({"report": {}}, "no 'readout'"),
        "readout not a dict": ({"readout": [1, 2]}, "no 'readout'"),
        "no state_dict": (edited(lambda r, e: r.pop("state_dict")), "incomplete"),
        "no kinds": (edited(lambda r, e: r.pop("kinds")), "incomplete"),
        "unknown kind": (edited(lambda r, e: r.update(kinds=["z", "y"])), "unknown position"),
        "targets vs kinds": (edited(lambda r, e: r.update(kinds=["x"])), "do not fit"),
        "hidden vs weights": (edited(lambda r, e: r.update(hidden=7)), "expected a tensor"),
        "another width": (edited(lambda r, e: r.update(in_channels=r["in_channels"] + 1)),
                          "feature channels"),
        "forged width": (edited(lambda r, e: r.update(in_channels=10**12)), "feature channels"),
        "NaN weights": (edited(non_finite(float("nan"))), "NaN/inf"),
        "inf weights": (edited(non_finite(float("inf"))), "NaN/inf"),
        "int weights": (edited(lambda r, e: r["state_dict"].update(
            {"body.0.bias": torch.zeros(r["hidden"], dtype=torch.int64)})), "non-float"),
        "a list, not a tensor": (edited(lambda r, e: r["state_dict"].update(
            {"body.0.bias": [0.0] * r["hidden"]})), "expected a tensor"),
        "truncated weight": (edited(lambda r, e: r["state_dict"].update(
            {"body.2.bias": r["state_dict"]["body.2.bias"][:1]})), "expected a tensor"),
        "extra entry": (edited(lambda r, e: r["state_dict"].update(extra=torch.ones(1))),
                        "unexpected"),
        "bad report": (edited(lambda r, e: e.update(report=["corr"])), "report"),
    }  # fmt: skip


def test_a_bad_readout_with_the_right_hash_is_named_and_refitted(
    models: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The sidecar's teacher_sha256 matches, its contents do not serve: each corruption is
    named in one warning (the sidecar's path and what is wrong) and None returned, so the
    caller refits; never a traceback, never a readout loaded half-way. The same for a bad
    readout embedded in the checkpoint. Then one real `segkd distill --losses pid` over a
    NaN sidecar: the warning, a refit, exit 0, a sound sidecar in its place."""
    import logging

    import torch

    from core.atomic_io import sha256_of
    from distill.checkpoint import atomic_torch_save, load_checkpoint, load_model
    from distill.losses.pid import PositionReadout
    from distill.teacher import cached_readout, sidecar_path

    teacher = shutil.copy(models["three"], tmp_path / "teacher.pt")
    teacher = Path(teacher)
    side, width = sidecar_path(teacher), 24
    readout = PositionReadout(width, 2, 8, ("x", "y"))
    good = {"readout": readout.to_checkpoint(), "report": {"corr": 0.9}, "iters": 1}
    stamp = {"teacher_sha256": sha256_of(teacher)}
    caplog.set_level(logging.WARNING, logger="distill.teacher")
    atomic_torch_save({**good, **stamp}, side)
    found = cached_readout(teacher, {}, width)
    assert found is not None and found[1] == {"corr": 0.9} and not caplog.records
    cases = readout_corruptions(good)
    failures = []
    for name, (entry, needle) in cases.items():
        caplog.clear()
        atomic_torch_save({**entry, **stamp}, side)
        got = cached_readout(teacher, {}, width)
        lines = [r.getMessage() for r in caplog.records]
        if (
            got is not None
            or len(lines) != 1
            or str(side) not in lines[0]
            or needle not in lines[0]
        ):
            failures.append(f"{name}: returned {type(got).__name__}, warned {lines}")
        caplog.clear()
        embedded = cached_readout(teacher, {"position_readout": entry}, width)  # no sidecar use
        lines = [r.getMessage() for r in caplog.records if str(teacher) in r.getMessage()]
        if embedded is not None and name != "bad report":
            failures.append(f"embedded {name}: used")
        if not any("embedded" in line for line in lines):
            failures.append(f"embedded {name}: not named ({lines})")
    for raw, needle in ((b"", "cannot be read"), (b"not a tensor file\n", "cannot be read"),
                        (side.read_bytes()[:200], "cannot be read")):  # fmt: skip
        caplog.clear()
        side.write_bytes(raw)
        assert cached_readout(teacher, {}, width) is None
        assert any(str(side) in r.getMessage() and needle in r.getMessage() for r in caplog.records)
    assert not failures, "\n".join(failures)
    assert len(cases) >= 15

    # The path users take: the NaN sidecar beside a real teacher is named, refitted, replaced.
    feat = int(load_model(teacher)[0].feat_channels)
    real = PositionReadout(feat, 2, 64, ("x", "y")).to_checkpoint()
    real["state_dict"] = {
        k: torch.full_like(v, float("nan")) for k, v in real["state_dict"].items()
    }
    atomic_torch_save({"readout": real, "report": {}, **stamp}, side)
    data = make_folder(tmp_path / "ds", splits=True)  # the teacher's 3 classes
    (data / "classes.txt").write_text("road\ncar\nsky\n")
    for mask in (data / "masks").iterdir():
        values = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
        rows.write_mask(mask, np.where(values == 3, 2, values))
    r = segkd("distill", "--teacher", teacher, "--data", f"folder:{data}",
                   "--iters", "1", "--batch-size", "2", "--crop-size", "32x32", "--losses", "pid",
                   "--readout-iters", "2", "--num-workers", "0", "--out", tmp_path / "d",
                   timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    warned = [line for line in r.stderr.splitlines() if str(side) in line]
    assert len(warned) == 1 and "refitting" in warned[0], r.stderr[-3000:]
    again = cached_readout(teacher, load_checkpoint(teacher), feat)
    assert again is not None
    assert all(torch.isfinite(t).all() for t in again[0].state_dict().values())


# -- class 11: an output that cannot be written is named as the user spelled it ---------
@contextlib.contextmanager
def read_only_filesystem(path: Path, fill_in: Any) -> Iterator[Path]:
    """A tmpfs at `path`, filled by `fill_in(path)`, then remounted read-only: a read-only
    target for root too (file modes do not stop root). Skips where mount is not allowed."""
    with small_filesystem(path, 0) as fs:
        fill_in(fs)
        r = subprocess.run(["mount", "-o", "remount,ro", str(fs)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot remount a tmpfs read-only here: {r.stderr.strip()}")
        yield fs


def earlier_outputs(models: dict[str, Path], workspace: Path) -> Any:
    """What a read-only folder holds: an earlier --json, video, demo run, export folder."""

    def fill_in(fs: Path) -> None:
        (fs / "r.json").write_text('{"miou": 0.5}\n')
        shutil.copy(workspace / "in.mp4", fs / "o.mp4")
        shutil.copytree(workspace / "ex", fs / "ex")
        ok = segkd("demo", workspace / "ds/images", "--model", models["tiny"], "--out",
                   fs / "frames", "--max-frames", "2")  # fmt: skip
        assert ok.returncode == 0, ok.stderr

    return fill_in


def test_an_output_that_cannot_be_written_names_the_users_path(
    segkd_here: Run, models: dict[str, Path], workspace: Path
) -> None:
    """A read-only file system under every output of every command, spelled absolute,
    relative, through a symlink, with `.`, a trailing slash, below missing folders: exit 2
    before any work, one `error:` line naming the option and the path as typed (never a
    hidden temporary), every earlier output byte-identical, nothing written beside."""
    ro = workspace.parent / "ro"
    (workspace / "rolink").symlink_to(ro, target_is_directory=True)
    syn = ("--data", "synthetic:size=64x128,train=2,val=1")
    with read_only_filesystem(ro, earlier_outputs(models, workspace)):
        spots = [f"{ro}/r.json", f"{ro}/new.json", "rolink/r.json", f"{ro}/./r.json",
                 "../ro/a/b/r.json"]  # fmt: skip
        cases: list[tuple[tuple[str, ...], str, str]] = [
            *((("eval", "ex", "--data", "folder:ds", "--json", s), "--json", s) for s in spots),
            *(
                (("eval", "ex", "--data", "folder:ds", "--save-predictions", s), "--save-predictions", s)
                for s in (f"{ro}/preds", f"{ro}/", "rolink/p/q")
            ),
            *((("models", "--json", s), "--json", s) for s in spots),
            *((("bench", "ex", "--iters", "1", "--json", s), "--json", s) for s in spots[:3]),
            (("demo", "in.mp4", "--model", "ex", "--out", f"{ro}/o.mp4"), "--out", f"{ro}/o.mp4"),
            (("demo", "in.mp4", "--model", "ex", "--out", "rolink/n.mp4"), "--out", "rolink/n.mp4"),
            (("demo", "in.mp4", "--model", "ex", "--out", "o.mp4", "--json", f"{ro}/s.json"),
             "--json", f"{ro}/s.json"),
            *(
                (("demo", "ds/images", "--model", "ex", "--out", s), "--out", s)
                for s in (f"{ro}/frames", f"{ro}/frames/", "rolink/new")
            ),
            *(
                (("export", "student.pt", *EXPORT_FAST, "--out", s), "--out", s)
                for s in (f"{ro}/ex", "rolink/ex/", f"{ro}/e2")
            ),
            (("export", "student.pt", *EXPORT_FAST, "--out", "e3", "--json", f"{ro}/r.json"),
             "--json", f"{ro}/r.json"),
            (("train", *syn, *TRAIN[2:], "--out", f"{ro}/run"), "--out", f"{ro}/run"),
            (("distill", "--teacher", "student.pt", *syn, *TRAIN[2:], "--out", "rolink/d"),
             "--out", "rolink/d"),
            (("pipeline", *syn, "--out", f"{ro}/p"), "--out", f"{ro}/p"),
            (("qat", "student.pt", "--out", f"{ro}/q"), "--out", f"{ro}/q"),
            (("build", f"{ro}/ex"), "FOLDER", f"{ro}/ex"),  # engines are written into it
            (("build", "rolink/ex/"), "FOLDER", "rolink/ex/"),
        ]  # fmt: skip
        before, ro_before = tree_hashes(workspace), tree_hashes(ro)
        names = sorted(os.listdir(workspace))
        failures = []
        for args, option, spelled in cases:
            r = segkd_here(*args)
            try:
                # as typed, up to what pathlib normalises (a "/./", a trailing slash)
                line = assert_one_error(r, f"{option} {Path(spelled)} ", "read-only file system")
                assert ".tmp" not in line and "staging" not in line, line
            except AssertionError as e:
                failures.append(f"{' '.join(args)}: {e}")
            assert tree_hashes(workspace) == before and sorted(os.listdir(workspace)) == names
        assert tree_hashes(ro) == ro_before
    assert not failures, "\n".join(failures)
    assert len(cases) >= 32


def test_the_atomic_writer_names_the_users_file_when_its_folder_is_read_only(
    tmp_path: Path,
) -> None:
    """Below the guard: every writer (JSON, bytes, checkpoints through atomic_output)
    names the target, not the hidden temporary it could not create."""
    from core.atomic_io import write_bytes_atomic, write_json_atomic

    with read_only_filesystem(tmp_path / "ro", lambda fs: (fs / "old.json").write_text("{}")) as fs:
        for target in (fs / "old.json", fs / "new.json", fs / "sub" / "x.json"):
            for write in (
                lambda p: write_json_atomic({}, p),
                lambda p: write_bytes_atomic(p, b"x"),
            ):
                with pytest.raises(OSError) as info:
                    write(target)
                assert info.value.filename in (str(target), str(fs / "sub")), info.value
        assert (fs / "old.json").read_text() == "{}"
        assert sorted(os.listdir(fs)) == ["old.json"]


def test_an_output_this_user_may_not_write_is_one_line(models: dict[str, Path], data: Path) -> None:
    """The same as an ordinary user (uid 65534 through setpriv) facing a folder of mode
    0555, where file modes do stop the write: one line, 'not writable by this user'."""
    import tempfile

    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("switching to an unprivileged user needs root and setpriv")
    base = Path(tempfile.mkdtemp(prefix="segkd-nobody-"))  # /tmp: every user may enter
    try:
        base.chmod(0o755)
        shutil.copy(models["tiny"], base / "tiny.onnx")
        shutil.copytree(data, base / "ds")
        write_video(base / "in.mp4", 3, "mp4v")
        locked = base / "locked"
        locked.mkdir()
        (locked / "r.json").write_text("{}\n")
        locked.chmod(0o555)
        env = {**os.environ, "PYTHONPATH": str(rows.REPO), "HOME": str(base),
               "OMP_NUM_THREADS": "1"}  # fmt: skip
        user = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        probe = subprocess.run([*user, sys.executable, "-c", "import cli"], cwd=rows.REPO,
                               env=env, capture_output=True, text=True)  # fmt: skip
        if probe.returncode != 0:
            pytest.skip(f"the project cannot run as uid 65534 here: {probe.stderr[-300:]}")
        cases = [
            (("models", "--json", locked / "r.json"), "--json"),
            (("eval", base / "tiny.onnx", "--data", f"folder:{base / 'ds'}", "--json",
              locked / "new.json"), "--json"),
            (("demo", base / "in.mp4", "--model", base / "tiny.onnx", "--out",
              locked / "o.mp4"), "--out"),
            (("bench", base / "tiny.onnx", "--iters", "1", "--json", locked / "sub/b.json"),
             "--json"),
        ]  # fmt: skip
        for args, option in cases:
            r = subprocess.run([*user, sys.executable, "cli.py", *map(str, args)], cwd=rows.REPO,
                               env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
            line = assert_one_error(r, f"{option} {args[-1]} ", "not writable by this user")
            assert ".tmp" not in line
        assert (
            sorted(os.listdir(locked)) == ["r.json"] and (locked / "r.json").read_text() == "{}\n"
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- class 6: a demo whose writer fails, or that is interrupted, always ends --------------
def frame_folder(folder: Path, n: int, size: tuple[int, int] = (480, 640)) -> Path:
    """n frames of `size` (HxW): each plainly filled, so they are quick to write, yet large
    enough that a run lasts a few seconds (overlay, JPEG encode)."""
    folder.mkdir()
    for i in range(n):
        frame = np.full((*size, 3), (i * 7) % 256, np.uint8)
        cv2.putText(frame, str(i), (40, 200), cv2.FONT_HERSHEY_SIMPLEX, 4, (255, 255, 255), 8)
        cv2.imwrite(str(folder / f"f{i:04d}.png"), frame)
    return folder


def interrupt_mid_run(args: tuple[Any, ...], watch: Path, signals: int = 1) -> tuple[int, str]:
    """Start `segkd ARGS`, wait until its hidden temporary output appears in `watch` (the run
    is writing), send a real SIGINT (`signals` times, 50 ms apart); (exit status, stderr)."""
    import time

    env = {**os.environ, "PYTHONPATH": str(rows.REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "cli.py", *map(str, args)], cwd=rows.REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    end = time.monotonic() + 120
    while not any(".tmp" in name for name in os.listdir(watch)):
        assert proc.poll() is None, f"ended before it was interrupted: {proc.stderr.read()}"
        assert time.monotonic() < end, "the run never started writing"
        time.sleep(0.02)
    time.sleep(0.2)
    for _ in range(signals):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    try:
        _out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("Ctrl-C did not end the demo within 120 s") from None
    return proc.returncode, err


def test_a_demo_that_cannot_write_ends_in_one_line_and_ctrl_c_always_works(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """`segkd demo FOLDER --out OUTFOLDER` that cannot write (a folder named like a frame,
    a read-only folder, a full disk mid-run, a file-size limit at the first frame) ends
    with exit 2 and one `error:` line naming --out, within the timeout (it used to block
    in the writer queue); a real SIGINT mid-run (once, twice; image folder and video)
    ends it with 130. Every earlier output is byte-identical and no hidden temporary is
    left."""
    tiny = models["tiny"]
    src = frame_folder(tmp_path / "src", 600)
    demo = ("demo", src, "--model", tiny, "--out")

    # refused before the model loads: a folder named like a frame; a read-only folder
    taken = tmp_path / "taken"
    (taken / "f0000.jpg").mkdir(parents=True)
    (taken / "f0000.jpg" / "mine.txt").write_text("mine")
    before = tree_hashes(taken)
    assert_one_error(segkd(*demo, taken, timeout=120), "--out", taken)
    assert tree_hashes(taken) == before and not hidden_left(tmp_path)

    def earlier_run(fs: Path) -> None:
        ok = segkd(*demo, fs / "run", "--max-frames", "3")
        assert ok.returncode == 0, ok.stderr

    with read_only_filesystem(tmp_path / "ro", earlier_run) as ro:
        before = tree_hashes(ro)
        r = segkd(*demo, ro / "run", timeout=120)
        assert_one_error(r, f"--out {ro / 'run'} ", "read-only")
        assert tree_hashes(ro) == before

    # the writer fails mid-run: a disk with room for a few frames; a file-size limit
    with small_filesystem(tmp_path / "full", 0) as fs:
        earlier_run(fs)
        before = tree_hashes(fs / "run")
        fill(fs, 100)
        r = segkd(*demo, fs / "run", timeout=120)
        assert_one_error(r, "--out", fs / "run", only=False)
        assert tree_hashes(fs / "run") == before and not hidden_left(fs)
    out = tmp_path / "run"
    earlier_run(tmp_path)
    before = tree_hashes(out)
    r = segkd_limited(*demo, out, fsize=4000)
    assert_one_error(r, "--out", out, only=False)
    assert tree_hashes(out) == before and not hidden_left(tmp_path)

    # Ctrl-C mid-run, once or twice, into a folder and into a video
    video = write_video(tmp_path / "o.mp4", 3, "mp4v")
    video_before = sha256(video)
    for target, signals in ((out, 1), (out, 2), (video, 1)):
        code, err = interrupt_mid_run((*demo, target), tmp_path, signals)
        assert code == 130, err[-2000:]
        assert "Traceback" not in err, err[-2000:]
        assert rows.shown_lines(err)[-1].startswith("interrupted:"), err[-2000:]
        assert tree_hashes(out) == before and sha256(video) == video_before
        assert not hidden_left(tmp_path), sorted(os.listdir(tmp_path))


def test_a_full_disk_names_the_users_path_not_a_hidden_one(
    segkd_here: Run, models: dict[str, Path], workspace: Path
) -> None:
    """Class 11 on a real full tmpfs (writes fail mid-way, after the guard): export's
    staging folder, the atomic JSON writer's temporary file: the line names --out/--json
    as given (and the artifact's own name), never `.NAME.export-staging-*` or `.NAME.*.tmp`;
    the earlier export and JSON stay byte-identical and nothing hidden is left."""
    with small_filesystem(workspace.parent / "full", 0) as fs:
        shutil.copytree(workspace / "ex", fs / "ex")
        (fs / "r.json").write_text('{"miou": 0.5}\n')
        before = tree_hashes(fs)
        fill(fs, 0)
        cases = [
            (("export", "student.pt", *EXPORT_FAST, "--out", fs / "ex"), "--out", fs / "ex"),
            (("export", "student.pt", *EXPORT_FAST, "--out", fs / "new"), "--out", fs / "new"),
            (("eval", "ex", "--data", "folder:ds", "--json", fs / "r.json"), "", fs / "r.json"),
            (("models", "--json", fs / "m.json"), "", fs / "m.json"),
        ]
        for args, option, path in cases:
            line = assert_one_error(segkd_here(*args), option, path, only=False)
            assert "staging" not in line and ".tmp" not in line, line
            (fs / "filler").unlink()
            assert {k: v for k, v in tree_hashes(fs).items() if k != "filler"} == before
            assert (
                not [n for n in os.listdir(fs) if n.startswith(".")] and not (fs / "new").exists()
            )
            fill(fs, 0)


def test_the_reference_sets_masks_and_hash_are_checked_where_they_are_read(
    tmp_path: Path,
) -> None:
    """The runtime's own label reader (reference.npz, what `segkd build` gates engines on,
    without the dataset): a file whose sha256 differs from export.json's, a mask that is not
    H x W uint8 or holds values outside 0..255, arrays that disagree, a class id the model
    does not have: one SegkdError naming the file (or the mask), never numpy's or the
    confusion matrix's ValueError."""
    from core.errors import SegkdError
    from core.preprocess import Letterbox, PreprocessSpec
    from runtime.reference_set import (
        ReferenceSample,
        read_reference_set,
        score_on_reference,
        write_reference_set,
    )

    box = Letterbox(scale=1.0, top=0, left=0, height=8, width=10)
    sample = ReferenceSample(np.zeros((8, 10, 3), np.uint8), np.zeros((8, 10), np.uint8),
                             np.full((8, 10), 3, np.uint8), box)  # fmt: skip
    good = write_reference_set(tmp_path / "reference.npz", [sample, sample])
    facts = {"sha256": sha256(good)}
    assert len(read_reference_set(good, facts)) == 2
    with np.load(good) as z:
        arrays = {k: z[k] for k in z.files}

    def variant(**changes: Any) -> Path:
        path = tmp_path / f"bad{len(list(tmp_path.glob('bad*.npz')))}.npz"
        np.savez(path, **{k: v for k, v in {**arrays, **changes}.items() if v is not None})
        return path

    mask = arrays["mask0"]
    cases: list[tuple[Path, dict[str, Any] | None, tuple[str, ...]]] = [
        (good, {"sha256": "0" * 64}, ("sha256 differs",)),
        (
            variant(mask0=np.where(mask == 3, -5, 0).astype(np.int32)),
            None,
            ("mask0", "int32", "values -5.."),
        ),
        (variant(mask1=(mask.astype(np.uint16) * 100)), None, ("mask1", "0..300")),
        (variant(mask0=mask.astype(np.float32)), None, ("mask0", "float32")),
        (variant(mask0=mask[None]), None, ("mask0", "(1, 8, 10)")),
        (variant(mask5=mask), None, ("mask5", "no image")),
        (variant(labels=arrays["labels"][:1]), None, ("labels",)),
        (variant(images=arrays["images"].astype(np.float32)), None, ("images", "float32")),
        (variant(boxes=np.full((2, 5), np.nan)), None, ("letterboxes",)),
        (variant(boxes=None), None, ("cannot read", "boxes")),
    ]
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:100])
    (tmp_path / "text.npz").write_text("not an npz\n")
    cases += [(tmp_path / "cut.npz", None, ("cannot read",)),
              (tmp_path / "text.npz", None, ("cannot read",))]  # fmt: skip
    failures = []
    for path, given, needles in cases:
        try:
            read_reference_set(path, given)
            failures.append(f"{needles}: accepted")
        except SegkdError as e:
            if not all(n in str(e) for n in (str(path), *needles)):
                failures.append(f"{needles} not in {e}")
    assert not failures, "\n".join(failures)
    # values in 0..255 but no class of a 3-class model: named before any scoring
    pre = PreprocessSpec(input_size=(8, 10))
    with pytest.raises(SegkdError, match=r"mask0 holds \[3\], neither classes of 3"):
        score_on_reference(lambda x: np.zeros((1, 8, 10), np.uint8),
                           read_reference_set(good), pre, "labels", 3, 255)  # fmt: skip
    score = score_on_reference(lambda x: np.zeros((1, 8, 10), np.uint8),
                               read_reference_set(good), pre, "labels", 4, 255)  # fmt: skip
    assert score.pixel_agreement == 1.0


def test_a_bad_pipeline_step_record_is_named_and_the_step_runs_again(tmp_path: Path) -> None:
    """The pipeline's other hash-keyed record (.steps/NAME.json: the step's key and its
    outputs' sha256): one that is not a record (a list, outputs not a map, bad UTF-8, cut
    JSON, 100,000 levels deep) is named in one log line and the step runs again; a sound
    record with a matching key still skips it."""
    from pipeline.steps import Step, StepRunner

    lines: list[str] = []
    runner = StepRunner(tmp_path / "p", log=lines.append)
    out = tmp_path / "p" / "result.txt"
    step = Step("make", lambda: out.write_text("result\n"), [out], settings={"a": 1})
    assert runner.run(step) and not runner.run(step)  # ran, then up to date
    stamp = tmp_path / "p" / ".steps" / "make.json"
    good = json.loads(stamp.read_text())
    bad: dict[str, bytes] = {
        "a list": b"[1, 2]",
        "a string": b'"key"',
        "outputs a list": json.dumps({**good, "outputs": [str(out)]}).encode(),
        "no outputs": json.dumps({"key": good["key"]}).encode(),
        "bad UTF-8": b'{"key": "\xff\xfe"}',
        "cut JSON": stamp.read_bytes()[:20],
        "deep": b"[" * 100_000 + b"]" * 100_000,
    }
    for name, content in bad.items():
        stamp.write_bytes(content)
        lines.clear()
        assert runner.run(step), name
        named = [line for line in lines if str(stamp) in line]
        assert len(named) == 1 and "running again" in named[0], (name, lines)
        assert not runner.run(step), name  # the rewritten record is sound again


def test_a_model_sidecar_with_the_right_hash_but_bad_contents_is_one_line(
    segkd_here: Run, models: dict[str, Path], data: Path, tmp_path: Path
) -> None:
    """`<model>.json` records the model's sha256, so a matching hash says nothing about the
    rest: labels or preprocessing of the wrong type or out of range (a NaN mean used to be
    accepted and scored) are refused in one line naming the sidecar."""
    from tests.runtime.rt_models import segkd_meta

    model = Path(shutil.copy(models["tiny"], tmp_path / "m.onnx"))
    side = tmp_path / "m.onnx.json"
    base = {**segkd_meta("logits"), "sha256": sha256(model)}
    pre = base["preprocess"]
    bad = {
        "labels a list": {**base, "labels": [1, 2]},
        "no labels": {k: v for k, v in base.items() if k != "labels"},
        "preprocess a string": {**base, "preprocess": "x"},
        "negative size": {**base, "preprocess": {**pre, "input_size": [-1, 5]}},
        "NaN mean": {**base, "preprocess": {**pre, "mean": [float("nan")] * 3}},
        "inf std": {**base, "preprocess": {**pre, "std": [float("inf")] * 3}},
        "NaN std": {**base, "preprocess": {**pre, "std": [1.0, float("nan"), 1.0]}},
        "names a string": {**base, "labels": {**base["labels"], "names": "road"}},
        "a list": [1],
    }
    for name, content in bad.items():
        side.write_text(json.dumps(content))
        line = assert_one_error(segkd_here("eval", model, "--data", f"folder:{data}"), side)
        assert "Traceback" not in line, name
    side.write_text(json.dumps(base))
    assert segkd_here("eval", model, "--data", f"folder:{data}").returncode == 0
