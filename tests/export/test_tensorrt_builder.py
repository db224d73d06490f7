"""The engine builder's version handling, against stand-ins shaped like TensorRT 10.x / 11.x.

No machine here has TensorRT, so these stand-ins only check what the builder asks of
the API: that the 11.x path never touches what 11.x removed (BuilderFlag.FP16/INT8),
that 10.x weak typing sets the flags, and that cached engines are reused. Whether a
real TensorRT builds and runs the engines is `test_export.py::test_tensorrt_engines`,
which skips without TensorRT.
"""

from __future__ import annotations

import hashlib
import sys
import types
from enum import IntEnum
from pathlib import Path

import numpy as np
import pytest

import runtime.backends.tensorrt_builder as te
from core.errors import SegkdError
from runtime.gpu import GpuIdentity


def fake_tensorrt(
    version: str, weak_typing_api: bool, calls: list, dla_cores: int = 0
) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.NetworkDefinitionCreationFlag = IntEnum(
        "NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 0}, start=0
    )
    flags = {"FP16": 0, "INT8": 1, "GPU_FALLBACK": 2} if weak_typing_api else {"GPU_FALLBACK": 2}
    trt.BuilderFlag = IntEnum("BuilderFlag", flags, start=0)
    trt.MemoryPoolType = IntEnum("MemoryPoolType", {"WORKSPACE": 0}, start=0)
    trt.DeviceType = IntEnum("DeviceType", {"GPU": 0, "DLA": 1}, start=0)
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

        def __setattr__(self, name, value) -> None:
            if name in ("default_device_type", "DLA_core"):
                calls.append((name, value))
            object.__setattr__(self, name, value)

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
        num_DLA_cores = dla_cores

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


ORIN = GpuIdentity(0, "Orin", "8.7", total_bytes=8 * 2**30, free_bytes=6 * 2**30, integrated=True)


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.int8.onnx"
    path.write_bytes(b"stand-in onnx bytes")
    return path


def _build(monkeypatch, tmp_path: Path, onnx_file: Path, trt, opts: te.TrtOptions, **kw):
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    l4t = kw.pop("l4t", "36.4.3")
    gpu = kw.pop("gpu", ORIN)
    monkeypatch.setattr(te, "gpu_identity", lambda: gpu)
    monkeypatch.setattr(te, "l4t_release", lambda: l4t)
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
    facts = built.manifest_facts()  # what export.json records, from export or build alike
    assert facts["sha256"] == hashlib.sha256(b"engine-bytes").hexdigest()
    assert (facts["gpu"], facts["compute_capability"], facts["l4t"]) == ("Orin", "8.7", "36.4.3")
    assert facts["input_name"] == "input" and facts["output_name"] == "labels"


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


@pytest.mark.parametrize("version", ["8.6.2", "10.0.1", "10.2.0"])
def test_tensorrt_older_than_10_3_is_refused_naming_the_jetpack(
    monkeypatch, tmp_path, onnx_file, version
) -> None:
    trt = fake_tensorrt(version, weak_typing_api=True, calls=[])
    with pytest.raises(SegkdError, match=r"^TensorRT .* not supported .* JetPack 6.1 or newer"):
        _build(monkeypatch, tmp_path, onnx_file, trt, te.TrtOptions(cache_dir=tmp_path / "c"))
    assert not (tmp_path / "model.int8.engine").exists()


@pytest.mark.parametrize("version", ["10.3.0", "10.16.2", "11.4.1"])
def test_supported_versions_pass_the_version_check(version) -> None:
    te.check_tensorrt_version(version)


def test_workspace_default_is_half_the_free_memory_at_most_4_gib() -> None:
    auto = te.TrtOptions()
    assert auto.workspace_bytes(6 * 2**30) == 3 * 2**30  # Orin Nano 8 GB, 6 GiB free
    assert auto.workspace_bytes(70 * 2**30) == 4 * 2**30  # a desktop GPU: the cap
    assert te.TrtOptions(workspace_gib=1.5).workspace_bytes(2**30) == int(1.5 * 2**30)


