"""`segkd export` of briefly trained DDRNet-23-slim / PIDNet-S at 64x128: every precision
passes the parity gates, and the graph is static with fixed pooling ops."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.api import export_checkpoint
from tests.export.tiny_student import DATA, SIZE, train_tiny

# SIZE 64x128: 1/64 is 1x2, so the pyramid's pools all reach a single cell
ARCHS = ("ddrnet23_slim", "pidnet_s")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=ARCHS)
def exported(request, tmp_path_factory: pytest.TempPathFactory):
    arch = request.param
    ckpt = train_tiny(tmp_path_factory.mktemp(arch) / "student.pt", arch, steps=60)
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
