"""The engine builder's version handling, against stand-ins shaped like TensorRT 10.x / 11.x.

No machine here has TensorRT, so these stand-ins only check what the builder asks of
the API: that the 11.x path never touches what 11.x removed (BuilderFlag.FP16/INT8),
that 10.x weak typing sets the flags, and that cached engines are reused. Whether a
real TensorRT builds and runs the engines is `test_export.py::test_tensorrt_engines`,
which skips without TensorRT.
"""

from __future__ import annotations

import sys
import types
from enum import IntEnum
from pathlib import Path

import numpy as np
import pytest

import export.tensorrt_engine as te
from runtime.errors import SegkdError


def fake_tensorrt(version: str, weak_typing_api: bool, calls: list) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.NetworkDefinitionCreationFlag = IntEnum(
        "NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 0}, start=0
    )
    flags = {"FP16": 0, "INT8": 1} if weak_typing_api else {"REFIT": 0}
    trt.BuilderFlag = IntEnum("BuilderFlag", flags, start=0)
    trt.MemoryPoolType = IntEnum("MemoryPoolType", {"WORKSPACE": 0}, start=0)
    trt.TensorIOMode = IntEnum("TensorIOMode", {"INPUT": 0, "OUTPUT": 1}, start=0)
    trt.DataType = IntEnum("DataType", {"FLOAT": 0, "UINT8": 1}, start=0)
    trt.nptype = lambda dt: {0: np.float32, 1: np.uint8}[int(dt)]

    class Logger:
        WARNING, VERBOSE = 2, 4

        def __init__(self, severity: int) -> None:
            self.severity = severity

    class Cache:
        def serialize(self) -> bytes:
            return b"timing"

    class Config:
        def __init__(self) -> None:
            self.builder_optimization_level = 3

        def set_memory_pool_limit(self, pool, size) -> None:
            calls.append(("workspace", size))

        def set_flag(self, flag) -> None:
            calls.append(("flag", flag.name))

        def add_optimization_profile(self, profile) -> None:
            calls.append(("profile", profile.shapes))

        def create_timing_cache(self, data: bytes) -> Cache:
            calls.append(("timing_in", data))
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch) -> None:
            assert ignore_mismatch is False

        def get_timing_cache(self) -> Cache:
            return Cache()

    class Profile:
        def set_shape(self, name, mn, opt, mx) -> None:
            self.shapes = (name, mn, opt, mx)

    class Network:
        def get_input(self, i):
            return types.SimpleNamespace(name="input")

    class Builder:
        def __init__(self, logger) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            calls.append(("network_flags", flags))
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network, config) -> bytes:
            calls.append(("build", config.builder_optimization_level))
            return b"engine-bytes"

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger) -> None:
            pass

        def parse_from_file(self, path: str) -> bool:
            return Path(path).is_file()

    class Engine:
        num_io_tensors = 2
        names = ("input", "labels")

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str):
            return trt.TensorIOMode.INPUT if name == "input" else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name: str):
            return (1, 3, 64, 128) if name == "input" else (1, 64, 128)

        def get_tensor_dtype(self, name: str):
            return trt.DataType.FLOAT if name == "input" else trt.DataType.UINT8

    class Runtime:
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> Engine:
            assert data == b"engine-bytes"
            return Engine()

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    return trt


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.int8.onnx"
    path.write_bytes(b"stand-in onnx bytes")
    return path


def _build(monkeypatch, tmp_path: Path, onnx_file: Path, trt, opts: te.TrtOptions, **kw):
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(te, "gpu_identity", lambda: {"name": "Orin", "compute_capability": "8.7"})
    return te.build_engine(
        onnx_file, tmp_path / kw.pop("name", "model.int8.engine"), precision=kw.pop("precision", "int8"),
        onnx_sha256="ab" * 32, input_size=(64, 128), dynamic=kw.pop("dynamic", False), opts=opts,
    )  # fmt: skip


def test_tensorrt_11_is_strongly_typed_and_never_sets_removed_flags(
    monkeypatch, tmp_path, onnx_file
) -> None:
    calls: list = []
    trt = fake_tensorrt("11.4.0", weak_typing_api=False, calls=calls)
    opts = te.TrtOptions(cache_dir=tmp_path / "cache", weak_typing=True)  # ignored on 11.x
    built = _build(monkeypatch, tmp_path, onnx_file, trt, opts)
    assert built.strongly_typed and not built.from_cache
    assert ("network_flags", 1) in calls
    assert not [c for c in calls if c[0] == "flag"]
    assert built.inputs == [{"name": "input", "shape": [1, 3, 64, 128], "dtype": "float32"}]
    assert built.outputs[0]["dtype"] == "uint8"
    assert (tmp_path / "model.int8.engine").read_bytes() == b"engine-bytes"
    assert (tmp_path / "cache" / "timing-trt11.4.0.cache").read_bytes() == b"timing"


def test_tensorrt_10_weak_typing_sets_precision_flags(monkeypatch, tmp_path, onnx_file) -> None:
    calls: list = []
    trt = fake_tensorrt("10.3.0", weak_typing_api=True, calls=calls)
    opts = te.TrtOptions(cache_dir=tmp_path / "cache", weak_typing=True, optimization_level=5)
    built = _build(monkeypatch, tmp_path, onnx_file, trt, opts)
    assert not built.strongly_typed
    assert ("network_flags", 0) in calls
    assert [c[1] for c in calls if c[0] == "flag"] == ["FP16", "INT8"]
    assert ("build", 5) in calls


def test_cached_engine_is_reused_and_keyed_on_version(monkeypatch, tmp_path, onnx_file) -> None:
    calls: list = []
    opts = te.TrtOptions(cache_dir=tmp_path / "cache")
    trt10 = fake_tensorrt("10.3.0", weak_typing_api=True, calls=calls)
    first = _build(monkeypatch, tmp_path, onnx_file, trt10, opts, name="a.engine")
    again = _build(monkeypatch, tmp_path, onnx_file, trt10, opts, name="b.engine")
    assert again.from_cache and again.cache_key == first.cache_key
    assert sum(c[0] == "build" for c in calls) == 1
    assert (tmp_path / "b.engine").read_bytes() == b"engine-bytes"
    # The timing cache written by the first build is fed to later builds of that version.
    other = _build(monkeypatch, tmp_path, onnx_file, trt10, opts, name="c.engine", precision="fp16")
    assert not other.from_cache and ("timing_in", b"timing") in calls
    trt11 = fake_tensorrt("11.4.0", weak_typing_api=False, calls=calls)
    newer = _build(monkeypatch, tmp_path, onnx_file, trt11, opts, name="d.engine")
    assert not newer.from_cache and newer.cache_key != first.cache_key


def test_dynamic_profile(monkeypatch, tmp_path, onnx_file) -> None:
    calls: list = []
    trt = fake_tensorrt("11.4.0", weak_typing_api=False, calls=calls)
    opts = te.TrtOptions(cache_dir=tmp_path / "cache", max_batch=4)
    built = _build(monkeypatch, tmp_path, onnx_file, trt, opts, dynamic=True)
    assert ("profile", ("input", (1, 3, 32, 64), (1, 3, 64, 128), (4, 3, 64, 128))) in calls
    assert built.profile == [[1, 3, 32, 64], [1, 3, 64, 128], [4, 3, 64, 128]]
    with pytest.raises(SegkdError, match="profile"):
        te.profile_shapes((64, 128), te.TrtOptions(profile_max_size=(48, 96)))
