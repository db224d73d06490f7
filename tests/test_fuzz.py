"""Property-based tests of the input boundaries: label files, SPEC and size strings, numeric
options, and the full distillation objective on odd shapes.

What tests/distill/test_data.py, test_losses.py and tests/test_specs.py already do (plain
random text for the parsers, each loss against its formula) is not repeated: these
generate *near-valid* input, where parsers and readers are most likely to slip, and
check that the outcome is either right or a one-line SegkdError naming the culprit.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from core.errors import SegkdError
from distill.data import build_dataset, dataset_defaults, parse_dataset_spec
from distill.distillation import DistillConfig, DistillObjective
from distill.losses import PositionReadout
from distill.training.config import TrainConfig
from runtime.sizes import parse_size


def fuzz(examples: int) -> settings:
    """Bounded, so the whole file stays well under a minute on 2 cores."""
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


def one_line(e: SegkdError) -> str:
    text = str(e)
    assert text and "\n" not in text, repr(text)
    return text


# -- label files through the folder dataset ------------------------------------------------
@st.composite
def label_files(draw: st.DrawFn) -> tuple[int, str, np.ndarray, tuple[int, int]]:
    """(classes, PIL mode, mask values, image HxW): mostly valid ids and ignore, sometimes
    stray values, other bit depths, colour masks or a mask of another size."""
    k = draw(st.integers(1, 12))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    mode = draw(st.sampled_from(["L", "L", "L", "P", "I;16", "1", "LA", "RGB"]))
    top = {"I;16": 65535, "1": 1}.get(mode, 255)
    valid = [v for v in [*range(k), 255] if v <= top]
    strays = st.integers(0, top)
    values = draw(
        st.lists(
            st.one_of(st.sampled_from(valid), strays)
            if draw(st.booleans())
            else st.sampled_from(valid),
            min_size=h * w,
            max_size=h * w,
        )
    )
    mask = np.array(values, dtype=np.int64).reshape(h, w)
    image_hw = (h, w) if draw(st.integers(0, 5)) else (h + draw(st.integers(1, 3)), w)
    return k, mode, mask, image_hw


def save_mask(path: Path, mode: str, mask: np.ndarray) -> None:
    if mode == "I;16":
        Image.fromarray(mask.astype(np.uint16)).save(path)  # 16-bit grayscale PNG
    elif mode == "1":
        Image.fromarray(mask.astype(bool)).save(path)
    elif mode in ("LA", "RGB"):
        Image.fromarray(mask.astype(np.uint8), mode="L").convert(mode).save(path)
    elif mode == "P":  # a full palette, as VOC-style files carry: Pillow keeps the indices
        im = Image.fromarray(mask.astype(np.uint8), mode="P")
        im.putpalette([c for i in range(256) for c in (i, 255 - i, (7 * i) % 256)])
        im.save(path)
    else:
        Image.fromarray(mask.astype(np.uint8), mode=mode).save(path)


@fuzz(60)
@given(label_files())
def test_folder_labels_are_ids_or_one_error_naming_the_file(
    case: tuple[int, str, np.ndarray, tuple[int, int]],
) -> None:
    k, mode, mask, (ih, iw) = case
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        (root / "masks").mkdir()
        (root / "splits").mkdir()
        cv2.imwrite(str(root / "images" / "a.png"), np.full((ih, iw, 3), 90, np.uint8))
        mask_path = root / "masks" / "a.png"
        save_mask(mask_path, mode, mask)
        (root / "classes.txt").write_text("".join(f"class{i}\n" for i in range(k)))
        (root / "splits" / "val.txt").write_text("a\n")
        ds = build_dataset(f"folder:{root}", "val")
        try:
            image, got = ds[0]
        except SegkdError as e:
            assert str(mask_path) in one_line(e)
            allowed = (mask < k) | (mask == 255)
            assert mode in ("LA", "RGB") or (ih, iw) != mask.shape or not allowed.all()
            return
        assert mode not in ("LA", "RGB") and (ih, iw) == mask.shape
        assert got.dtype == np.uint8 and image.shape == (ih, iw, 3)
        np.testing.assert_array_equal(got, mask)  # folder datasets store train ids as they are


CLASS_LINE = st.one_of(
    st.text(max_size=12),
    st.builds(
        lambda n, c: f"{n} {' '.join(map(str, c))}",
        st.text(alphabet="abc xyz#", min_size=1, max_size=8),
        st.lists(st.integers(-3, 300), min_size=1, max_size=4),
    ),
)


@fuzz(150)
@given(
    st.one_of(
        st.lists(CLASS_LINE, max_size=8).map(lambda lines: "\n".join(lines).encode()),
        st.binary(max_size=60),
    )
)
def test_classes_file_is_a_label_spec_or_one_error(data: bytes) -> None:
    from distill.data.folder import read_classes

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "classes.txt"
        path.write_bytes(data)
        try:
            labels = read_classes(path)
        except SegkdError as e:
            assert str(path) in one_line(e)
            return
    assert 1 <= labels.num_classes <= 255 and len(set(labels.names)) == labels.num_classes
    assert all(name.strip() for name in labels.names)


# -- the dataset SPEC and size parsers on near-valid text --------------------------------
DIGITS = st.sampled_from("0123456789٣५๒１²³¹½⑦")  # ASCII, other scripts' digits, No-category
NUMBER = st.one_of(
    st.integers(-5, 70000).map(str),
    st.text(DIGITS, min_size=1, max_size=6),
    st.integers(4300, 5000).map(lambda n: "9" * n),  # beyond Python's int() digit limit
)
SEP = st.sampled_from(["x", "X", ",", " x ", "×", "*", "", "xx", "x-"])


@fuzz(300)
@given(
    st.one_of(
        st.builds(lambda a, s, b: f"{a}{s}{b}", NUMBER, SEP, NUMBER),
        NUMBER,
        st.tuples(st.one_of(st.integers(-3, 20000), st.text(max_size=3)), st.integers(0, 99)),
    ),
    st.integers(1, 64),
)
def test_parse_size_is_a_size_or_one_error(text: object, minimum: int) -> None:
    try:
        h, w = parse_size(text, "--crop-size", minimum=minimum)  # type: ignore[arg-type]
    except SegkdError as e:
        assert one_line(e).startswith("--crop-size:")
        return
    assert isinstance(h, int) and isinstance(w, int)
    assert minimum <= h <= 16384 and minimum <= w <= 16384
    assert parse_size(f"{h}x{w}", minimum=minimum) == (h, w)


KEYS = st.sampled_from(["size", "train", "val", "seed", "Size", "colour", "", " size "])
VALUES = st.one_of(NUMBER, st.builds(lambda a, s, b: f"{a}{s}{b}", NUMBER, SEP, NUMBER))
OPTION = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", KEYS, VALUES),
    KEYS,
    st.builds(lambda k, v: f"{k}=={v}", KEYS, VALUES),
)


@fuzz(300)
@given(
    st.sampled_from(["synthetic", "Synthetic", " synthetic", "folder", "voc", "kitti", "synth"]),
    st.sampled_from([":", "", "::", ": "]),
    st.lists(OPTION, max_size=4).map(",".join),
)
def test_spec_parser_on_near_valid_specs(kind: str, colon: str, options: str) -> None:
    text = f"{kind}{colon}{options}"
    try:
        spec = parse_dataset_spec(text)
    except SegkdError as e:
        assert repr(text) in one_line(e)
        return
    assert parse_dataset_spec(str(spec)) == spec  # what a checkpoint records reads back
    defaults = dataset_defaults(spec)
    assert min(defaults["crop_size"]) >= 32
    if spec.kind == "synthetic":
        for key in ("train", "val"):
            assert spec.options.get(key, 1) >= 1


# -- untrusted checkpoint bytes -----------------------------------------------------------
_CKPT: list[bytes] = []


def small_checkpoint() -> bytes:
    """A real (tiny) segkd checkpoint's bytes, to truncate and corrupt."""
    if not _CKPT:
        import io

        from core.labels import LabelSpec
        from core.preprocess import PreprocessSpec
        from distill.checkpoint import make_checkpoint

        buf = io.BytesIO()
        ckpt = make_checkpoint(
            model=nn.Conv2d(3, 2, 1), arch="pspnet_r18", model_kwargs={},
            labels=LabelSpec(names=("a", "b")), preprocess=PreprocessSpec(input_size=(32, 32)),
        )  # fmt: skip
        torch.save(ckpt, buf)
        _CKPT.append(buf.getvalue())
    return _CKPT[0]


