"""Bad input through the real command line: one `error:` line naming the culprit, exit 2,
nothing already written is damaged, and no untrusted pickle is ever executed.

Rows run `python cli.py ...` in a subprocess from the repository root, as a user would;
dataset rows score a tiny ONNX model there (no torch: fast). Rows that need torch (.pt
files, training options) call the same entry point, `cli.main()`, in this process with
the same argv, capturing fd 1/2 and the exit status: a subprocess each would spend ~3 s
of CPU importing torch, on a 2-core machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.runtime.rt_models import LABELS, export_onnx, make_tiny_net, segkd_meta

REPO = Path(__file__).resolve().parents[1]
CLASSES = "\n".join(LABELS.names) + "\n"  # the tiny model's 4 classes
H, W = 40, 48
TRAIN = ("--iters", "2", "--batch-size", "2", "--crop-size", "32x32")


# -- running the command line ----------------------------------------------------------
def segkd(*args: Any, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "cli.py", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture()
def segkd_here(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """`segkd ARGS` as `cli.main()` in this process: same argv, stdout/stderr, exit status."""
    import cli

    # main() sets these with setdefault; set them here so the test process gets them back.
    monkeypatch.setenv("OPENCV_LOG_LEVEL", "FATAL")
    monkeypatch.setenv("OPENCV_FFMPEG_LOGLEVEL", "-8")

    def run(*args: Any) -> subprocess.CompletedProcess[str]:
        argv = ["segkd", *map(str, args)]
        monkeypatch.setattr(sys, "argv", argv)
        capfd.readouterr()
        code: int = 0
        try:
            cli.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(argv, code, out, err)

    return run


def shown_lines(stderr: str) -> list[str]:
    """The non-empty lines a terminal shows: a progress bar redraws its line after '\\r'."""
    lines = (line.rsplit("\r", 1)[-1].rstrip() for line in stderr.split("\n"))
    return [line for line in lines if line.strip()]


def bar_free(stderr: str) -> list[str]:
    """Shown lines without tqdm progress bars (a stage may have drawn one before failing)."""
    return [line for line in shown_lines(stderr) if "it/s]" not in line and "s/it]" not in line]


def assert_one_error(
    r: subprocess.CompletedProcess[str], *culprits: Any, only: bool = True, code: int = 2
) -> str:
    """Exit `code`, exactly one `error:` line, last on stderr, naming every culprit.

    only: nothing else on stderr either (apart from progress bars); False where a
    library below us (ffmpeg) prints its own diagnostics first.
    """
    assert r.returncode == code, f"exit {r.returncode}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = bar_free(r.stderr)
    errors = [line for line in shown_lines(r.stderr) if line.startswith("error:")]
    assert len(errors) == 1, r.stderr[-3000:]
    assert lines and lines[-1] == errors[0], r.stderr[-3000:]
    if only:
        assert lines == errors, r.stderr[-3000:]
    for culprit in culprits:
        assert str(culprit) in errors[0], f"{culprit!r} not named in: {errors[0]}"
    return errors[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- fixtures written by the tests -----------------------------------------------------
def write_mask(path: Path, values: np.ndarray) -> None:
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)


def make_folder(root: Path, n: int = 6, splits: bool = False) -> Path:
    """folder:ROOT with n images (HxW), masks of the 4 classes + ignore, classes.txt."""
    rng = np.random.default_rng(len(str(root)))
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        cv2.imwrite(str(root / "images" / f"im{i}.png"), rng.integers(0, 256, (H, W, 3), np.uint8))
        mask = np.repeat(np.arange(W) * 4 // W, H).reshape(W, H).T.copy()
        mask[:3] = 255
        write_mask(root / "masks" / f"im{i}.png", mask)
    (root / "classes.txt").write_text(CLASSES)
    if splits:
        (root / "splits").mkdir()
        (root / "splits" / "train.txt").write_text("".join(f"im{i}\n" for i in range(n - 2)))
        (root / "splits" / "val.txt").write_text(f"im{n - 2}\nim{n - 1}\n")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tiny.onnx (4 classes, segkd metadata); plain.onnx (no metadata); segkd checkpoints:
    three.pt (a real pspnet_r18 for 3 classes), alien.pt (another network's weights
    labelled pspnet_r18), alien3.pt (the same for 3 classes), cut.pt (truncated)."""
    import torch

    from core.labels import LabelSpec
    from core.preprocess import PreprocessSpec
    from distill.checkpoint import atomic_torch_save, make_checkpoint
    from distill.models import build_model

    d = tmp_path_factory.mktemp("models")
    net = make_tiny_net(0)
    out = {
        "tiny": export_onnx(net, d / "tiny.onnx", "logits", segkd_meta("logits")),
        "plain": export_onnx(net, d / "plain.onnx", "logits", None),
    }
    spec = PreprocessSpec(input_size=(32, 32))
    torch.manual_seed(0)
    three = build_model("pspnet_r18", 3, aux=False)
    labels3 = LabelSpec(names=("road", "car", "sky"))
    out["three"] = d / "three.pt"
    atomic_torch_save(
        make_checkpoint(
            model=three, arch="pspnet_r18", model_kwargs=three.model_kwargs, labels=labels3,
            preprocess=spec, role="teacher",
        ),
        out["three"],
    )  # fmt: skip
    out["alien"] = d / "alien.pt"
    atomic_torch_save(
        make_checkpoint(
            model=net, arch="pspnet_r18", model_kwargs={"aux": False}, labels=LABELS,
            preprocess=spec,
        ),
        out["alien"],
    )  # fmt: skip
    out["alien3"] = d / "alien3.pt"
    atomic_torch_save(
        make_checkpoint(
            model=net, arch="pspnet_r18", model_kwargs={"aux": False}, labels=labels3,
            preprocess=spec,
        ),
        out["alien3"],
    )  # fmt: skip
    data = out["alien"].read_bytes()
    out["cut"] = d / "cut.pt"
    out["cut"].write_bytes(data[: len(data) // 2])
    return out


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "ds", splits=True)


@pytest.fixture()
def json_out(tmp_path: Path) -> Path:
    """An existing --json result that a failed command must leave byte for byte."""
    path = tmp_path / "old.json"
    path.write_text('{"miou": 0.5}\n')
    return path


def eval_fails(
    model: Path, data: str, json_out: Path, *culprits: Any, run: Run = segkd, **kw: Any
) -> str:
    before = sha256(json_out)
    r = run("eval", model, "--data", data, "--json", json_out)
    line = assert_one_error(r, *culprits, **kw)
    assert sha256(json_out) == before
    return line


# -- datasets ----------------------------------------------------------------------------
def test_the_fixtures_are_good(models: dict[str, Path], data: Path, json_out: Path) -> None:
    """The rows below fail because of what each one breaks, not because the base is bad."""
    r = segkd("eval", models["tiny"], "--data", f"folder:{data}", "--json", json_out)
    assert r.returncode == 0, r.stderr
    assert json.loads(json_out.read_text())["num_samples"] == 2


def test_unreadable_image(models: dict[str, Path], data: Path, json_out: Path) -> None:
    bad = data / "images" / "im5.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    eval_fails(models["tiny"], f"folder:{data}", json_out, bad, "cannot be read as an image")


def test_image_listed_but_missing(models: dict[str, Path], data: Path, json_out: Path) -> None:
    (data / "images" / "im5.png").unlink()
    eval_fails(models["tiny"], f"folder:{data}", json_out, data / "splits" / "val.txt", "im5")


def test_missing_mask(models: dict[str, Path], data: Path, json_out: Path) -> None:
    (data / "masks" / "im4.png").unlink()
    eval_fails(models["tiny"], f"folder:{data}", json_out, data / "masks" / "im4.png")


def test_image_and_mask_of_different_sizes(
    models: dict[str, Path], data: Path, json_out: Path
) -> None:
    mask = data / "masks" / "im4.png"
    write_mask(mask, np.zeros((H // 2, W), np.uint8))
    eval_fails(models["tiny"], f"folder:{data}", json_out, mask, f"{W}x{H // 2}")


def test_mask_with_out_of_range_values(models: dict[str, Path], data: Path, json_out: Path) -> None:
    mask = data / "masks" / "im5.png"
    values = np.zeros((H, W), np.uint8)
    values[5, 5], values[6, 6] = 4, 200  # 4 classes: 0-3 and 255 are the only valid values
    write_mask(mask, values)
    line = eval_fails(models["tiny"], f"folder:{data}", json_out, mask, "[4, 200]")
    assert "0-3, 255" in line


def test_colour_mask(models: dict[str, Path], data: Path, json_out: Path) -> None:
    mask = data / "masks" / "im5.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8), mode="RGB").save(mask)
    eval_fails(models["tiny"], f"folder:{data}", json_out, mask, "RGB")


def test_empty_split(models: dict[str, Path], data: Path, json_out: Path) -> None:
    (data / "splits" / "val.txt").write_text("\n")
    eval_fails(models["tiny"], f"folder:{data}", json_out, "val.txt lists no images")


def test_empty_image_folder(models: dict[str, Path], tmp_path: Path, json_out: Path) -> None:
    root = make_folder(tmp_path / "empty", n=0)
    eval_fails(models["tiny"], f"folder:{root}", json_out, root / "images", "split is empty")


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("folder:{tmp}/nowhere", "{tmp}/nowhere does not exist"),
        ("folder:{tmp}/old.json", "is not a folder"),
        ("folder:{tmp}/bare", "no images/ folder"),  # bare: --json may not lie in a dataset
        ("kitti:{tmp}", "unknown dataset 'kitti'"),
        ("folder:{tmp}/no[/]where", "{tmp}/no[/]where does not exist"),  # not rich markup
    ],
)
def test_wrong_dataset_path(
    models: dict[str, Path], tmp_path: Path, json_out: Path, spec: str, needle: str
) -> None:
    (tmp_path / "bare").mkdir()
    eval_fails(
        models["tiny"],
        spec.format(tmp=tmp_path),
        json_out,
        needle.format(tmp=tmp_path),
    )


def test_missing_classes_file(models: dict[str, Path], data: Path, json_out: Path) -> None:
    (data / "classes.txt").unlink()
    eval_fails(models["tiny"], f"folder:{data}", json_out, data / "classes.txt")


def test_training_stops_at_an_unreadable_image(tmp_path: Path) -> None:
    """Read by a DataLoader worker mid-run: still one line, naming the image; an earlier
    file in --out is untouched."""
    root = make_folder(tmp_path / "ds")
    for image in (root / "images").iterdir():
        image.write_bytes(b"garbage")
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.pt").write_bytes(b"an earlier checkpoint")
    before = sha256(out / "best.pt")
    r = segkd("train", "--data", f"folder:{root}", *TRAIN, "--out", out)
    assert_one_error(r, root / "images", "cannot be read as an image")
    assert sha256(out / "best.pt") == before


# -- command-line values -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("train", "--iters", "-5"), ("--iters", "-5")),
        (("train", "--crop-size", "12by3"), ("--crop-size", "12by3")),
        (("train", "--model", "pspnet_r7"), ("pspnet_r7",)),
        (("distill", "--losses", "kd,foo"), ("'foo'", "kd, idd, pid, cwd")),
        (("distill", "--idd-distance", "manhattan"), ("idd_distance", "'manhattan'")),
    ],
    ids=[
        "negative-iters",
        "bad-size",
        "unknown-model",
        "unknown-loss",
        "unknown-distance",
    ],
)
def test_invalid_training_values(
    segkd_here: Run,
    models: dict[str, Path],
    tmp_path: Path,
    args: tuple[str, ...],
    needles: tuple[str, ...],
) -> None:
    data = make_folder(tmp_path / "ds")
    extra = ("--teacher", models["three"]) if args[0] == "distill" else ()
    r = segkd_here(*args, *extra, "--data", f"folder:{data}", "--out", tmp_path / "run")
    assert_one_error(r, *needles)
    assert not (tmp_path / "run" / "best.pt").exists()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("bench", "{tiny}", "--frame-size", "12by3"), ("--frame-size", "'12by3'")),
        (("bench", "{tiny}", "--frame-size", "0x5"), ("--frame-size", "0x5")),
        (("eval", "{tiny}", "--max-images", "0"), ("--max-images",)),
        (("eval", "{tiny}", "--backend", "cuda-magic"), ("--backend", "cuda-magic")),
        (("eval", "{tiny}", "--precision", "int3"), ("--precision", "int3")),
        (("eval", "{tiny}", "--max-drop", "1"), ("--max-drop", "--reference")),
        (("train", "--no-such-option"), ("--no-such-option",)),
        (("distill",), ("--teacher",)),
        (("demo", "{tiny}", "--model", "{tiny}"), ("--out",)),
    ],
    ids=[
        "size-text",
        "size-zero",
        "max-images-0",
        "backend",
        "precision",
        "max-drop-alone",
        "unknown-option",
        "missing-teacher",
        "demo-without-out",
    ],
)
def test_invalid_cli_values(
    models: dict[str, Path], args: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    assert_one_error(segkd(*(a.format(tiny=models["tiny"]) for a in args)), *needles)


def test_no_command_prints_the_help_not_a_traceback() -> None:
    r = segkd()
    assert r.returncode in (0, 2) and "Traceback" not in r.stderr
    assert "Commands" in r.stdout + r.stderr and "distill" in r.stdout + r.stderr


def test_a_failed_quality_gate_exits_3(models: dict[str, Path], data: Path) -> None:
    """eval --max-drop is a CI gate: its failure must reach the exit status."""
    tiny = models["tiny"]
    args = ("eval", tiny, "--data", f"folder:{data}", "--reference", tiny)
    assert segkd(*args, "--max-drop", "0").returncode == 0  # the same model: drop 0
    r = segkd(*args, "--max-drop", "-1")
    assert r.returncode == 3 and "FAIL" in r.stderr and "Traceback" not in r.stderr


def test_an_existing_run_is_not_overwritten(segkd_here: Run, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    for name in ("best.pt", "last.pt", "resume.pt"):
        (out / name).write_bytes(name.encode())
    r = segkd_here("train", "--data", "synthetic:size=64x128,train=8,val=2", *TRAIN, "--out", out)
    assert_one_error(r, out, "--resume")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {
        n: n.encode() for n in ("best.pt", "last.pt", "resume.pt")
    }


def test_resume_without_a_run(segkd_here: Run, tmp_path: Path) -> None:
    r = segkd_here("train", "--data", "synthetic:size=64x128,train=8,val=2", *TRAIN,
              "--out", tmp_path / "empty", "--resume")  # fmt: skip
    assert_one_error(r, "--resume", tmp_path / "empty")


def test_out_is_a_file(segkd_here: Run, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.write_text("mine")
    r = segkd_here("train", "--data", "synthetic:size=64x128,train=8,val=2", *TRAIN, "--out", out)
    assert_one_error(r, out)
    assert out.read_text() == "mine"


# -- checkpoints ------------------------------------------------------------------------
def test_truncated_checkpoint(
    segkd_here: Run, models: dict[str, Path], data: Path, json_out: Path
) -> None:
    cut = models["cut"]
    eval_fails(cut, f"folder:{data}", json_out, cut, "corrupt or truncated", run=segkd_here)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"hello\n",
        b"\x80\x02}q\x00.",
        pickle.dumps({"weights": [1.0]}, protocol=4),  # torch warns about the protocol first
        b"PK\x03\x04not really a zip",
        bytes(range(256)) * 3,
    ],
    ids=["empty", "text", "bare-pickle-dict", "pickle-protocol-4", "fake-zip", "binary"],
)
def test_file_that_is_not_a_checkpoint(
    segkd_here: Run, data: Path, json_out: Path, content: bytes
) -> None:
    fake = data / "notes.pt"
    fake.write_bytes(content)
    eval_fails(fake, f"folder:{data}", json_out, fake, run=segkd_here)


def test_checkpoint_of_another_architecture(
    segkd_here: Run, models: dict[str, Path], data: Path, json_out: Path
) -> None:
    alien = models["alien"]
    line = eval_fails(alien, f"folder:{data}", json_out, alien, run=segkd_here)
    assert "do not fit pspnet_r18" in line


def test_checkpoint_of_another_class_count(
    segkd_here: Run, models: dict[str, Path], data: Path, json_out: Path
) -> None:
    three = models["three"]
    line = eval_fails(three, f"folder:{data}", json_out, three, run=segkd_here)
    assert "3 classes" in line and "4" in line


def test_teacher_of_another_class_count(
    segkd_here: Run, models: dict[str, Path], data: Path
) -> None:
    run = data.parent / "run"  # not inside the dataset: the output guard refuses that
    r = segkd_here("distill", "--teacher", models["three"], "--data", f"folder:{data}", *TRAIN,
              "--out", run)  # fmt: skip
    assert_one_error(r, "--teacher", models["three"], "3 classes")
    assert not (run / "best.pt").exists()


def test_resume_file_of_another_run(
    segkd_here: Run, models: dict[str, Path], tmp_path: Path
) -> None:
    """A resume.pt from a 3-class run, resumed on 4-class data: refused, kept."""
    data = make_folder(tmp_path / "ds")
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(models["alien3"], out / "resume.pt")
    before = sha256(out / "resume.pt")
    r = segkd_here("train", "--data", f"folder:{data}", *TRAIN, "--out", out, "--resume")
    assert_one_error(r, "--resume", out / "resume.pt", "3 classes")
    assert sha256(out / "resume.pt") == before


# -- model files --------------------------------------------------------------------------
def test_model_not_found(data: Path, json_out: Path) -> None:
    eval_fails(data / "nope.onnx", f"folder:{data}", json_out, data / "nope.onnx", "not found")


def test_onnx_file_that_is_not_a_model(data: Path, json_out: Path) -> None:
    fake = data / "model.onnx"
    fake.write_bytes(b"\x08\x07garbage that is no protobuf")
    eval_fails(fake, f"folder:{data}", json_out, fake)
    assert_one_error(segkd("bench", fake, "--iters", "1", "--warmup", "0"), fake)


def test_onnx_without_segkd_metadata(models: dict[str, Path], data: Path, json_out: Path) -> None:
    eval_fails(models["plain"], f"folder:{data}", json_out, models["plain"], "segkd metadata")


def _engine(folder: Path, tensorrt_version: str, gpu: str) -> Path:
    engine = folder / "model.fp16.engine"
    engine.write_bytes(b"ptrt" + bytes(range(256)) * 8)
    meta = {**segkd_meta("labels", "fp16"), "tensorrt_version": tensorrt_version, "gpu": gpu}
    (folder / "model.fp16.engine.json").write_text(json.dumps(meta))
    return engine


def _has_tensorrt() -> bool:
    from runtime.backends.tensorrt import tensorrt_available

    return tensorrt_available()


@pytest.mark.skipif(_has_tensorrt(), reason="checks the message on machines without TensorRT")
def test_engine_on_a_machine_without_tensorrt(data: Path, json_out: Path) -> None:
    engine = _engine(data, "10.3.0", "Orin")
    eval_fails(engine, f"folder:{data}", json_out, "TensorRT", "--backend onnxruntime")


@pytest.mark.tensorrt
@pytest.mark.skipif(
    not _has_tensorrt(),
    reason="needs the tensorrt package and an NVIDIA GPU to try loading a foreign engine",
)
def test_engine_built_for_another_tensorrt_and_gpu(data: Path, json_out: Path) -> None:
    engine = _engine(data, "0.0.1", "Imaginary GPU")
    eval_fails(engine, f"folder:{data}", json_out, engine, "0.0.1", "rebuild it here")


# -- demo sources ----------------------------------------------------------------------------
def write_video(path: Path, frames: int, fourcc: str) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (W, H))
    assert writer.isOpened()
    for i in range(frames):
        frame = np.full((H, W, 3), (i * 7) % 256, np.uint8)
        cv2.putText(frame, str(i), (4, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
        writer.write(frame)
    writer.release()
    return path


def count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@pytest.fixture()
def old_video(tmp_path: Path) -> Path:
    """An earlier demo output that a failed run must not replace."""
    return write_video(tmp_path / "old.mp4", 3, "mp4v")


@pytest.mark.parametrize("kind", ["garbage", "truncated-mp4", "missing"])
def test_video_that_cannot_be_opened(
    models: dict[str, Path], tmp_path: Path, old_video: Path, kind: str
) -> None:
    src = tmp_path / "in.mp4"
    if kind == "garbage":
        src.write_bytes(b"\x00\x00\x00\x18ftypmp42 and then nothing useful")
    elif kind == "truncated-mp4":  # mp4 keeps its index (moov) at the end: cut it off
        data = write_video(tmp_path / "full.mp4", 20, "mp4v").read_bytes()
        src.write_bytes(data[: len(data) // 2])
    before = sha256(old_video)
    r = segkd("demo", src, "--model", models["tiny"], "--out", old_video)
    # ffmpeg may print its own reason ("moov atom not found") before our line.
    assert_one_error(r, src, only=False)
    assert sha256(old_video) == before
    assert not list(tmp_path.glob(".*tmp*"))


def test_stream_that_drops_mid_run_ends_cleanly(models: dict[str, Path], tmp_path: Path) -> None:
    """A truncated AVI decodes up to the cut: the demo writes every frame it got, exit 0."""
    full = write_video(tmp_path / "full.avi", 30, "MJPG")
    src = tmp_path / "cut.avi"
    data = full.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    readable = count_frames(src)
    assert 0 < readable < 30
    out, stats = tmp_path / "out.mp4", tmp_path / "stats.json"
    r = segkd("demo", src, "--model", models["tiny"], "--out", out, "--json", stats)
    assert r.returncode == 0, r.stderr
    s = json.loads(stats.read_text())
    assert s["frames_in"] == s["frames_out"] == readable
    assert s["stopped"] == "end of stream"
    assert count_frames(out) == readable


def test_demo_output_of_unknown_type(models: dict[str, Path], tmp_path: Path) -> None:
    src = write_video(tmp_path / "in.avi", 3, "MJPG")
    out = tmp_path / "out.txt"
    assert_one_error(segkd("demo", src, "--model", models["tiny"], "--out", out), "--out", out)
    assert not out.exists()


# -- untrusted files: a pickle that runs a command when unpickled --------------------------
class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def poisoned(path: Path, marker: Path, as_torch_zip: bool) -> Path:
    """A 'checkpoint' whose unpickling runs `touch marker`; proven live with plain pickle."""
    obj = {"format": "segkd-checkpoint", "arch": "pspnet_r18", "state_dict": Payload(marker)}
    if as_torch_zip:
        import torch

        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    probe = marker.with_name(marker.name + ".probe")
    pickle.loads(pickle.dumps(Payload(probe)))  # what an unsafe loader would do
    assert probe.exists(), "the payload is not live; the test below would prove nothing"
    probe.unlink()
    return path


@pytest.mark.parametrize(
    ("command", "zip_format"),
    [
        ("eval", True),
        ("distill", False),
        ("resume", True),
        ("backbone", False),
    ],
)
def test_executable_pickle_is_refused_and_never_runs(
    segkd_here: Run, tmp_path: Path, command: str, zip_format: bool
) -> None:
    """In this process on purpose: a payload that got through would run in the test itself."""
    marker = tmp_path / "pwned"
    name = "resume.pt" if command == "resume" else "evil.pt"
    (tmp_path / "run").mkdir()
    evil = poisoned(tmp_path / "run" / name, marker, zip_format)
    syn = ("--data", "synthetic:size=64x128,train=8,val=2")
    args: tuple[Any, ...] = {
        "eval": ("eval", evil, *syn),
        "distill": ("distill", "--teacher", evil, *syn, *TRAIN, "--out", tmp_path / "d"),
        "resume": ("train", *syn, *TRAIN, "--out", tmp_path / "run", "--resume"),
        "backbone": ("train", *syn, *TRAIN, "--out", tmp_path / "t", "--backbone-weights", evil),
    }[command]
    before = sha256(evil)
    line = assert_one_error(segkd_here(*args), evil)
    assert "refused" in line and "weights_only" in line
    assert not marker.exists()
    assert sha256(evil) == before


def test_poisoned_readout_cache_is_refitted_not_run(tmp_path: Path) -> None:
    """<teacher>.readout.pt is a cache next to the teacher: a bad one is ignored, not loaded."""
    from distill.teacher import cached_readout, sidecar_path

    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"teacher bytes")
    marker = tmp_path / "pwned"
    for zip_format in (True, False):
        poisoned(sidecar_path(teacher), marker, zip_format)
        assert cached_readout(teacher, {}) is None
        assert not marker.exists()
    sidecar_path(teacher).write_bytes(b"truncated")
    assert cached_readout(teacher, {}) is None


@pytest.mark.skipif(
    "def export(" not in (REPO / "cli.py").read_text(encoding="utf-8"),
    reason="`segkd export` is not in cli.py yet",
)
def test_export_refuses_bad_checkpoints(
    segkd_here: Run, models: dict[str, Path], tmp_path: Path
) -> None:
    """An executable pickle and a bad --precision: refused; an earlier export is kept."""
    out = tmp_path / "export"
    out.mkdir()
    (out / "export.json").write_text('{"format": "segkd-export"}')
    (out / "model.onnx").write_bytes(b"an earlier model")
    before = {p.name: sha256(p) for p in out.iterdir()}
    marker = tmp_path / "pwned"
    evil = poisoned(tmp_path / "evil.pt", marker, True)
    r = segkd_here("export", evil, "--precision", "fp32", "--out", out)
    assert "refused" in assert_one_error(r, evil)
    assert not marker.exists()
    r = segkd_here("export", models["alien"], "--precision", "fp9", "--out", out)
    assert_one_error(r, "fp9")
    assert {p.name: sha256(p) for p in out.iterdir()} == before


# -- issue 17: data lost or silently wrong ---------------------------------------------
EXPORT_FAST = ("--precision", "fp32", "--calib-data", "synthetic:size=64x128,train=2,val=1",
               "--verify-images", "1", "--no-simplify")  # fmt: skip


def old_export(folder: Path) -> dict[str, str]:
    """An earlier export a failed `segkd export` must leave byte for byte; its hashes."""
    folder.mkdir(parents=True)
    (folder / "model.int8-cpu.onnx").write_bytes(b"an earlier int8 model")
    (folder / "export.json").write_text('{"format": "segkd-export", "version": 1}\n')
    return {p.name: sha256(p) for p in folder.iterdir()}


@pytest.mark.parametrize(
    ("option", "value"),
    [("--min-agreement-int8", "nan"), ("--min-agreement-fp16", "inf"),
     ("--min-agreement-int8", "-inf"), ("--trt-workspace", "nan")],
)  # fmt: skip
def test_export_refuses_nan_gates_and_keeps_the_old_export(
    segkd_here: Run, models: dict[str, Path], tmp_path: Path, option: str, value: str
) -> None:
    out = tmp_path / "export"
    before = old_export(out)
    r = segkd_here("export", models["three"], "--precision", "int8", "--int8-variants", "cpu",
                   option, value, "--out", out)  # fmt: skip
    assert_one_error(r, option, value)
    assert {p.name: sha256(p) for p in out.iterdir()} == before


def test_export_on_a_full_disk_keeps_the_old_export(
    segkd_here: Run, models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while export.json is written, after the new model file was staged."""
    import errno
    from contextlib import contextmanager

    from core import atomic_io

    real = atomic_io.atomic_output

    @contextmanager
    def full_disk(path, mode="wb", *args, **kw):  # type: ignore[no-untyped-def]
        with real(path, mode, *args, **kw) as f:
            yield f
            if Path(path).name == "export.json":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic_io, "atomic_output", full_disk)
    out = tmp_path / "export"
    before = old_export(out)
    r = segkd_here("export", models["three"], *EXPORT_FAST, "--out", out)
    assert_one_error(r, "--out", out, "No space left on device", "unchanged", only=False)
    assert {p.name: sha256(p) for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging left behind


def test_export_does_not_replace_a_folder_that_is_not_an_export(
    segkd_here: Run, models: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"mine")
    r = segkd_here("export", models["three"], *EXPORT_FAST, "--out", out)
    assert_one_error(r, "--out", out, "not an export folder", "holiday.jpg")
    assert [p.name for p in out.iterdir()] == ["holiday.jpg"]


def exif_jpeg(path: Path, size: tuple[int, int], orientation: int = 6) -> Path:
    """A JPEG whose stored left half is dark, right half bright, with an EXIF orientation."""
    w, h = size
    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[:, w // 2 :] = 230
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, quality=95, exif=exif)
    return path


def test_exif_rotated_jpeg_is_read_as_stored_like_its_mask(tmp_path: Path) -> None:
    """Orientation 6 (turn 90 degrees): OpenCV would rotate the image but not the mask."""
    from distill.data import build_dataset

    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in ("a", "b"):
        exif_jpeg(root / "images" / f"{name}.jpg", (48, 48))
        mask = np.zeros((48, 48), np.uint8)
        mask[:, 24:] = 1  # class 1 where the stored pixels are bright
        write_mask(root / "masks" / f"{name}.png", mask)
    (root / "classes.txt").write_text("dark\nbright\n")
    image, mask = build_dataset(f"folder:{root}", "train")[0]
    bright = image.mean(axis=2) > 115
    assert (bright == (mask == 1)).mean() > 0.98  # image and mask share one pixel grid


def test_exif_rotated_jpeg_whose_mask_was_drawn_rotated(
    models: dict[str, Path], tmp_path: Path, json_out: Path
) -> None:
    root = make_folder(tmp_path / "ds", splits=True)
    (root / "images" / "im5.png").unlink()
    exif_jpeg(root / "images" / "im5.jpg", (W, H))  # stored WxH, shown HxW
    write_mask(root / "masks" / "im5.png", np.zeros((W, H), np.uint8))  # drawn on the shown one
    eval_fails(models["tiny"], f"folder:{root}", json_out, root / "masks" / "im5.png", "EXIF")


def test_resume_of_a_finished_run_keeps_it(segkd_here: Run, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ("train", "--data", "synthetic:size=64x128,train=4,val=2", *TRAIN, "--out", out,
            "--num-workers", "0", "--device", "cpu")  # fmt: skip
    assert segkd_here(*args).returncode == 0
    before = {p.name: sha256(p) for p in out.iterdir()}
    assert json.loads((out / "summary.json").read_text())["final"]
    r = segkd_here(*args, "--resume")
    assert_one_error(r, "--resume", "finished", "--iters")
    assert {p.name: sha256(p) for p in out.iterdir()} == before


def test_ctrl_c_in_the_demo_exits_130_and_keeps_the_old_video(
    models: dict[str, Path], tmp_path: Path, old_video: Path
) -> None:
    """A real SIGINT while the demo writes: the earlier video stays, the frames done so far
    are kept, complete, as old.partial.mp4."""
    import signal
    import time

    src = write_video(tmp_path / "long.avi", 3000, "MJPG")
    before = sha256(old_video)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "cli.py", "demo", str(src), "--model", str(models["tiny"]),
         "--out", str(old_video)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    tmp = old_video.with_name(".old.tmp.mp4")
    end = time.monotonic() + 120
    while not (tmp.exists() and tmp.stat().st_size > 0):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    # generous: a loaded machine is slow; an ignored SIGINT fails below on the exit code
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert sha256(old_video) == before
    partial = tmp_path / "old.partial.mp4"
    assert 0 < count_frames(partial) < 3000
    assert "old.partial.mp4" in out and not tmp.exists()


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (("demo", "{video}", "--model", "{tiny}", "--out", "{video}"), "--out"),
        (("demo", "{video}", "--model", "{tiny}", "--out", "{tmp}/x.mp4", "--json", "{tiny}"),
         "--json"),
        (("eval", "{tiny}", "--data", "folder:{data}", "--json", "{tiny}"), "--json"),
        (("eval", "{tiny}", "--data", "folder:{data}", "--save-predictions", "{data}/masks"),
         "--save-predictions"),
        (("bench", "{tiny}", "--iters", "1", "--json", "{tiny}"), "--json"),
    ],
    ids=["demo-out-is-source", "demo-json-is-model", "eval-json-is-model",
         "eval-predictions-over-masks", "bench-json-is-model"],
)  # fmt: skip
def test_an_output_that_is_an_input_is_refused(
    models: dict[str, Path], data: Path, tmp_path: Path, args: tuple[str, ...], culprit: str
) -> None:
    model = tmp_path / "tiny.onnx"
    shutil.copy(models["tiny"], model)
    video = write_video(tmp_path / "in.mp4", 3, "mp4v")
    files = [model, video, *sorted((data / "masks").iterdir())]
    before = {p: sha256(p) for p in files}
    argv = [a.format(video=video, tiny=model, data=data, tmp=tmp_path) for a in args]
    assert_one_error(segkd(*argv), culprit, "choose")
    assert {p: sha256(p) for p in files} == before


def test_export_json_that_overwrites_the_checkpoint_is_refused(
    segkd_here: Run, models: dict[str, Path], tmp_path: Path
) -> None:
    ckpt = tmp_path / "student.pt"
    shutil.copy(models["three"], ckpt)
    before = sha256(ckpt)
    r = segkd_here("export", ckpt, *EXPORT_FAST, "--out", tmp_path / "e", "--json", ckpt)
    assert_one_error(r, "--json", ckpt)
    assert sha256(ckpt) == before and not (tmp_path / "e").exists()


def export_folder_with(models: dict[str, Path], folder: Path, **changes: Any) -> Path:
    """A one-file export folder of the tiny model with export.json entries changed."""
    folder.mkdir()
    shutil.copy(models["tiny"], folder / "model.onnx")
    art = {"file": "model.onnx", "precision": "fp32", "output": "logits",
           "sha256": sha256(folder / "model.onnx")}  # fmt: skip
    manifest = {"format": "segkd-export", "version": 1, "arch": "tinyseg",
                "labels": LABELS.to_dict(), "preprocess": segkd_meta()["preprocess"],
                "artifacts": [art]}  # fmt: skip
    for key, value in changes.items():
        target = art if key == "sha256" else manifest
        if value is ...:
            del target[key]
        else:
            target[key] = value
    (folder / "export.json").write_text(json.dumps(manifest))
    return folder


def test_the_fixture_export_folder_is_good(models: dict[str, Path], tmp_path: Path) -> None:
    folder = export_folder_with(models, tmp_path / "export")
    data = make_folder(tmp_path / "ds", splits=True)
    assert segkd("eval", folder, "--data", f"folder:{data}").returncode == 0


@pytest.mark.parametrize(
    ("changes", "needles"),
    [
        ({"sha256": None}, ("model.onnx", "sha256", "None")),
        ({"sha256": ...}, ("model.onnx", "sha256")),
        ({"sha256": "abc"}, ("model.onnx", "sha256", "'abc'")),
        ({"version": "abc"}, ("export.json", "version", "'abc'")),
        ({"version": None}, ("export.json", "version", "None")),
    ],
    ids=["sha256-null", "sha256-missing", "sha256-short", "version-text", "version-null"],
)
def test_export_json_that_cannot_be_verified_is_refused(
    models: dict[str, Path], tmp_path: Path, json_out: Path, changes: dict, needles: tuple
) -> None:
    folder = export_folder_with(models, tmp_path / "export", **changes)
    data = make_folder(tmp_path / "ds", splits=True)
    eval_fails(folder, f"folder:{data}", json_out, *needles)


# -- issue 17: tracebacks instead of one line --------------------------------------------
def test_255_classes_collide_with_the_ignore_id(
    models: dict[str, Path], data: Path, json_out: Path
) -> None:
    (data / "classes.txt").write_text("".join(f"c{i}\n" for i in range(255)))
    line = eval_fails(models["tiny"], f"folder:{data}", json_out, data / "classes.txt", "255")
    assert "at most 254" in line


def test_a_decompression_bomb_mask(models: dict[str, Path], data: Path, json_out: Path) -> None:
    """A 14000x14000 PNG header: Pillow refuses to decode it (DecompressionBombError)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", 14000, 14000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
    mask = data / "masks" / "im4.png"
    mask.write_bytes(png + chunk(b"IEND", b""))
    eval_fails(models["tiny"], f"folder:{data}", json_out, mask)


def test_negative_seed_leaves_no_folder(segkd_here: Run, tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = segkd_here("train", "--data", "synthetic:size=64x128,train=4,val=2", *TRAIN,
                   "--seed", "-1", "--out", out)  # fmt: skip
    assert_one_error(r, "--seed", "-1")
    assert not out.exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [("format_version", "1"), ("model_kwargs", {"wings": 2}), ("num_classes", "3"),
     ("state_dict", [1, 2]), ("arch", 7), ("labels", {"names": 5}), ("model_kwargs", [])],
    ids=["version-text", "kwargs-unknown-key", "classes-text", "state-dict-list", "arch-int",
         "labels-bad", "kwargs-list"],
)  # fmt: skip
def test_checkpoint_with_one_malformed_field(
    segkd_here: Run, models: dict[str, Path], data: Path, json_out: Path, field: str, value: Any
) -> None:
    import torch

    from distill.checkpoint import atomic_torch_save

    ckpt = torch.load(models["three"], weights_only=True)
    ckpt[field] = value
    bad = data / "bad.pt"
    atomic_torch_save(ckpt, bad)
    eval_fails(bad, f"folder:{data}", json_out, bad, repr(field)[1:-1], run=segkd_here)


def test_teacher_that_is_an_onnx_model(
    segkd_here: Run, models: dict[str, Path], data: Path
) -> None:
    run = data.parent / "run"
    r = segkd_here("distill", "--teacher", models["tiny"], "--data", f"folder:{data}", *TRAIN,
                   "--out", run)  # fmt: skip
    line = assert_one_error(r, models["tiny"], "not a checkpoint", ".pt")
    assert "weights_only" not in line and not run.exists()


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (("teacher.iters=abc",), ("teacher.iters", "'abc'")),
        (("teacher.iters.x=5",), ("iters", "not a section")),
        (("export.calib_images=many",), ("export.calib_images", "'many'")),
        (("export.calib_images=0",), ("export.calib_images", "0")),
        (("distill.w_kd=.nan",), ("distill.w_kd", "nan")),
        (("eval.max_drop=.inf",), ("eval.max_drop", "inf")),
        (("student.batch_size=1",), ("student", "--batch-size")),
    ],
    ids=["iters-text", "value-made-section", "calib-text", "calib-zero", "weight-nan",
         "gate-inf", "student-batch-1"],
)  # fmt: skip
def test_pipeline_config_is_checked_before_the_first_step(
    segkd_here: Run, tmp_path: Path, overrides: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    args = [a for o in overrides for a in ("--set", o)]
    r = segkd_here("pipeline", "--out", tmp_path / "p", "--data", "synthetic:size=64x128", *args)
    assert_one_error(r, *needles)
    assert not (tmp_path / "p" / "teacher").exists()


def test_pipeline_config_of_the_wrong_type_in_a_file(segkd_here: Run, tmp_path: Path) -> None:
    cfg = tmp_path / "p.yaml"
    cfg.write_text('teacher:\n  iters: "2"\n')
    assert_one_error(segkd_here("pipeline", "--config", cfg, "--out", tmp_path / "p"),
                     "teacher.iters", "'2'")  # fmt: skip


def test_pipeline_yaml_syntax_error_names_the_line(segkd_here: Run, tmp_path: Path) -> None:
    cfg = tmp_path / "p.yaml"
    cfg.write_text("teacher:\n  iters: 2\nstudent: {iters: [1, 2}\n")
    r = segkd_here("pipeline", "--config", cfg, "--out", tmp_path / "p")
    assert_one_error(r, f"{cfg}:3:")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("eval", "{tiny}", "--data", "folder:{data}", "--reference", "{tiny}", "--max-drop",
          "nan"), ("--max-drop", "nan")),
        (("demo", "{video}", "--model", "{tiny}", "--out", "{tmp}/o.mp4", "--fps", "inf"),
         ("--fps", "inf")),
    ],
    ids=["max-drop-nan", "fps-inf"],
)  # fmt: skip
def test_nan_and_inf_options_are_refused(
    models: dict[str, Path], data: Path, tmp_path: Path, args: tuple[str, ...], needles: tuple
) -> None:
    video = write_video(tmp_path / "in.mp4", 3, "mp4v")
    argv = [a.format(video=video, tiny=models["tiny"], data=data, tmp=tmp_path) for a in args]
    assert_one_error(segkd(*argv), *needles)
    assert not (tmp_path / "o.mp4").exists()


