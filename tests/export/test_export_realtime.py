"""`segkd export` of briefly trained DDRNet-23-slim / PIDNet-S at 64x128: every precision
passes the parity gates, and the graph is static with fixed pooling ops."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from distill.checkpoint import atomic_torch_save, make_checkpoint
from distill.data import build_dataset
from distill.models import build_model
from export.api import export_checkpoint
from runtime.preprocess import PreprocessSpec

SIZE = (64, 128)  # 1/64 is 1x2: the pyramid's pools all reach a single cell
DATA = "synthetic:size=64x128,train=48,val=6"
ARCHS = ("ddrnet23_slim", "pidnet_s")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train_tiny(arch: str, path: Path, steps: int = 60) -> Path:
    """60 SGD steps of CE on synthetic scenes: enough for logit margins INT8 can keep
    (a random net's labels flip under any rounding, which says nothing about a student)."""
    torch.manual_seed(0)
    ds = build_dataset(DATA, "train")
    pre = PreprocessSpec(input_size=SIZE)
    model = build_model(arch, ds.labels.num_classes, aux=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    model.train()
    rng = np.random.default_rng(0)
    for _ in range(steps):
        batch = [ds[int(i)] for i in rng.integers(0, len(ds), 4)]
        x = torch.from_numpy(np.stack([pre.normalize(img) for img, _ in batch]))
        y = torch.from_numpy(np.stack([m for _, m in batch])).long()
        logits = F.interpolate(model(x)["logits"], size=SIZE, mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, y, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ckpt = make_checkpoint(
        model=model,
        arch=arch,
        model_kwargs=model.model_kwargs,
        labels=ds.labels,
        preprocess=pre,
        config={"data": DATA},
    )
    atomic_torch_save(ckpt, path)
    return path


@pytest.fixture(scope="module", params=ARCHS)
def exported(request, tmp_path_factory: pytest.TempPathFactory):
    arch = request.param
    ckpt = _train_tiny(arch, tmp_path_factory.mktemp(arch) / "student.pt")
    report = export_checkpoint(
        ckpt,
        tmp_path_factory.mktemp(f"{arch}-export"),
        calib_data=DATA,
        calib_images=32,
        verify_images=6,
        int8_method="minmax",
    )  # raises if any file misses its gate
    return arch, report


def test_every_precision_passes_its_gate(exported) -> None:
    _, report = exported
    files = {a["file"]: a for a in report.artifacts}
    assert set(files) == {"model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.int8-cpu.onnx"}
    parity = files["model.onnx"]["parity"]
    assert parity["pixel_agreement"] >= 0.999 and parity["max_abs_logit_diff"] <= 1e-3
    for name in ("model.fp16.onnx", "model.int8.onnx", "model.int8-cpu.onnx"):
        agreement = files[name]["agreement"]
        assert agreement["pixel_agreement"] >= agreement["min_pixel_agreement"], name


def test_static_graph_with_fixed_pools_and_no_training_heads(exported) -> None:
    """No Shape arithmetic left (every Resize size is a constant), DAPPM/PAPPM pools are
    AveragePool 5/9/17 at strides 2/4/8 plus one GlobalAveragePool, and the graph holds
    only the main classifier: the aux / boundary heads are not exported."""
    arch, report = exported
    proto = onnx.load(str(report.out_dir / "model.onnx"))
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    assert not {"Shape", "Gather", "Slice", "Range", "Loop", "If"} & set(ops), ops
    consts = {i.name for i in proto.graph.initializer}
    consts |= {o for n in proto.graph.node if n.op_type == "Constant" for o in n.output}
    for node in proto.graph.node:
        if node.op_type == "Resize":
            assert all(i in consts for i in node.input[1:] if i), node.name
    pools = []
    for node in proto.graph.node:
        if node.op_type == "AveragePool":
            attrs = {a.name: list(a.ints) for a in node.attribute if a.ints}
            pools.append((attrs["kernel_shape"], attrs["strides"], attrs["pads"]))
    assert sorted(pools) == [
        ([5, 5], [2, 2], [2, 2, 2, 2]),
        ([9, 9], [4, 4], [4, 4, 4, 4]),
        ([17, 17], [8, 8], [8, 8, 8, 8]),
    ]
    assert ops["GlobalAveragePool"] == 1
    assert proto.graph.output[0].name == "labels"
    session = ort.InferenceSession(str(report.out_dir / "model.onnx"))
    (labels,) = session.run(None, {"input": np.zeros((1, 3, *SIZE), np.float32)})
    assert labels.shape == (1, *SIZE)
    del arch
