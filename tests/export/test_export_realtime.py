"""`segkd export` of briefly trained DDRNet-23-slim / PIDNet-S at 64x128: every precision
passes the parity gates, and the graph is static with fixed pooling ops."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.api import export_checkpoint
from export.int8 import pyramid_context_convs
from tests.export.tiny_student import DATA, SIZE, train_tiny

# SIZE 64x128: 1/64 is 1x2, so the pyramid's pools all reach a single cell
ARCHS = ("ddrnet23_slim", "pidnet_s")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def _convs(*modules: str) -> list[str]:
    """'/model/spp/scale1/scale1.3/Conv' from 'spp/scale1.3' (the authors' module names)."""
    out = []
    for m in modules:
        parent, _, leaf = m.rpartition("/")
        out.append(f"/model/{parent}/{leaf.split('.')[0]}/{leaf}/Conv" if "." in leaf
                   else f"/model/{m}/Conv")  # fmt: skip
    return out


# What the CPU INT8 recipe keeps in float besides the classifier: the whole pyramid (at
# 1/64 of the input) and the Convs its context merges into (export/int8.py).
PYRAMID = {
    "ddrnet23_slim": _convs(
        "spp/scale0.2", "spp/shortcut.2", "spp/scale1.3", "spp/scale2.3", "spp/scale3.3",
        "spp/scale4.3", "spp/process1.2", "spp/process2.2", "spp/process3.2", "spp/process4.2",
        "spp/compression.2", "final_layer/conv1",
    ),
    "pidnet_s": _convs(
        "spp/scale0.2", "spp/shortcut.2", "spp/scale1.3", "spp/scale2.3", "spp/scale3.3",
        "spp/scale4.3", "spp/scale_process.2", "spp/compression.2", "dfm/conv_i.0",
        "dfm/conv_p.0",
    ),
}  # fmt: skip


def test_cpu_int8_keeps_pyramid_and_its_merge_convs_float(exported) -> None:
    arch, report = exported
    fp32 = onnx.load(str(report.out_dir / "model.onnx"))
    assert sorted(pyramid_context_convs(fp32)) == sorted(PYRAMID[arch])
    # Without static shapes the resolution test cannot be made: nothing is claimed.
    del fp32.graph.value_info[:]
    assert pyramid_context_convs(fp32) == []
    proto = onnx.load(str(report.out_dir / "model.int8-cpu.onnx"))
    producers = {o: n for n in proto.graph.node for o in n.output}
    float_convs = {
        n.name
        for n in proto.graph.node
        if n.op_type == "Conv"
        and getattr(producers.get(n.input[1]), "op_type", None) != "DequantizeLinear"
    }
    assert float_convs == set(PYRAMID[arch]) | {"/model/final_layer/conv2/Conv"}
    quantized = [n for n in proto.graph.node if n.op_type == "Conv" and n.name not in float_convs]
    assert len(quantized) > 3 * len(float_convs)  # the backbone and branches stay int8