@st.composite
def checkpoint_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "pickle-ish", "truncated", "corrupted"]))
    if kind == "random":
        return draw(st.binary(max_size=400))
    if kind == "pickle-ish":  # get past the protocol header into the unpickler
        return b"\x80" + bytes([draw(st.integers(2, 5))]) + draw(st.binary(max_size=200))
    data = small_checkpoint()
    if kind == "truncated":
        return data[: draw(st.integers(0, len(data) - 1))]
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
    return bytes(out)


@fuzz(150)
@given(checkpoint_bytes())
def test_any_bytes_load_as_a_checkpoint_or_one_error(data: bytes) -> None:
    from distill.checkpoint import load_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        path.write_bytes(data)
        try:
            ckpt = load_checkpoint(path)
        except SegkdError as e:
            assert str(path) in one_line(e)
            return
    assert {"arch", "num_classes", "state_dict", "labels", "preprocess"} <= set(ckpt)


# -- numeric options: a value that cannot train is refused up front -------------------------
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 1e300, -1.0, 0.5, 10.0]),
)


@fuzz(200)
@given(
    st.lists(st.sampled_from(["kd", "idd", "pid", "cwd", "KD", " idd", "foo", ""]), max_size=5),
    FLOATS,
    FLOATS,
    FLOATS,
    FLOATS,
)
def test_distill_config_is_usable_or_refused(
    losses: list[str], w_kd: float, w_idd: float, kd_t: float, cwd_t: float
) -> None:
    try:
        cfg = DistillConfig(
            losses=",".join(losses), w_kd=w_kd, w_idd=w_idd, kd_temperature=kd_t,
            cwd_temperature=cwd_t,
        )  # fmt: skip
    except SegkdError as e:
        one_line(e)
        return
    assert set(cfg.losses) <= {"kd", "idd", "pid", "cwd"}
    for name in ("w_kd", "w_idd", "w_pid", "w_cwd"):
        assert math.isfinite(getattr(cfg, name)) and getattr(cfg, name) >= 0, name
    assert math.isfinite(cfg.kd_temperature) and cfg.kd_temperature > 0
    assert math.isfinite(cfg.cwd_temperature) and cfg.cwd_temperature > 0


