"""Non-square images at eval and deploy, and the two evaluation conventions.

A `folder:` dataset of 3:4 and 16:9 PNGs whose label is a disc around the image centre
with radius a quarter of the long side. The stand-in network knows only positions in
its own input: it predicts the disc a letterboxed image puts there. It is exact when
the image keeps its aspect ratio and wrong where a stretch distorts it, so it tells
whether `segkd eval` undoes the geometry the way the model saw it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from core.preprocess import Letterbox, PreprocessSpec
from distill.checkpoint import atomic_torch_save, load_checkpoint, load_model, make_checkpoint
from distill.data import build_dataset
from distill.models import build_model
from distill.training import TrainConfig, train
from runtime.postprocess import upsample_argmax

INPUT = 64  # the stand-in's square input size
SHAPES = [(96, 72), (72, 128), (96, 72), (72, 128)]  # (H, W): 3:4 portrait, 16:9 landscape


def disc_mask(h: int, w: int) -> np.ndarray:
    """1 inside the disc around the image centre of radius max(h, w) / 4, else 0."""
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy + 0.5 - h / 2, xx + 0.5 - w / 2)
    return (r < max(h, w) / 4).astype(np.uint8)


def write_folder_dataset(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "splits").mkdir()
    (root / "classes.txt").write_text("background\ndisc\n")
    rng = np.random.default_rng(0)
    stems = []
    for i, (h, w) in enumerate(SHAPES):
        mask = disc_mask(h, w)
        image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        image[mask == 1] += np.uint8(150)  # the disc is visible in the picture too
        stem = f"img{i}_{w}x{h}"
        assert cv2.imwrite(str(root / "images" / f"{stem}.png"), image)
        assert cv2.imwrite(str(root / "masks" / f"{stem}.png"), mask)
        stems.append(stem)
    for split in ("train", "val"):
        (root / "splits" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return root


def standin_logits() -> np.ndarray:
    """(1, 2, INPUT, INPUT): class 1 inside the disc of radius INPUT/4 about the centre."""
    yy, xx = np.mgrid[0:INPUT, 0:INPUT]
    r = np.hypot(yy + 0.5 - INPUT / 2, xx + 0.5 - INPUT / 2)
    disc = (INPUT / 4 - r).astype(np.float32)
    return np.stack([np.zeros_like(disc), disc])[None].astype(np.float32)


def write_standin(path: Path, preprocess: dict[str, Any], labels: dict[str, Any]) -> Path:
    """An ONNX logits model: the fixed disc scores, plus 0 x mean(input) so it reads x."""
    const = numpy_helper.from_array(standin_logits(), "disc")
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["m"], keepdims=1),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["disc", "z"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "disc",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, INPUT, INPUT])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, INPUT, INPUT])],
        initializer=[const, zero],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"arch": "disc-standin", "labels": labels, "preprocess": preprocess, "output": "logits"}
    model.metadata_props.add(key="segkd", value=json.dumps(meta))
    onnx.save(model, str(path))
    return path


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: Any) -> int:
    import cli

    monkeypatch.setattr(sys, "argv", ["segkd", *map(str, args)])
    try:
        cli.main()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    return 0


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_folder_dataset(tmp_path_factory.mktemp("data") / "discs")


@pytest.fixture(scope="module")
def trained_preprocess(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The PreprocessSpec a (2-step) training run on the folder data writes into best.pt."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(
        data=f"folder:{folder}", model="pspnet_r18", out=str(out), iters=2, batch_size=2,
        crop_size=(INPUT, INPUT), lr=0.01, log_interval=1, num_workers=0, seed=0,
        scale_range=(1.0, 1.0),
    )  # fmt: skip
    train(cfg)
    return load_checkpoint(out / "best.pt")["preprocess"]


def test_training_on_folder_data_ships_a_letterbox_spec(trained_preprocess: dict) -> None:
    assert trained_preprocess["resize"] == "letterbox"
    assert trained_preprocess["input_size"] == [INPUT, INPUT]  # the square crop


@pytest.mark.parametrize("convention", ["auto", "logits", "labels"])
def test_segkd_eval_keeps_the_aspect_ratio_of_non_square_images(
    folder: Path,
    trained_preprocess: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    convention: str,
) -> None:
    labels = build_dataset(f"folder:{folder}", "val").labels.to_dict()
    model = write_standin(tmp_path / "disc.onnx", trained_preprocess, labels)
    out = tmp_path / "eval.json"
    args = ["eval", model, "--data", f"folder:{folder}", "--convention", convention]
    assert run_cli(monkeypatch, *args, "--json", out) == 0
    result = json.loads(out.read_text())
    assert result["num_samples"] == len(SHAPES)
    assert result["convention"] == ("logits" if convention == "auto" else convention)
    assert result["pixel_acc"] >= 0.99, result["pixel_acc"]


def test_the_standin_fails_when_images_are_stretched(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: the same stand-in under the old `stretch` spec scores visibly worse."""
    labels = build_dataset(f"folder:{folder}", "val").labels.to_dict()
    stretch = PreprocessSpec(input_size=(INPUT, INPUT), resize="stretch").to_dict()
    model = write_standin(tmp_path / "disc.onnx", stretch, labels)
    out = tmp_path / "eval.json"
    assert run_cli(monkeypatch, "eval", model, "--data", f"folder:{folder}", "--json", out) == 0
    assert json.loads(out.read_text())["pixel_acc"] < 0.95


