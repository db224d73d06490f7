"""Files with extra pickled state load their weights and run nothing (distill.zoo.inert).

Real files: tests/distill/zoo/golden/training_state_{numpy1,mmengine}.pt, written by
tools/golden/training_state.py under numpy 1.26 and under mmengine 0.10 (real
HistoryBuffer objects). A whole zoo checkpoint in those forms is made here by writing the
same pickle names (numpy 1.x's module, mmengine's class) into a file torch saved.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import SegkdError
from distill.zoo.inert import InertState
from distill.zoo.load import load_zoo_teacher
from distill.zoo.safe_load import read_weights_file, split_state_dict
from tests.distill.zoo import files
from tests.distill.zoo import golden_fixtures as gf

LAYOUT = [
    ("decode_head.conv_seg.weight", (19, 8, 1, 1)),
    ("decode_head.conv_seg.bias", (19,)),
    ("backbone.stem.1.running_var", (8,)),
]  # tools/golden/training_state.py's


def _weights_are_the_formulas(state: dict[str, torch.Tensor]) -> None:
    want = gf.formula.state_dict(LAYOUT)
    assert state.keys() == want.keys()
    for k, v in want.items():
        assert torch.equal(state[k], v), k


def test_a_numpy1_file_loads_under_numpy2() -> None:
    path = gf.GOLDEN / "training_state_numpy1.pt"
    assert b"numpy.core.multiarray" in _pickle_bytes(path)  # numpy 1.x's names, not 2's
    state, meta = split_state_dict(read_weights_file(path), path)
    _weights_are_the_formulas(state)
    assert meta["seed"] == 1234 and isinstance(meta["seed"], np.int64)
    assert np.array_equal(meta["scales"], [0.5, 1.0, 1.75])


def test_an_mmengine_checkpoint_with_message_hub_loads_inert() -> None:
    path = gf.GOLDEN / "training_state_mmengine.pt"
    obj = read_weights_file(path)
    _weights_are_the_formulas(split_state_dict(obj, path)[0])
    loss = obj["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(loss, InertState) and type(loss).__module__ == "distill.zoo.inert"
    assert loss.upstream == "mmengine.logging.history_buffer.HistoryBuffer"
    assert np.allclose(loss._log_history, [1.0, 0.5, 1 / 3])
    assert "mmengine" not in sys.modules  # the upstream class was never imported
    assert obj["optimizer"]["param_groups"][0]["lr"] == 0.01


def _pickle_bytes(path: Path) -> bytes:
    with zipfile.ZipFile(path) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


def _rewrite_pickle(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    """Replace data.pkl in a torch zip file by edit(its bytes); other entries unchanged."""
    with zipfile.ZipFile(path) as z:
        entries = [(info.filename, z.read(info.filename)) for info in z.infolist()]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries:
            z.writestr(name, edit(data) if name.endswith("/data.pkl") else data)
    path.write_bytes(buf.getvalue())


@contextlib.contextmanager
def _mmengine_history_buffer() -> Iterator[type]:
    """A class whose pickle name is mmengine's HistoryBuffer, while writing a file only."""
    names = ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer")
    saved = {n: sys.modules.get(n) for n in names}
    cls = type("HistoryBuffer", (), {"__module__": names[-1], "__qualname__": "HistoryBuffer"})
    for n in names:
        sys.modules[n] = types.ModuleType(n)
    sys.modules[names[-1]].HistoryBuffer = cls  # type: ignore[attr-defined]
    try:
        yield cls
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def test_a_numpy1_mmengine_zoo_checkpoint_builds_its_teacher(tmp_path: Path) -> None:
    """A whole mmseg checkpoint with numpy-1 names and a message_hub: the teacher loads."""
    src = files.save_mmseg_pspnet_r18(tmp_path / "plain.pth", [f"c{i}" for i in range(19)], 3)
    plain = torch.load(src, weights_only=True)
    path = tmp_path / "pspnet_r18-d8_mmengine.pth"
    with _mmengine_history_buffer() as buffer_cls:
        buf = buffer_cls()
        buf.__dict__.update(max_length=10, _log_history=np.array([0.5, 0.25]))
        torch.save(
            {"meta": {**plain["meta"], "seed": np.int64(7)}, "state_dict": plain["state_dict"],
             "message_hub": {"log_scalars": {"train/loss": buf}}},
            path,
        )  # fmt: skip
    _rewrite_pickle(path, lambda b: b.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray\nscalar" in _pickle_bytes(path)
    assert b"mmengine.logging.history_buffer\nHistoryBuffer" in _pickle_bytes(path)
    teacher = load_zoo_teacher(path)
    assert teacher.arch == "mmseg_pspnet_r18" and teacher.labels.names[0] == "c0"


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_a_payload_among_the_training_state_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)},
                "message_hub": {"log_scalars": {"x": Payload(marker)}}}, path)  # fmt: skip
    with pytest.raises(SegkdError, match=r"refused to load .*evil\.pth"):
        read_weights_file(path)
    assert not marker.exists()


def test_getattr_reaches_nothing_but_stand_ins(tmp_path: Path) -> None:
    """getattr is allowed only as the stand-in's: on a real class (numpy.ndarray.tofile,
    which could write a file) it is refused; a stored __setstate__ stays out of a stand-in."""
    marker = tmp_path / "written"
    path = tmp_path / "evil.pth"
    torch.save({"x": "placeholder"}, path)
    # getattr(numpy.ndarray, 'tofile')(numpy array, marker path) as raw pickle opcodes
    evil = (
        b"\x80\x02}X\x01\x00\x00\x00x"
        b"c__builtin__\ngetattr\ncnumpy\nndarray\nX\x06\x00\x00\x00tofile\x86R"
        b"X" + len(str(marker)).to_bytes(4, "little") + str(marker).encode() + b"\x85R"
        b"s."
    )
    _rewrite_pickle(path, lambda _b: evil)
    with pytest.raises(SegkdError, match="refused to load"):
        read_weights_file(path)
    assert not marker.exists()
    state = InertState.__new__(InertState)
    state.__setstate__({"__setstate__": print, "__class__": int, "kept": 1})
    assert type(state) is InertState and state.kept == 1 and "__setstate__" not in vars(state)
