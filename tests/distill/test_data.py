"""distill.data: SPEC parsing, the four on-disk formats, synthetic scenes, transforms, loaders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.errors import SegkdError
from core.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
from core.preprocess import PreprocessSpec
from distill.data import (
    DatasetSpec,
    EvalTransform,
    TrainTransform,
    build_dataset,
    dataset_defaults,
    parse_dataset_spec,
)
from distill.data.cityscapes import TRAIN_TO_LABEL_ID
from distill.data.synthetic import SYNTHETIC, SYNTHETIC_CLASSES, render_street
from distill.data.voc import VOC

REPO = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(0)


def write_rgb(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def write_gray(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)
    return path


def random_image(h: int = 12, w: int = 16) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


# -- fixtures: one tiny dataset per format, written by the test ----------------------------
CS_LABEL_IDS = np.array([[0, 7, 8, 26], [33, 4, 23, 7], [7, 7, 24, 11]], dtype=np.uint8)


@pytest.fixture
def cityscapes(tmp_path: Path) -> Path:
    root = tmp_path / "cs"
    for split in ("train", "val"):
        for city, frame in (("aachen", 19), ("bochum", 42)):
            stem = f"{city}_000000_{frame:06d}"
            write_rgb(
                root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", random_image(3, 4)
            )
            write_gray(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", CS_LABEL_IDS)
    return root


VOC_INDICES = np.array([[0, 0, 1, 1], [15, 15, 255, 0], [20, 0, 0, 1]], dtype=np.uint8)


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    root = tmp_path / "VOCdevkit" / "VOC2012"
    write_rgb(root / "JPEGImages" / "2007_000032.jpg", random_image(3, 4))
    mask = Image.fromarray(VOC_INDICES, mode="P")
    flat = [c for rgb in VOC.palette for c in rgb]
    mask.putpalette(flat + [224, 224, 192] * (256 - len(VOC.palette)))  # 255: VOC's border colour
    (root / "SegmentationClass").mkdir(parents=True)
    mask.save(root / "SegmentationClass" / "2007_000032.png")
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000032\n")
    return tmp_path / "VOCdevkit"


ADE_VALUES = np.array([[0, 1, 2], [150, 13, 0]], dtype=np.uint8)


@pytest.fixture
def ade(tmp_path: Path) -> Path:
    root = tmp_path / "ADEChallengeData2016"
    write_rgb(root / "images" / "validation" / "ADE_val_00000001.jpg", random_image(2, 3))
    write_gray(root / "annotations" / "validation" / "ADE_val_00000001.png", ADE_VALUES)
    return root


def make_folder(
    root: Path, n: int = 12, classes: str = "background 0 0 0\nthing 255 0 0\n"
) -> Path:
    for i in range(n):
        write_rgb(root / "images" / f"img{i:02d}.png", random_image(6, 8))
        write_gray(root / "masks" / f"img{i:02d}.png", (np.arange(48).reshape(6, 8) + i) % 2)
    (root / "classes.txt").write_text(classes)
    return root


# -- SPEC parsing --------------------------------------------------------------------------
def test_parse_synthetic_specs() -> None:
    assert parse_dataset_spec("synthetic") == DatasetSpec("synthetic", None, {})
    spec = parse_dataset_spec("synthetic:size=64x128, train=5,val=3,seed=7")
    assert spec.options == {"size": (64, 128), "train": 5, "val": 3, "seed": 7}
    assert parse_dataset_spec(str(spec)) == spec


def test_parse_file_specs(tmp_path: Path) -> None:
    for kind in ("cityscapes", "voc", "ade20k", "folder"):
        spec = parse_dataset_spec(f"{kind}:{tmp_path}")
        assert (spec.kind, spec.path) == (kind, tmp_path)
        assert parse_dataset_spec(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("kitti:/data", "unknown dataset 'kitti'"),
        ("cityscapes", "missing path"),
        ("voc:", "missing path"),
        ("ade20k:/no/such/folder", "/no/such/folder does not exist"),
        ("synthetic:colour=red", "unknown option 'colour'"),
        ("synthetic:size=big", "size"),
        ("synthetic:size=16x16", ">= 32"),
        ("synthetic:train=0", "train must be >= 1"),
        ("synthetic:val=x", "val must be an integer"),
        ("synthetic:seed=-1", "seed must be >= 0"),
        ("synthetic:train", "expected key=value"),
        ("synthetic:train=2,train=3", "given twice"),
        ("folder:/tmp\x00x", "does not exist"),
    ],
)
def test_bad_specs_name_the_spec(text: str, needle: str) -> None:
    with pytest.raises(SegkdError) as err:
        parse_dataset_spec(text)
    message = str(err.value)
    assert needle in message and "\n" not in message
    if text:
        assert repr(text) in message


def test_spec_naming_a_file_is_rejected(tmp_path: Path) -> None:
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(SegkdError, match="is not a folder"):
        parse_dataset_spec(f"folder:{f}")


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40))
def test_any_text_parses_or_raises_segkd_error(text: str) -> None:
    try:
        spec = parse_dataset_spec(text)
    except SegkdError:
        return
    assert spec.kind in ("synthetic", "cityscapes", "voc", "ade20k", "folder")


@settings(max_examples=40, deadline=None)
@given(
    st.integers(32, 4096),
    st.integers(32, 4096),
    st.integers(1, 10**6),
    st.integers(1, 10**6),
    st.integers(0, 2**31),
)
def test_synthetic_spec_round_trips(h: int, w: int, train: int, val: int, seed: int) -> None:
    spec = parse_dataset_spec(f"synthetic:size={h}x{w},train={train},val={val},seed={seed}")
    assert spec.options == {"size": (h, w), "train": train, "val": val, "seed": seed}
    assert parse_dataset_spec(str(spec)) == spec


def test_dataset_defaults() -> None:
    cs = dataset_defaults("cityscapes")
    assert (cs["crop_size"], cs["iters"], cs["batch_size"]) == ((512, 1024), 40000, 8)
    assert (cs["lr"], cs["weight_decay"], cs["eval_size"]) == (0.01, 5e-4, (1024, 2048))
    assert (
        dataset_defaults("voc")["crop_size"]
        == dataset_defaults("ade20k")["crop_size"]
        == (512, 512)
    )
    syn = dataset_defaults("synthetic")
    assert syn["crop_size"] == (128, 256) and syn["iters"] <= 1000 and syn["batch_size"] == 4
    small = dataset_defaults(parse_dataset_spec("synthetic:size=64x96"))
    assert small["eval_size"] == (64, 96) and small["crop_size"] == (32, 48)
    defaults = dataset_defaults("folder")
    defaults["lr"] = 1.0  # callers get a copy
    assert dataset_defaults("folder")["lr"] == 0.01
    with pytest.raises(SegkdError, match="unknown dataset"):
        dataset_defaults("kitti")


# -- the four formats ----------------------------------------------------------------------
def test_cityscapes_maps_label_ids_to_train_ids(cityscapes: Path) -> None:
    ds = build_dataset(f"cityscapes:{cityscapes}", "val")
    assert len(ds) == 2 and ds.labels.names == CITYSCAPES_CLASSES
    assert [ds.sample_id(i) for i in range(2)] == [
        "aachen/aachen_000000_000019",
        "bochum/bochum_000000_000042",
    ]
    image, mask = ds[0]
    assert image.shape == (3, 4, 3) and image.dtype == np.uint8
    expected = np.array([[255, 0, 1, 13], [18, 255, 10, 0], [0, 0, 11, 2]], dtype=np.uint8)
    np.testing.assert_array_equal(mask, expected)
    # Back to labelIds for the official evaluation: every trained class round-trips, ignore -> 0.
    encoded = ds.encode_label(mask)
    np.testing.assert_array_equal(encoded, np.where(mask == 255, 0, CS_LABEL_IDS))
    np.testing.assert_array_equal(ds.encode_label(np.arange(19)), TRAIN_TO_LABEL_ID)
    with pytest.raises(ValueError):
        ds.encode_label(np.array([19]))


def test_voc_reads_palette_indices_not_colours(voc: Path) -> None:
    path = voc / "VOC2012" / "SegmentationClass" / "2007_000032.png"
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).ndim == 3  # what cv2 would have given
    ds = build_dataset(f"voc:{voc}", "val")
    assert ds.labels.num_classes == 21 and ds.labels.palette[0] == (0, 0, 0)
    assert ds.labels.palette[1] == (128, 0, 0) and ds.labels.palette[15] == (192, 128, 128)
    image, mask = ds[0]
    assert image.shape == (3, 4, 3)
    np.testing.assert_array_equal(mask, VOC_INDICES)
    assert ds.sample_id(0) == "2007_000032"
    np.testing.assert_array_equal(ds.encode_label(mask), VOC_INDICES)


def test_voc_falls_back_to_segmentation_class_aug(voc: Path) -> None:
    root = voc / "VOC2012"
    write_rgb(root / "JPEGImages" / "2008_000002.jpg", random_image(3, 4))
    write_gray(root / "SegmentationClassAug" / "2008_000002.png", VOC_INDICES)
    (root / "ImageSets" / "Segmentation" / "trainaug.txt").write_text("2007_000032\n2008_000002\n")
    ds = build_dataset(f"voc:{root}", "trainaug")
    assert len(ds) == 2
    np.testing.assert_array_equal(ds[1][1], VOC_INDICES)


def test_ade20k_reduces_zero_label(ade: Path) -> None:
    for spec in (f"ade20k:{ade}", f"ade20k:{ade.parent}"):
        ds = build_dataset(spec, "val")
        assert ds.labels.num_classes == 150 and ds.labels.names[0] == "wall"
        _, mask = ds[0]
        np.testing.assert_array_equal(mask, [[255, 0, 1], [149, 12, 255]])
        np.testing.assert_array_equal(ds.encode_label(mask), ADE_VALUES)
    with pytest.raises(SegkdError, match="no folder"):
        build_dataset(f"ade20k:{ade}", "train")


def test_folder_dataset_classes_palette_and_default_split(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine", n=12)
    train = build_dataset(f"folder:{root}", "train")
    val = build_dataset(f"folder:{root}", "val")
    assert train.labels.names == ("background", "thing")
    assert train.labels.palette == ((0, 0, 0), (255, 0, 0))
    assert (len(train), len(val)) == (11, 1)
    ids = {train.sample_id(i) for i in range(len(train))} | {val.sample_id(0)}
    assert ids == {f"img{i:02d}" for i in range(12)}
    image, mask = val[0]
    assert image.shape == (6, 8, 3) and set(np.unique(mask)) == {0, 1}
    # Same answer every time: the split depends on sorted names only.
    assert val.sample_id(0) == build_dataset(f"folder:{root}", "val").sample_id(0)


def test_folder_split_lists_and_plain_class_names(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine", n=4, classes="# my classes\nsky\n\nroad surface\n")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("img00.png\nimg02\n")
    ds = build_dataset(f"folder:{root}", "train")
    assert [ds.sample_id(i) for i in range(len(ds))] == ["img00", "img02"]
    assert ds.labels.names == ("sky", "road surface") and len(ds.labels.palette) == 2
    with pytest.raises(SegkdError, match=r"val\.txt"):
        build_dataset(f"folder:{root}", "val")


def test_transform_is_applied_by_getitem(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine", n=3)
    calls = []

    def record(image: np.ndarray, mask: np.ndarray):
        calls.append(image.shape)
        return image[:2], mask[:2]

    ds = build_dataset(f"folder:{root}", "train", transform=record)
    image, mask = ds[-1]
    assert calls == [(6, 8, 3)] and image.shape == (2, 8, 3) and mask.shape == (2, 8)
    with pytest.raises(IndexError):
        ds[len(ds)]


# -- bad data: one SegkdError line that names the file -------------------------------------
def expect_error(fn, needle: str) -> str:
    with pytest.raises(SegkdError) as err:
        fn()
    message = str(err.value)
    assert needle in message, message
    assert "\n" not in message
    return message


def test_missing_mask(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine", n=3)
    (root / "masks" / "img01.png").unlink()
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("img00\nimg01\n")
    expect_error(
        lambda: build_dataset(f"folder:{root}", "train"), str(root / "masks" / "img01.png")
    )


def test_missing_cityscapes_label(cityscapes: Path) -> None:
    label = cityscapes / "gtFine/val/bochum/bochum_000000_000042_gtFine_labelIds.png"
    label.unlink()
    expect_error(lambda: build_dataset(f"cityscapes:{cityscapes}", "val"), str(label))


def test_unreadable_image(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine", n=2)
    bad = root / "images" / "img00.png"
    bad.write_bytes(b"this is not a png")
    ds = build_dataset(f"folder:{root}", "train")
    expect_error(lambda: ds[0], str(bad))


def test_unreadable_mask(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine", n=2)
    bad = root / "masks" / "img00.png"
    bad.write_bytes(b"\x89PNG garbage")
    ds = build_dataset(f"folder:{root}", "train")
    expect_error(lambda: ds[0], str(bad))


def test_colour_mask_is_rejected(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine", n=2)
    bad = root / "masks" / "img00.png"
    Image.fromarray(np.zeros((6, 8, 3), dtype=np.uint8)).save(bad)
    ds = build_dataset(f"folder:{root}", "train")
    expect_error(lambda: ds[0], str(bad))


def test_image_and_mask_sizes_differ(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine", n=2)
    bad = write_gray(root / "masks" / "img00.png", np.zeros((5, 8)))
    ds = build_dataset(f"folder:{root}", "train")
    message = expect_error(lambda: ds[0], str(bad))
    assert str(root / "images" / "img00.png") in message


def test_label_values_outside_classes(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine", n=2)
    bad = write_gray(root / "masks" / "img00.png", np.full((6, 8), 7))
    ds = build_dataset(f"folder:{root}", "train")
    message = expect_error(lambda: ds[0], str(bad))
    assert "[7]" in message and "0-1, 255" in message


def test_cityscapes_label_id_out_of_range(cityscapes: Path) -> None:
    label = cityscapes / "gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png"
    write_gray(label, np.full((3, 4), 34))
    ds = build_dataset(f"cityscapes:{cityscapes}", "val")
    expect_error(lambda: ds[0], str(label))


def test_empty_splits(tmp_path: Path, cityscapes: Path) -> None:
    (cityscapes / "leftImg8bit" / "test").mkdir()
    expect_error(lambda: build_dataset(f"cityscapes:{cityscapes}", "test"), "split is empty")
    root = make_folder(tmp_path / "mine", n=2)
    (root / "splits").mkdir()
    (root / "splits" / "val.txt").write_text("\n")
    expect_error(lambda: build_dataset(f"folder:{root}", "val"), str(root / "splits" / "val.txt"))
    one = make_folder(tmp_path / "one", n=1)
    expect_error(lambda: build_dataset(f"folder:{one}", "val"), "split is empty")


def test_wrong_paths(tmp_path: Path) -> None:
    expect_error(
        lambda: build_dataset(f"cityscapes:{tmp_path}", "val"),
        str(tmp_path / "leftImg8bit" / "val"),
    )
    expect_error(lambda: build_dataset(f"voc:{tmp_path}", "val"), "JPEGImages")
    expect_error(lambda: build_dataset(f"ade20k:{tmp_path}", "val"), "annotations")
    expect_error(lambda: build_dataset(f"folder:{tmp_path}", "val"), str(tmp_path / "images"))
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    expect_error(lambda: build_dataset(f"folder:{tmp_path}", "val"), str(tmp_path / "classes.txt"))


def test_listed_image_missing(voc: Path) -> None:
    lst = voc / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt"
    lst.write_text("2007_000032\n2007_999999\n")
    expect_error(lambda: build_dataset(f"voc:{voc}", "val"), "2007_999999.jpg")


def test_bad_classes_file(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "mine", n=2, classes="a 1 2 3\nb\n")
    expect_error(lambda: build_dataset(f"folder:{root}", "train"), "classes.txt")
    (root / "classes.txt").write_text("a\na\n")
    expect_error(lambda: build_dataset(f"folder:{root}", "train"), "more than once")


# -- synthetic street scenes ---------------------------------------------------------------
def test_synthetic_labels_are_cityscapes_names_and_colours() -> None:
    assert SYNTHETIC.num_classes == len(SYNTHETIC_CLASSES) == 12
    for name, colour in zip(SYNTHETIC.names, SYNTHETIC.palette, strict=True):
        assert CITYSCAPES_PALETTE[CITYSCAPES_CLASSES.index(name)] == colour


def test_synthetic_is_deterministic_per_key() -> None:
    size = (64, 128)
    a_img, a_mask = render_street(3, "train", 5, size)
    b_img, b_mask = render_street(3, "train", 5, size)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    assert a_img.shape == (64, 128, 3) and a_img.dtype == np.uint8
    assert a_mask.shape == (64, 128) and a_mask.dtype == np.uint8
    for other in ((3, "train", 6), (4, "train", 5), (3, "val", 5)):
        img, _ = render_street(*other, size)
        assert not np.array_equal(img, a_img), other


def test_synthetic_scene_does_not_depend_on_size() -> None:
    _, small = render_street(0, "val", 3, (64, 128))
    _, large = render_street(0, "val", 3, (128, 256))
    shrunk = cv2.resize(large, (128, 64), interpolation=cv2.INTER_NEAREST)
    assert (shrunk == small).mean() > 0.9


def test_synthetic_dataset_options_and_ids() -> None:
    ds = build_dataset("synthetic", "train")
    assert len(ds) == 2000 and len(build_dataset("synthetic", "val")) == 100
    small = build_dataset("synthetic:size=48x80,train=3,val=2,seed=9", "val")
    assert len(small) == 2 and small.sample_id(1) == "val/000001"
    image, mask = small[1]
    assert image.shape == (48, 80, 3)
    np.testing.assert_array_equal(mask, render_street(9, "val", 1, (48, 80))[1])
    np.testing.assert_array_equal(small.encode_label(mask), mask)
    with pytest.raises(SegkdError, match="unknown split"):
        build_dataset("synthetic", "test")


def test_synthetic_class_frequencies_are_sane() -> None:
    ds = build_dataset("synthetic:val=16", "val")
    counts = np.zeros(256, dtype=np.int64)
    for i in range(len(ds)):
        counts += np.bincount(ds[i][1].ravel(), minlength=256)
    k = SYNTHETIC.num_classes
    assert counts[k:].sum() == 0  # every pixel has a class; no ignore in a rendered scene
    share = counts[:k] / counts.sum()
    assert (share > 0).all(), dict(zip(SYNTHETIC.names, share.round(4), strict=True))
    # Street-like proportions: big stuff dominates, thin things are rare but present.
    by_name = dict(zip(SYNTHETIC.names, share, strict=True))
    assert by_name["road"] > 0.15 and by_name["sky"] > 0.03 and by_name["building"] > 0.05
    assert by_name["pole"] < 0.05 and by_name["traffic light"] < 0.02 and by_name["person"] < 0.05


def test_synthetic_image_reflects_mask() -> None:
    """The task is learnable: class-mean colours differ (sky brighter than road on average)."""
    img, mask = render_street(0, "val", 0, (128, 256))
    sky, road = img[mask == 9].mean(), img[mask == 0].mean()
    assert sky != road
    assert img.std() > 10  # not a flat picture


# -- transforms ----------------------------------------------------------------------------
def coloured_pair(h: int, w: int, k: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mask = np.kron(RNG.integers(0, k, (h // 4 + 1, w // 4 + 1)), np.ones((4, 4), dtype=np.int64))
    mask = mask[:h, :w].astype(np.uint8)
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    return palette[mask], mask, palette


def test_train_transform_keeps_image_and_mask_aligned() -> None:
    image, mask, palette = coloured_pair(40, 60)
    t = TrainTransform((24, 32), scale_range=(1.0, 1.0), photometric=False, seed=1)
    flipped = 0
    for _ in range(20):
        out_img, out_mask = t(image, mask)
        assert out_img.shape == (24, 32, 3) and out_mask.shape == (24, 32)
        np.testing.assert_array_equal(out_img, palette[out_mask])  # same crop, same flip
        flipped += not any(
            np.array_equal(out_mask, mask[y : y + 24, x : x + 32])
            for y in range(17)
            for x in range(29)
        )
    assert 0 < flipped < 20


def test_train_transform_pads_with_ignore() -> None:
    image, mask, _ = coloured_pair(10, 12)
    t = TrainTransform(
        (32, 40), scale_range=(1.0, 1.0), flip=False, photometric=False, image_pad_value=7
    )
    out_img, out_mask = t(image, mask)
    np.testing.assert_array_equal(out_mask[:10, :12], mask)
    assert (out_mask[10:] == 255).all() and (out_mask[:, 12:] == 255).all()
    assert (out_img[10:] == 7).all() and (out_img[:, 12:] == 7).all()


def test_train_transform_scaling_matches_cv2_resize() -> None:
    image, mask, _ = coloured_pair(30, 50)
    t = TrainTransform((60, 100), scale_range=(2.0, 2.0), flip=False, photometric=False)
    out_img, out_mask = t(image, mask)
    ref = cv2.resize(image, (100, 60), interpolation=cv2.INTER_LINEAR)
    assert np.abs(out_img.astype(int) - ref).max() <= 1
    ref_mask = cv2.resize(mask, (100, 60), interpolation=cv2.INTER_NEAREST_EXACT)
    np.testing.assert_array_equal(out_mask, ref_mask)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(4, 50),
    st.integers(4, 50),
    st.integers(4, 40),
    st.integers(4, 40),
    st.floats(0.25, 3.0),
    st.floats(1.0, 2.0),
    st.integers(0, 1000),
)
def test_train_transform_never_invents_ids(h, w, ch, cw, lo, span, seed) -> None:
    image, mask, _ = coloured_pair(h, w, k=7)
    mask[mask == 3] = 255
    t = TrainTransform((ch, cw), scale_range=(lo, lo * span), seed=seed)
    out_img, out_mask = t(image, mask)
    assert out_img.shape == (ch, cw, 3) and out_img.dtype == np.uint8
    assert out_mask.shape == (ch, cw) and out_mask.dtype == np.uint8
    assert set(np.unique(out_mask)) <= set(np.unique(mask)) | {255}


def test_train_transform_reseed_repeats_and_differs() -> None:
    image, mask = render_street(0, "val", 0, (64, 128))
    t = TrainTransform((32, 48), seed=5)
    first = [t(image, mask) for _ in range(3)]
    t.reseed(5)
    again = [t(image, mask) for _ in range(3)]
    for (a, am), (b, bm) in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(am, bm)
    t.reseed(6)
    assert not np.array_equal(t(image, mask)[0], first[0][0])


def test_photometric_jitter_changes_colours_only() -> None:
    image, mask, _ = coloured_pair(16, 16)
    t = TrainTransform((16, 16), scale_range=(1.0, 1.0), flip=False, photometric=True, seed=0)
    outs = [t(image, mask) for _ in range(8)]
    assert all(np.array_equal(m, mask) for _, m in outs)
    assert any(not np.array_equal(img, image) for img, _ in outs)


def test_eval_transform() -> None:
    image, mask, _ = coloured_pair(20, 30)
    same_img, same_mask = EvalTransform()(image, mask)
    assert same_img is image and same_mask is mask
    img, lab = EvalTransform((10, 16))(image, mask)
    assert img.shape == (10, 16, 3) and lab.shape == (10, 16)
    assert set(np.unique(lab)) <= set(np.unique(mask))
    with pytest.raises(SegkdError):
        EvalTransform((0, 4))
    with pytest.raises(SegkdError):
        TrainTransform((32, 32), scale_range=(2.0, 1.0))


# -- torch-free import ---------------------------------------------------------------------
def test_readers_and_transforms_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import distill.data, distill.data.cityscapes, distill.data.voc, distill.data.ade20k\n"
        "import distill.data.folder, distill.data.synthetic, distill.data.transforms\n"
        "ds = distill.data.build_dataset('synthetic:size=32x64,val=1', 'val',"
        " transform=distill.data.EvalTransform((16, 32)))\n"
        "assert ds[0][0].shape == (16, 32, 3)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# -- torch loaders -------------------------------------------------------------------------
SPEC = PreprocessSpec(
    input_size=(32, 64), color_order="BGR", mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 8.0)
)


def test_train_loader_batches_are_uint8_and_normalised_like_the_runtime() -> None:
    torch = pytest.importorskip("torch")
    from distill.data.loader import NetworkInput, make_train_loader

    ds = build_dataset("synthetic:size=32x64,train=5", "train")
    # What the host-side float32 path produced before: the deployed runtime's normalize.
    expected = [torch.from_numpy(SPEC.normalize(ds[i][0], "RGB")) for i in range(len(ds))]
    masks = [torch.from_numpy(ds[i][1]).long() for i in range(len(ds))]
    loader = make_train_loader(ds, SPEC, batch_size=2, num_workers=0, seed=0, distributed=False)
    to_input = NetworkInput(SPEC, torch.device("cpu"), channels_last=False)
    assert loader.batches_per_epoch == 2  # drop_last
    seen = set()
    for _ in range(6):  # three epochs: the iterator never stops
        pixels, raw_labels = next(loader)
        assert pixels.dtype == torch.uint8 and pixels.shape == (2, 32, 64, 3)  # BGR: SPEC's
        assert raw_labels.dtype == torch.uint8 and raw_labels.shape == (2, 32, 64)
        images, labels = to_input((pixels, raw_labels))
        assert images.dtype == torch.float32 and images.shape == (2, 3, 32, 64)
        assert images.is_contiguous() and labels.dtype == torch.int64
        for x, y in zip(images, labels, strict=True):
            # Bit-identical, not merely close: the same two float32 roundings.
            j = next(j for j in range(len(ds)) if torch.equal(x, expected[j]))
            assert torch.equal(y, masks[j])
            seen.add(j)
    assert loader.epoch == 2 and len(seen) >= 4  # now in its third epoch (0-based 2)
    channels_last = NetworkInput(SPEC, torch.device("cpu"), channels_last=True)
    images_cl, _ = channels_last((pixels, raw_labels))
    assert images_cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(images_cl, images)


def test_workers_per_process_shares_this_process_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from distill.data.loader import workers_per_process

    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(16)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert workers_per_process(None) == 3  # 16 CPUs / 4 processes, one left for the process
    assert workers_per_process(0) == 0  # an explicit count wins
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert workers_per_process(None) == 1


def crop_dataset(n: int = 6):
    return build_dataset(
        f"synthetic:size=48x64,train={n}", "train", transform=TrainTransform((32, 32))
    )


def test_train_loader_is_reproducible_and_seed_dependent() -> None:
    torch = pytest.importorskip("torch")
    from distill.data.loader import make_train_loader

    def batches(seed: int, workers: int) -> list:
        loader = make_train_loader(crop_dataset(), SPEC, 2, workers, seed, distributed=False)
        return [next(loader) for _ in range(4)]

    a, b, c = batches(1, 0), batches(1, 0), batches(2, 0)
    assert all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True)
    )
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, c, strict=True))
    w1, w2 = batches(1, 2), batches(1, 2)  # worker processes reseed the transform per worker
    assert all(torch.equal(x[0], y[0]) for x, y in zip(w1, w2, strict=True))
    assert all(x[0].shape == (2, 32, 32, 3) for x in w1)


def test_train_loader_errors() -> None:
    pytest.importorskip("torch")
    from distill.data.loader import make_train_loader

    with pytest.raises(SegkdError, match="fewer than one batch"):
        make_train_loader(crop_dataset(3), SPEC, 4, 0, 0, distributed=False)
    with pytest.raises(RuntimeError, match="initialised"):
        make_train_loader(crop_dataset(3), SPEC, 2, 0, 0, distributed=True)


def test_worker_errors_arrive_as_one_line(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from distill.data.loader import make_eval_loader

    root = make_folder(tmp_path / "mine", n=3)
    bad = root / "images" / "img00.png"
    bad.write_bytes(b"broken")
    loader = make_eval_loader(build_dataset(f"folder:{root}", "train"), SPEC, num_workers=1)
    expect_error(lambda: list(loader), str(bad))


def test_distributed_train_loader_sets_the_epoch() -> None:
    torch = pytest.importorskip("torch")
    import torch.distributed as dist

    from distill.data.loader import make_train_loader

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        ds = build_dataset("synthetic:size=32x64,train=4", "train")
        loader = make_train_loader(ds, SPEC, 2, 0, 0, distributed=True)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        for _ in range(5):
            next(loader)
        assert loader.epoch == 2 and loader.sampler.epoch == 2
    finally:
        dist.destroy_process_group()


def test_eval_loader_order_sizes_and_shards() -> None:
    torch = pytest.importorskip("torch")
    from distill.data.loader import ShardSampler, make_eval_loader

    ds = build_dataset("synthetic:size=32x64,val=3", "val")
    loader = make_eval_loader(ds, SPEC)
    assert list(loader.sampler) == [0, 1, 2] and len(loader) == 3
    for i, (images, labels) in enumerate(loader):
        assert images.shape == (1, 3, 32, 64) and labels.dtype == torch.int64
        assert torch.equal(images[0], torch.from_numpy(SPEC.normalize(ds[i][0], "RGB")))
        assert torch.equal(labels[0], torch.from_numpy(ds[i][1]).long())
    images, labels = next(iter(make_eval_loader(ds, SPEC, batch_size=2)))
    assert images.shape == (2, 3, 32, 64) and labels.shape == (2, 32, 64)
    assert list(ShardSampler(5, 1, 2)) == [1, 3] and len(ShardSampler(5, 0, 2)) == 3


def test_eval_batches_of_mixed_sizes_are_refused(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from distill.data.loader import make_eval_loader

    root = make_folder(tmp_path / "mine", n=3)
    write_rgb(root / "images" / "img02.png", random_image(4, 8))
    write_gray(root / "masks" / "img02.png", np.zeros((4, 8)))
    ds = build_dataset(f"folder:{root}", "train")  # img00 (6x8) and img02 (4x8)
    assert [ds.sample_id(i) for i in range(len(ds))] == ["img00", "img02"]
    expect_error(lambda: list(make_eval_loader(ds, SPEC, batch_size=2)), "batch size 1")
    assert len(list(make_eval_loader(ds, SPEC, batch_size=1))) == 2
