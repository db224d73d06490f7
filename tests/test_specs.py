"""The preprocessing spec, label spec and size parser shared by all stages."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import SegkdError
from core.labels import CITYSCAPES, LabelSpec
from core.preprocess import PreprocessSpec
from runtime.sizes import parse_size


def test_normalize_matches_the_textbook_formula() -> None:
    spec = PreprocessSpec(input_size=(4, 6))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    out = spec.normalize(img, "RGB")
    ref = (img.astype(np.float32) - np.array(spec.mean, np.float32)) / np.array(
        spec.std, np.float32
    )
    assert out.shape == (3, 4, 6) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref.transpose(2, 0, 1), rtol=1e-5, atol=1e-5)
    # A BGR frame is flipped to the network's RGB order.
    np.testing.assert_allclose(spec.normalize(img[:, :, ::-1].copy(), "BGR"), out, atol=1e-6)


def test_letterbox_keeps_aspect_and_records_the_box() -> None:
    spec = PreprocessSpec(input_size=(64, 64), resize="letterbox")
    frame = np.full((32, 128, 3), 200, np.uint8)
    x, box = spec.apply(frame)
    assert x.shape == (1, 3, 64, 64)
    assert (box.height, box.width, box.top, box.left) == (16, 64, 24, 0)


def test_spec_round_trips_through_dict() -> None:
    spec = PreprocessSpec(input_size=(128, 256), color_order="BGR", resize="letterbox")
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    assert LabelSpec.from_dict(CITYSCAPES.to_dict()) == CITYSCAPES


def test_bad_specs_are_refused() -> None:
    with pytest.raises(ValueError):
        PreprocessSpec(input_size=(0, 4))
    with pytest.raises(ValueError):
        LabelSpec(names=("a", "b"), palette=((0, 0, 0),))


def test_color_lut_maps_ids_to_palette_and_ignore_to_black() -> None:
    lut = CITYSCAPES.color_lut()
    assert tuple(lut[13, 0]) == (0, 0, 142) and tuple(lut[255, 0]) == (0, 0, 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512x1024", (512, 1024)), ("64X96", (64, 96)), (" 32 , 48 ", (32, 48)), ("256", (256, 256))],
)
def test_parse_size(text: str, expected: tuple[int, int]) -> None:
    assert parse_size(text) == expected


@given(st.text(max_size=12))
def test_parse_size_never_crashes(text: str) -> None:
    try:
        h, w = parse_size(text, minimum=1)
    except SegkdError as e:
        assert "--input-size" in str(e)
    else:
        assert h >= 1 and w >= 1
