"""INT8 calibration: a seeded sample of the whole split, read lazily, fed in chunks.

The model is a two-Conv ONNX graph, so calibrating it takes a fraction of a second; what
is checked is onnxruntime's calibrators as segkd drives them.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.calibrate import create_calibrator

from core.preprocess import PreprocessSpec
from export import int8
from export.calibration import SampledSplit, SampleReader, sample_indices

SIZE = (64, 128)
DATA = f"synthetic:size={SIZE[0]}x{SIZE[1]},train=48,val=4"


def conv_model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(size=(16, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(16, 16, 3, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "w2"], ["out"], pads=[1, 1, 1, 1], name="c2"),
    ]
    graph = helper.make_graph(
        nodes,
        "convs",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, *SIZE])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 16, *SIZE])],
        initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def inputs(n: int) -> list[np.ndarray]:
    """Random inputs whose spread differs per image, so later chunks exceed earlier ranges."""
    return [
        np.random.default_rng(i).normal(size=(1, 3, *SIZE)).astype(np.float32) * (1 + i % 5)
        for i in range(n)
    ]


def ranges_of(cache: Path) -> dict[str, tuple[float, float]]:
    d = json.loads(cache.read_text())["data"]

    def value(v: object) -> float:
        return float(np.asarray(v["data"] if isinstance(v, dict) else v).ravel()[0])

    return {k: (value(t["lowest"]), value(t["highest"])) for k, t in d.items()}


def one_shot(model: Path, xs: list[np.ndarray], method: str, tmp: Path) -> dict:
    """onnxruntime's own calibration, every image in one collect_data call."""
    calibrator = create_calibrator(
        model,
        ["Conv"],
        augmented_model_path=str(tmp / "oneshot.onnx"),
        calibrate_method=int8.CALIBRATION_METHODS[method],
        extra_options=dict(int8.CALIBRATOR_OPTIONS[method]),
    )
    calibrator.collect_data(SampleReader("input", xs))
    ranges = calibrator.compute_data()
    return {
        k: tuple(float(np.asarray(v).ravel()[0]) for v in ranges[k].range_value) for k in ranges
    }


def test_sample_spans_the_split_and_depends_only_on_the_seed() -> None:
    a = sample_indices(1000, 32, seed=0)
    assert a == sample_indices(1000, 32, seed=0) and a != sample_indices(1000, 32, seed=1)
    assert len(set(a)) == 32 and a == sorted(a) and a != list(range(32))
    assert max(a) > 500 and min(a) < 500  # not the first N sorted files
    assert sample_indices(5, 32, seed=0) == [0, 1, 2, 3, 4]


def test_sampled_split_names_the_images_it_drew(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    (root / "classes.txt").write_text("a\nb\n")
    for i in range(30):
        cv2.imwrite(str(root / "images" / f"im{i:02d}.png"), np.full((8, 8, 3), i, np.uint8))
        cv2.imwrite(str(root / "masks" / f"im{i:02d}.png"), np.zeros((8, 8), np.uint8))
    drawn = SampledSplit(f"folder:{root}", "train", 5, seed=3).describe()
    assert drawn["seed"] == 3 and drawn["images"] == 5 and drawn["split_size"] == 27
    assert len(drawn["indices"]) == 5 and drawn["indices"] != list(range(5))
    stems = [Path(f).stem for f in drawn["files"]]
    assert stems == drawn["ids"] and all(Path(f).is_file() for f in drawn["files"])


def test_chunked_minmax_equals_one_call_on_every_image(tmp_path: Path) -> None:
    model = conv_model(tmp_path / "m.onnx")
    xs = inputs(3 * int8.CALIBRATION_CHUNK + 1)
    cache = int8._calibrate(
        model, SampleReader("input", xs), int8.TENSORRT_RECIPE, "minmax", tmp_path
    )
    assert ranges_of(cache) == one_shot(model, xs, "minmax", tmp_path)  # exactly


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_chunked_histograms_match_one_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """Entropy sees the very histogram one call would build; percentile the same counts
    in bins of the same width, so its threshold moves by less than a bin."""
    bins = 256  # onnxruntime's entropy search is slow in Python: ~30 s a tensor at 2048
    monkeypatch.setitem(
        int8.CALIBRATOR_OPTIONS, method, {**int8.CALIBRATOR_OPTIONS[method], "num_bins": bins}
    )
    model = conv_model(tmp_path / "m.onnx")
    xs = inputs(2 * int8.CALIBRATION_CHUNK + 3)
    reader = SampleReader("input", xs)
    cache = int8._calibrate(model, reader, int8.TENSORRT_RECIPE, method, tmp_path)
    got, want = ranges_of(cache), one_shot(model, xs, method, tmp_path)
    assert got.keys() == want.keys()
    for name in want:
        if method == "entropy":
            assert got[name] == want[name], name
        else:
            assert got[name] == pytest.approx(want[name], rel=1.0 / bins), name


def test_calibration_memory_does_not_grow_with_the_image_count(tmp_path: Path) -> None:
    """Entropy keeps whole activation maps per collect_data call; chunks bound them.

    Images come from a SampledSplit, read and preprocessed one at a time, as in export.
    """
    model = conv_model(tmp_path / "m.onnx")
    pre = PreprocessSpec(input_size=SIZE)
    peaks = {}
    for n in (int8.CALIBRATION_CHUNK, 5 * int8.CALIBRATION_CHUNK):
        reader = SampleReader("input", SampledSplit(DATA, "train", n), pre)
        assert len(reader) == n
        tracemalloc.start()
        try:
            int8._calibrate(model, reader, int8.TENSORRT_RECIPE, "percentile", tmp_path)
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    small, large = peaks.values()
    # One image's Conv inputs and outputs are ~1.5 MB; five times the images held at
    # once would add ~50 MB.
    assert large < 1.3 * small, peaks


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_one_calibration_serves_both_recipes_unchanged(tmp_path: Path, method: str) -> None:
    """The export calibrates once for both INT8 variants: each recipe's file must equal the
    one it gets when it calibrates alone (so sharing only saves the second pass)."""
    model = conv_model(tmp_path / "m.onnx")
    reader = SampleReader("input", inputs(int8.CALIBRATION_CHUNK + 2))
    assert int8.TENSORRT_RECIPE.op_types == int8.CPU_RECIPE.op_types  # what makes sharing valid
    shared = int8.calibrate_int8(model, reader, int8.TENSORRT_RECIPE, method)
    for recipe in (int8.TENSORRT_RECIPE, int8.CPU_RECIPE):
        alone = int8.quantize_int8(model, reader, recipe, method)
        reused = int8.quantize_int8(model, reader, recipe, method, ranges=shared)
        assert reused.SerializeToString() == alone.SerializeToString(), recipe.name
