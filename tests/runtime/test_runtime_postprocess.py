from __future__ import annotations

import numpy as np
import pytest

from core.labels import LabelSpec
from core.preprocess import PreprocessSpec
from runtime.postprocess import (
    as_label_batch,
    bgr_lut,
    colorize,
    draw_legend,
    logits_to_labels,
    overlay,
    present_classes,
    restore_size,
)

SPEC = LabelSpec(names=("a", "b", "c"), palette=((255, 0, 0), (0, 255, 0), (0, 0, 255)))


def test_argmax_matches_numpy_and_takes_first_max_on_ties() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 6, 7)).astype(np.float16)
    logits[0, :, 0, 0] = 1.0  # a full tie: class 0 must win
    out = logits_to_labels(logits)
    assert out.dtype == np.uint8 and out.shape == (2, 6, 7)
    np.testing.assert_array_equal(out, logits.astype(np.float32).argmax(1))
    assert out[0, 0, 0] == 0


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_label_outputs_of_any_integer_type_and_keepdims(dtype: type) -> None:
    ids = np.array([[[0, 2], [1, 1]]], dtype=dtype)
    np.testing.assert_array_equal(as_label_batch(ids, "labels"), ids.astype(np.uint8))
    keep = ids[:, None]  # ArgMax keepdims=1 gives B x 1 x H x W
    out = as_label_batch(keep, "labels")
    assert out.shape == (1, 2, 2) and out.dtype == np.uint8
    # metadata saying "logits" but an integer output: the dtype decides, no argmax of ids
    np.testing.assert_array_equal(as_label_batch(ids, "logits"), ids.astype(np.uint8))


def test_restore_size_undoes_letterbox_exactly() -> None:
    spec = PreprocessSpec(input_size=(8, 8), resize="letterbox")
    frame = np.zeros((4, 8, 3), np.uint8)  # wide frame: content rows 2..5 of the 8x8 input
    _, box = spec.apply(frame)
    assert (box.top, box.height, box.left, box.width) == (2, 4, 0, 8)
    net_out = np.full((8, 8), 9, np.uint8)  # padding rows predicted as class 9
    net_out[2:6] = np.arange(8, dtype=np.uint8)[None] % 3
    back = restore_size(net_out, box, (4, 8))
    assert back.shape == (4, 8) and not (back == 9).any()
    np.testing.assert_array_equal(back, np.tile(np.arange(8) % 3, (4, 1)))
    big = restore_size(net_out, box, (8, 16))  # nearest: values stay class ids
    assert set(np.unique(big)) <= {0, 1, 2}


def test_colorize_uses_the_palette_in_bgr_and_blacks_out_ignore() -> None:
    labels = np.array([[0, 1], [2, 255]], np.uint8)
    col = colorize(labels, bgr_lut(SPEC))
    assert col.shape == (2, 2, 3) and col.dtype == np.uint8
    assert tuple(col[0, 0]) == (0, 0, 255)  # RGB red -> BGR
    assert tuple(col[0, 1]) == (0, 255, 0)
    assert tuple(col[1, 0]) == (255, 0, 0)
    assert tuple(col[1, 1]) == (0, 0, 0)


def test_overlay_blends_and_legend_draws_only_present_classes() -> None:
    frame = np.full((120, 160, 3), 100, np.uint8)
    labels = np.zeros((120, 160), np.uint8)
    labels[:, 80:] = 2
    out = overlay(frame, labels, bgr_lut(SPEC), alpha=0.5)
    assert tuple(out[0, 0]) == (50, 50, 178)  # 0.5*100 + 0.5*(0,0,255), rounded
    assert present_classes(labels, SPEC.num_classes) == [0, 2]
    before = out.copy()
    draw_legend(out, SPEC, present_classes(labels, SPEC.num_classes))
    changed = np.argwhere((out != before).any(-1))
    assert len(changed) > 0 and changed[:, 1].min() > 80  # drawn in the right-hand corner
    with pytest.raises(ValueError, match="differ in size"):
        overlay(frame, labels[:10], bgr_lut(SPEC))


def test_restore_size_of_a_lowres_label_map_undoes_the_letterbox() -> None:
    """A 1/8 label map of a letterboxed 64x128 input (content 32x128 in the middle) comes
    back at the frame size in one resize, each label cell covering the frame pixels
    whose centres fall in it."""
    from core.preprocess import PreprocessSpec
    from runtime.postprocess import restore_size, upsample_labels

    spec = PreprocessSpec(input_size=(64, 128), resize="letterbox")
    frame = np.zeros((48, 192, 3), np.uint8)
    _, box = spec.resize_frame(frame)
    assert (box.top, box.height, box.width) == (16, 32, 128)
    low = np.full((8, 16), 9, np.uint8)  # padding rows 0-1 and 6-7 are class 9
    low[2:6] = np.arange(16, dtype=np.uint8)[None, :] % 4  # content: 4 rows of 1/8 cells
    out = restore_size(low, box, (48, 192), input_size=(64, 128))
    assert out.shape == (48, 192) and 9 not in out  # the padding is cropped away
    # each of the 16 cells spans 12 frame columns
    assert np.array_equal(out[0], np.repeat(np.arange(16) % 4, 12).astype(np.uint8))
    up = upsample_labels(low[None], (64, 128))
    assert up.shape == (1, 64, 128) and np.array_equal(up[0, ::8, ::8], low)