@fuzz(200)
@given(FLOATS, FLOATS, st.integers(-3, 10**9), st.integers(-3, 64))
def test_train_config_is_usable_or_refused(
    lr: float, weight_decay: float, iters: int, batch_size: int
) -> None:
    cfg = TrainConfig(lr=lr, weight_decay=weight_decay, iters=iters, batch_size=batch_size)
    try:
        resolved = cfg.resolved(dataset_defaults("synthetic"))
    except SegkdError as e:
        one_line(e)
        return
    assert math.isfinite(resolved.lr) and resolved.lr > 0
    assert math.isfinite(resolved.weight_decay) and resolved.weight_decay >= 0
    assert resolved.iters >= 1 and resolved.batch_size >= 2


# -- the whole distillation objective on odd shapes and label maps -------------------------
class Net(nn.Module):
    """The Segmentor interface (extract -> logits, aux, feat at 1/8) in miniature."""

    def __init__(self, channels: int, k: int) -> None:
        super().__init__()
        self.feat_channels = channels
        self.body = nn.Conv2d(3, channels, 3, stride=8, padding=1)
        self.classifier = nn.Conv2d(channels, k, 1)
        self.aux_head = nn.Conv2d(channels, k, 1)

    def extract(self, x: torch.Tensor, with_aux: bool = True) -> dict[str, torch.Tensor]:
        feat = torch.relu(self.body(x))
        out = {"logits": self.classifier(feat), "feat": feat}
        if with_aux:
            out["aux"] = self.aux_head(feat)
        return out


