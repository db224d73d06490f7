"""open_segmenter on export folders: artifact choice, integrity and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import SegkdError
from runtime.backends.tensorrt import tensorrt_available
from runtime.loader import open_segmenter
from tests.runtime.rt_models import LABELS, write_export_folder


def test_folder_defaults_to_fp32_onnx_and_picks_by_precision(
    model_dir: Path, tmp_path: Path
) -> None:
    folder = write_export_folder(tmp_path / "exp", model_dir)
    seg = open_segmenter(folder)
    assert seg.model_path == folder / "model.onnx" and seg.precision == "fp32"
    assert seg.labels == LABELS
    seg16 = open_segmenter(folder, precision="fp16")
    assert seg16.model_path == folder / "model.labels.onnx" and seg16.precision == "fp16"
    with pytest.raises(SegkdError, match="no artifact for backend auto and precision int8"):
        open_segmenter(folder, precision="int8")


@pytest.mark.skipif(tensorrt_available(), reason="checks the fallback on machines without TensorRT")
def test_folder_with_engine_uses_onnx_when_tensorrt_is_absent(
    model_dir: Path, tmp_path: Path
) -> None:
    folder = write_export_folder(tmp_path / "exp", model_dir, engines=True)
    assert open_segmenter(folder).backend_name == "onnxruntime"
    with pytest.raises(SegkdError, match="TensorRT Python package"):
        open_segmenter(folder, backend="tensorrt")
    with pytest.raises(SegkdError, match="TensorRT Python package"):
        open_segmenter(folder / "model.fp16.engine")


def test_changed_artifact_fails_its_sha256(model_dir: Path, tmp_path: Path) -> None:
    folder = write_export_folder(tmp_path / "exp", model_dir)
    with (folder / "model.onnx").open("ab") as f:
        f.write(b"\x00")  # a truncated/edited copy no longer matches export.json
    with pytest.raises(SegkdError, match="sha256 differs") as e:
        open_segmenter(folder)
    assert str(folder / "model.onnx") in str(e.value)
    # verify=False skips the hash: a manifest with a stale hash then still opens.
    folder = write_export_folder(tmp_path / "exp2", model_dir)
    manifest = json.loads((folder / "export.json").read_text())
    manifest["artifacts"][0]["sha256"] = "0" * 64
    (folder / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(SegkdError, match="sha256 differs"):
        open_segmenter(folder)
    assert open_segmenter(folder, verify=False).backend_name == "onnxruntime"


def test_folder_and_path_errors_name_the_culprit(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SegkdError, match="model not found") as e:
        open_segmenter(tmp_path / "nope.onnx")
    assert str(tmp_path / "nope.onnx") in str(e.value)
    weird = tmp_path / "model.tflite"
    weird.write_bytes(b"x")
    with pytest.raises(SegkdError, match=r"unknown model type '\.tflite'"):
        open_segmenter(weird)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SegkdError, match=r"has no export\.json"):
        open_segmenter(empty)
    folder = write_export_folder(tmp_path / "exp", model_dir)
    (folder / "model.onnx").unlink()
    with pytest.raises(SegkdError, match=r"lists model\.onnx, but"):
        open_segmenter(folder)
    (folder / "export.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(SegkdError, match="not a segkd export manifest"):
        open_segmenter(folder)
    with pytest.raises(SegkdError, match="--backend 'tflite'"):
        open_segmenter(folder, backend="tflite")
    with pytest.raises(SegkdError, match="--precision 'int4'"):
        open_segmenter(folder, precision="int4")


def test_engine_without_metadata_is_refused(tmp_path: Path) -> None:
    engine = tmp_path / "lonely.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(SegkdError, match="no metadata for this engine") as e:
        open_segmenter(engine)
    assert str(engine) in str(e.value)


def test_auto_falls_back_to_onnx_when_the_engine_cannot_run(
    model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # As on a machine where tensorrt imports but the engine cannot run (no GPU, other version).
    import logging

    import runtime.backends.tensorrt as trt_backend

    monkeypatch.setattr(trt_backend, "tensorrt_available", lambda: True)
    folder = write_export_folder(tmp_path / "exp", model_dir, engines=True)
    with caplog.at_level(logging.WARNING, logger="runtime.loader"):
        seg = open_segmenter(folder)
    assert seg.backend_name == "onnxruntime" and seg.model_path == folder / "model.onnx"
    assert "falling back to ONNX Runtime" in caplog.text and "model.fp16.engine" in caplog.text


def _add_int8(folder: Path, variant: str, name: str) -> None:
    """A copy of the fp32 logits file listed as an INT8 artifact of `variant`."""
    import onnx

    from core.atomic_io import sha256_of
    from tests.runtime.rt_models import segkd_meta

    model = onnx.load(str(folder / "model.onnx"))
    del model.metadata_props[:]
    meta = {**segkd_meta("logits", "int8"), "variant": variant}
    model.metadata_props.add(key="segkd", value=json.dumps(meta))
    onnx.save(model, str(folder / name))
    manifest = json.loads((folder / "export.json").read_text())
    manifest["artifacts"].append(
        {"file": name, "precision": "int8", "variant": variant, "output": "logits",
         "sha256": sha256_of(folder / name), "inputs": [{"name": "input"}],
         "outputs": [{"name": "logits"}]}
    )  # fmt: skip
    (folder / "export.json").write_text(json.dumps(manifest))


def test_folder_picks_the_fastest_artifact_for_onnxruntime_cpu(
    model_dir: Path, tmp_path: Path
) -> None:
    """On ONNX Runtime's CPU provider the CPU INT8 variant is the fastest artifact (the
    TensorRT-bound Q/DQ file is slower there than fp32): it is chosen with no precision
    and for --precision int8; an older folder without it keeps fp32 as its default."""
    folder = write_export_folder(tmp_path / "exp", model_dir)
    _add_int8(folder, "tensorrt", "model.int8.onnx")
    # TensorRT-bound file only: int8 asked -> that file; default -> fp32 (faster on CPU)
    assert open_segmenter(folder, device="cpu").model_path.name == "model.onnx"
    assert open_segmenter(folder, precision="int8").model_path.name == "model.int8.onnx"
    _add_int8(folder, "cpu", "model.int8-cpu.onnx")
    for precision in (None, "int8"):
        for device in ("cpu", "auto"):  # auto: on this machine the session runs on CPU
            seg = open_segmenter(folder, device=device, precision=precision)
            assert seg.model_path.name == "model.int8-cpu.onnx", (precision, device)
            assert seg.provider == "CPUExecutionProvider" and seg.precision == "int8"
    assert open_segmenter(folder, precision="fp32").model_path.name == "model.onnx"


def test_pick_order_per_runtime(model_dir: Path, tmp_path: Path) -> None:
    from runtime.loader import _pick_from_folder

    folder = write_export_folder(tmp_path / "exp", model_dir)
    _add_int8(folder, "tensorrt", "model.int8.onnx")
    _add_int8(folder, "cpu", "model.int8-cpu.onnx")
    picks = {
        kind: _pick_from_folder(folder, "onnxruntime", None, kind=kind).name
        for kind in ("cpu", "cuda", "tensorrt")
    }
    # model.labels.onnx is this folder's fp16 stand-in
    assert picks == {
        "cpu": "model.int8-cpu.onnx",
        "cuda": "model.labels.onnx",
        "tensorrt": "model.int8.onnx",
    }
    assert _pick_from_folder(folder, "onnxruntime", "int8", kind="cuda").name == "model.int8.onnx"