def test_old_stretch_checkpoints_of_folder_data_load_letterboxed(
    folder: Path, tmp_path: Path
) -> None:
    labels = build_dataset(f"folder:{folder}", "val").labels
    model = build_model("pspnet_r18", labels.num_classes, aux=False)
    for data, want in ((f"folder:{folder}", "letterbox"), ("synthetic", "stretch")):
        ckpt = make_checkpoint(
            model=model,
            arch="pspnet_r18",
            model_kwargs=model.model_kwargs,
            labels=labels,
            preprocess=PreprocessSpec(input_size=(INPUT, INPUT), resize="stretch"),
            config={"data": data},
        )
        atomic_torch_save(ckpt, tmp_path / "old.pt")
        _, loaded = load_model(tmp_path / "old.pt")
        assert loaded["preprocess"]["resize"] == want


def test_logits_convention_is_refused_for_label_map_artifacts(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture
) -> None:
    """--convention logits on a label-map artifact: one error line, exit 2."""
    labels = build_dataset(f"folder:{folder}", "val").labels.to_dict()
    pre = PreprocessSpec(input_size=(INPUT, INPUT), resize="letterbox").to_dict()
    model = write_standin(tmp_path / "disc.onnx", pre, labels)
    proto = onnx.load(str(model))
    argmax = helper.make_node("ArgMax", ["logits"], ["labels"], axis=1, keepdims=0)
    proto.graph.node.append(argmax)
    del proto.graph.output[:]
    proto.graph.output.append(
        helper.make_tensor_value_info("labels", TensorProto.INT64, [1, INPUT, INPUT])
    )
    meta = json.loads(proto.metadata_props[0].value)
    proto.metadata_props[0].value = json.dumps({**meta, "output": "labels"})
    onnx.save(proto, str(model))
    capfd.readouterr()
    args = ("eval", model, "--data", f"folder:{folder}", "--convention", "logits")
    assert run_cli(monkeypatch, *args) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--convention logits" in err[0], err
    out = tmp_path / "eval.json"
    assert run_cli(monkeypatch, "eval", model, "--data", f"folder:{folder}", "--json", out) == 0
    result = json.loads(out.read_text())
    assert result["convention"] == "labels" and result["pixel_acc"] >= 0.99


@pytest.mark.parametrize("classes", [19, 150])
def test_upsample_argmax_is_bilinear_then_argmax(classes: int) -> None:
    """Against PyTorch's bilinear (align_corners=False) + argmax, letterbox crop included."""
    rng = np.random.default_rng(classes)
    logits = rng.normal(size=(classes, 40, 48)).astype(np.float32)
    box = Letterbox(scale=0.5, top=4, left=0, height=32, width=48)
    got = upsample_argmax(logits, box, (77, 101))
    crop = torch.from_numpy(logits[:, 4:36, :])[None]
    up = F.interpolate(crop, size=(77, 101), mode="bilinear", align_corners=False)
    scores = up[0].numpy()
    want = scores.argmax(0)
    assert got.shape == (77, 101) and got.dtype == np.uint8
    # OpenCV and PyTorch round differently (~1e-6): only near-ties may pick another class.
    yy, xx = np.nonzero(got != want)
    gap = scores[want[yy, xx], yy, xx] - scores[got[yy, xx].astype(int), yy, xx]
    assert len(yy) <= 5 and np.all(gap < 1e-4), gap