@st.composite
def objective_cases(draw: st.DrawFn) -> dict[str, object]:
    k = draw(st.integers(1, 7))
    labels = draw(st.sampled_from(["random", "one class", "ignore only", "random + ignore"]))
    return {
        "k": k,
        "b": draw(st.integers(2, 3)),  # as TrainConfig enforces: BatchNorm needs 2 values
        "hw": (draw(st.integers(1, 40)), draw(st.integers(1, 40))),
        "label_hw": draw(st.sampled_from(["same", "half", "double"])),
        "labels": labels,
        "losses": draw(st.sets(st.sampled_from(["kd", "idd", "pid", "cwd"]), min_size=1)),
        "distance": draw(st.sampled_from(["euclidean", "cosine"])),
        "scale": draw(st.sampled_from(["adapter", "normalize", "both"])),
        "pid_mode": draw(st.sampled_from(["teacher_readout", "student_readout"])),
        "widths": (draw(st.integers(1, 6)), draw(st.integers(1, 9))),
        "seed": draw(st.integers(0, 2**16)),
    }


@fuzz(40)
@given(objective_cases())
def test_objective_is_finite_with_finite_gradients(case: dict[str, object]) -> None:
    torch.manual_seed(int(case["seed"]))  # type: ignore[arg-type]
    k, b = int(case["k"]), int(case["b"])  # type: ignore[arg-type]
    h, w = case["hw"]  # type: ignore[misc]
    cs, ct = case["widths"]  # type: ignore[misc]
    student, teacher = Net(cs, k), Net(ct, k)
    config = DistillConfig(
        losses=tuple(sorted(case["losses"])), idd_distance=case["distance"],  # type: ignore[arg-type]
        idd_scale=case["scale"], pid_mode=case["pid_mode"],  # type: ignore[arg-type]
    )  # fmt: skip
    readout = PositionReadout(ct, 2, hidden=3, kinds=("x", "y"))
    objective = DistillObjective(teacher, cs, k, config, readout)
    images = torch.randn(b, 3, h, w)
    lh, lw = {"same": (h, w), "half": (max(1, h // 2), max(1, w // 2)), "double": (2 * h, 2 * w)}[
        case["label_hw"]  # type: ignore[index]
    ]
    labels = torch.randint(0, k, (b, lh, lw))
    if case["labels"] == "one class":
        labels.fill_(k - 1)
    elif case["labels"] == "ignore only":
        labels.fill_(255)
    elif case["labels"] == "random + ignore":
        labels[torch.rand(b, lh, lw) < 0.5] = 255
    terms = objective(images, labels, student.extract(images))
    assert set(terms) >= {"loss", "ce", *case["losses"]}  # type: ignore[misc]
    for name, value in terms.items():
        assert value.dim() == 0 and torch.isfinite(value), (name, value)
    terms["loss"].backward()
    trained = [*student.parameters(), *objective.parameters()]
    for p in trained:
        assert p.grad is None or torch.isfinite(p.grad).all()
    assert all(p.grad is None for p in teacher.parameters())
    if case["labels"] == "ignore only":
        assert terms["ce"].item() == 0.0


def test_objective_refuses_a_readout_of_another_teacher() -> None:
    """The one invalid configuration the objective can meet: a readout for other widths."""
    with pytest.raises(SegkdError, match="refit it on this teacher"):
        DistillObjective(Net(4, 3), 2, 3, DistillConfig(losses="pid"), PositionReadout(5, 2))
