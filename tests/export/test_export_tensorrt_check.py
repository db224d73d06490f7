"""Every TensorRT-bound file `segkd export` writes passes the static TensorRT check
(runtime/tensorrt_onnx_check.py): fp32, fp16 and INT8 Q/DQ, float and uint8 inputs,
each output kind. The export runs the check itself and records it in export.json."""

from __future__ import annotations

import onnx
import pytest

from export.api import Tolerances, export_checkpoint
from runtime.tensorrt_onnx_check import TARGETS, check_tensorrt_onnx
from tests.export.tiny_student import DATA, train_tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The check is structural: a few training steps give a real graph; the agreement gates
# are another test's business, so they are opened here.
OPEN = Tolerances(fp32_min_agreement=0.9, fp16_min_agreement=0.0, int8_min_agreement=0.0)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory):
    return train_tiny(tmp_path_factory.mktemp("trtcheck") / "student.pt", steps=2)


@pytest.mark.parametrize(
    ("input_dtype", "output", "label_dtype"),
    [
        ("uint8", "labels", "uint8"),
        ("float32", "logits", "uint8"),
        ("uint8", "labels-lowres", "int32"),
    ],
)
def test_every_tensorrt_bound_file_passes(ckpt, tmp_path, input_dtype, output, label_dtype):
    report = export_checkpoint(
        ckpt, tmp_path / "out", precisions="fp32,fp16,int8", calib_data=DATA, calib_images=4,
        verify_images=2, input_dtype=input_dtype, output=output, label_dtype=label_dtype,
        int8_variants="tensorrt,cpu", tolerances=OPEN, build_engines=False,
    )  # fmt: skip
    bound = [a for a in report.artifacts if a["variant"] != "cpu"]
    assert {a["file"] for a in bound} == {"model.onnx", "model.fp16.onnx", "model.int8.onnx"}
    for a in bound:
        proto = onnx.load(str(report.out_dir / a["file"]))
        assert check_tensorrt_onnx(proto) == [], a["file"]
        assert a["tensorrt_check"]["passed"] == [t.version for t in TARGETS]
        if input_dtype == "uint8":  # the fix: the uint8 input feeds a Cast, nothing else
            users = [n.op_type for n in proto.graph.node if "input" in n.input]
            assert users == ["Cast"], a["file"]
        if output == "labels" and label_dtype == "uint8":  # labels reach uint8 from float
            assert [n.op_type for n in proto.graph.node][-3:] == ["ArgMax", "Cast", "Cast"]
    cpu = report.artifact("model.int8-cpu.onnx")
    assert "tensorrt_check" not in cpu  # the CPU recipe is never built by TensorRT


def test_the_old_uint8_export_is_stopped_in_one_line_naming_the_node(ckpt, tmp_path, monkeypatch):
    """Today's exporter with yesterday's graph: the uint8 frame transposed before its Cast
    and no float route to the uint8 labels. The export stops before writing anything."""
    import torch

    import export.steps
    from core.errors import SegkdError
    from export.onnx_fp32 import PixelInput

    def old_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        x = x.to(torch.float32)
        if self.flip:
            x = torch.flip(x, dims=[1])
        return x * self.scale + self.shift

    monkeypatch.setattr(PixelInput, "forward", old_forward)
    monkeypatch.setattr(export.steps, "uint8_casts_through_float", lambda model: 0)
    out = tmp_path / "out"
    with pytest.raises(SegkdError) as e:
        export_checkpoint(
            ckpt, out, precisions="fp32", calib_data=DATA, verify_images=1,
            input_dtype="uint8", tolerances=OPEN, build_engines=False,
        )  # fmt: skip
    line = str(e.value)
    assert "\n" not in line
    assert line.startswith("model.onnx: TensorRT cannot build it: node ")
    assert "(Transpose): takes the UINT8 network input 'input'" in line and "[3985]" in line
    assert "(and 1 more)" in line  # the ArgMax -> Cast(uint8)
    assert not out.exists()