def test_json_on_a_full_disk_names_the_file_and_keeps_the_old_one(
    segkd_here: Run, models: dict[str, Path], data: Path, json_out: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """ENOSPC from fsync (how delayed allocation reports a full disk) names no file."""
    import errno

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    eval_fails(models["tiny"], f"folder:{data}", json_out, json_out, "No space left on device",
               run=segkd_here)  # fmt: skip
    assert not [p for p in json_out.parent.iterdir() if p.name.endswith(".tmp")]


def test_a_dataset_error_leaves_no_empty_out_folder(segkd_here: Run, tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds")
    (root / "classes.txt").unlink()
    out = tmp_path / "run"
    r = segkd_here("train", "--data", f"folder:{root}", *TRAIN, "--out", out)
    assert_one_error(r, root / "classes.txt")
    assert not out.exists()


def test_distill_out_that_would_overwrite_the_teacher(
    segkd_here: Run, models: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    teacher = out / "best.pt"
    shutil.copy(models["three"], teacher)
    before = sha256(teacher)
    data = make_folder(tmp_path / "ds")
    r = segkd_here("distill", "--teacher", teacher, "--data", f"folder:{data}", *TRAIN,
                   "--out", out)  # fmt: skip
    assert_one_error(r, "--out", "--teacher", "choose")
    assert sha256(teacher) == before and sorted(p.name for p in out.iterdir()) == ["best.pt"]