def test_the_build_uses_the_workspace_from_free_memory(monkeypatch, tmp_path, onnx_file) -> None:
    calls: list = []
    trt = fake_tensorrt("10.3.0", weak_typing_api=True, calls=calls)
    built = _build(monkeypatch, tmp_path, onnx_file, trt, te.TrtOptions(cache_dir=tmp_path / "c"))
    assert ("workspace", 3 * 2**30) in calls and built.workspace_bytes == 3 * 2**30


def test_dla_on_a_module_without_dla_is_refused(monkeypatch, tmp_path, onnx_file) -> None:
    trt = fake_tensorrt("10.3.0", weak_typing_api=True, calls=[], dla_cores=0)  # Orin Nano
    opts = te.TrtOptions(cache_dir=tmp_path / "c", dla_core=0)
    with pytest.raises(SegkdError, match=r"^--dla-core 0: Orin has no DLA"):
        _build(monkeypatch, tmp_path, onnx_file, trt, opts)
    trt = fake_tensorrt("10.3.0", weak_typing_api=True, calls=[], dla_cores=2)  # AGX Orin
    with pytest.raises(SegkdError, match=r"cores 0\.\.1"):
        _build(monkeypatch, tmp_path, onnx_file, trt, te.TrtOptions(dla_core=2))
    with pytest.raises(SegkdError, match="fp16 or int8 only"):
        _build(monkeypatch, tmp_path, onnx_file, trt, opts, precision="fp32")


def test_dla_build_falls_back_to_the_gpu_with_a_fixed_shape(monkeypatch, tmp_path, onnx_file):
    calls: list = []
    trt = fake_tensorrt("10.3.0", weak_typing_api=True, calls=calls, dla_cores=2)
    opts = te.TrtOptions(cache_dir=tmp_path / "c", dla_core=1)
    built = _build(monkeypatch, tmp_path, onnx_file, trt, opts, dynamic=True)
    assert ("default_device_type", trt.DeviceType.DLA) in calls and ("DLA_core", 1) in calls
    assert ("flag", "GPU_FALLBACK") in calls
    assert built.profile is None and not [c for c in calls if c[0] == "profile"]
    gpu = _build(monkeypatch, tmp_path, onnx_file, trt, te.TrtOptions(cache_dir=tmp_path / "c"))
    assert gpu.cache_key != built.cache_key and built.dla_core == 1


def test_cache_key_covers_every_field_an_engine_is_tied_to() -> None:
    base = dict(
        onnx_sha256="ab" * 32, tensorrt_version="10.3.0", gpu_name="Orin",
        compute_capability="8.7", precision="fp16", input_shape=[1, 3, 64, 128], l4t="36.4.3",
    )  # fmt: skip
    key = te.engine_cache_key(**base)
    assert te.engine_cache_key(**base) == key
    for field, other in (
        ("onnx_sha256", "cd" * 32), ("tensorrt_version", "10.16.2"), ("gpu_name", "H100"),
        ("compute_capability", "9.0"), ("precision", "int8"),
        ("input_shape", [1, 3, 64, 96]), ("l4t", "36.4.0"),
    ):  # fmt: skip
        assert te.engine_cache_key(**{**base, field: other}) != key, field


@pytest.mark.parametrize(
    ("version", "has_dla"),
    [("10.3.0", True), ("10.7.0", True), ("10.8.0", False), ("10.16.2", False),
     ("11.2.0", False), ("11.4.1", True), ("11.5.0", False)],
)  # fmt: skip
def test_dla_exists_only_in_the_tensorrt_releases_that_kept_it(version, has_dla) -> None:
    assert te.dla_in_tensorrt(version) is has_dla
    if has_dla:
        te.check_dla(0, 2, "fp16", "Orin", version)
    else:
        with pytest.raises(SegkdError, match=rf"^--dla-core 0: TensorRT {version} has no DLA"):
            te.check_dla(0, 2, "fp16", "Orin", version)
