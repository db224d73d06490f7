"""run_demo: frame-exact video in/out, folders, clean stops and clear errors."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from core.errors import SegkdError
from runtime import demo
from runtime.demo import display_available, run_demo
from runtime.loader import open_segmenter
from runtime.segmenter import Segmenter

SIZE = (64, 80)  # H, W of the generated videos


def make_video(path: Path, n: int = 30) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (SIZE[1], SIZE[0]))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    for i in range(n):
        frame = rng.integers(0, 256, size=(*SIZE, 3), dtype=np.uint8)
        cv2.putText(frame, str(i), (5, 40), cv2.FONT_HERSHEY_SIMPLEX, 1, (255, 255, 255), 2)
        writer.write(frame)
    writer.release()
    return path


def count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"{path} is not a readable video"
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@pytest.fixture(scope="module")
def seg(model_dir: Path) -> Segmenter:
    return open_segmenter(model_dir / "model.onnx")


def test_thirty_frames_in_thirty_frames_out(seg: Segmenter, tmp_path: Path) -> None:
    src = make_video(tmp_path / "in.mp4")
    out = tmp_path / "out" / "demo.mp4"
    stats = run_demo(src, seg, out)
    assert (stats.frames_in, stats.frames_out, stats.stopped) == (30, 30, "end of stream")
    assert count_frames(out) == 30
    cap = cv2.VideoCapture(str(out))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (80, 64)
    ok, first = cap.read()
    cap.release()
    assert ok and first.std() > 0
    assert stats.fps > 0 and stats.infer_ms_mean > 0
    assert not list(out.parent.glob(".*tmp*"))  # the temp file was renamed into place


def test_max_frames_and_an_existing_output_is_replaced_whole(
    seg: Segmenter, tmp_path: Path
) -> None:
    src = make_video(tmp_path / "in.mp4")
    out = tmp_path / "demo.mp4"
    out.write_bytes(b"old result")
    stats = run_demo(src, seg, out, max_frames=10)
    assert (stats.frames_out, stats.stopped) == (10, "max frames")
    assert count_frames(out) == 10


def test_image_folder_to_image_folder(seg: Segmenter, tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    for i, size in enumerate([(48, 64), (60, 90), (48, 64)]):
        cv2.imwrite(str(images / f"img_{i}.png"), np.full((*size, 3), 40 * i, np.uint8))
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "out_frames"
    stats = run_demo(images, seg, out, legend=False)
    assert stats.frames_out == 3
    written = sorted(p.name for p in out.iterdir())
    assert written == [".segkd-demo.json", "img_0.jpg", "img_1.jpg", "img_2.jpg"]  # marker
    assert cv2.imread(str(out / "img_1.jpg")).shape == (60, 90, 3)  # each at its own size


class _InterruptAfter:
    """A Segmenter whose predict raises `exc` (Ctrl-C by default) on call `n`."""

    def __init__(
        self, seg: Segmenter, n: int, exc: BaseException | type[BaseException] = KeyboardInterrupt
    ) -> None:
        self._seg, self._n, self._exc, self.calls = seg, n, exc, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._seg, name)

    def predict(self, frame: np.ndarray, **kw: Any) -> np.ndarray:
        self.calls += 1
        if self.calls == self._n:
            raise self._exc
        return self._seg.predict(frame, **kw)


def test_ctrl_c_stops_cleanly_with_a_valid_partial_video(seg: Segmenter, tmp_path: Path) -> None:
    """The frames done are kept, complete, beside --out; an earlier --out is not replaced."""
    src = make_video(tmp_path / "in.mp4")
    out = tmp_path / "demo.mp4"
    run_demo(src, seg, out, max_frames=3)
    before = out.read_bytes()
    stats = run_demo(src, _InterruptAfter(seg, 8), out)  # type: ignore[arg-type]
    assert stats.stopped == "interrupted" and stats.frames_out == 7
    assert stats.out == str(tmp_path / "demo.partial.mp4")
    assert count_frames(tmp_path / "demo.partial.mp4") == 7
    assert out.read_bytes() == before


class _SigintAfter(_InterruptAfter):
    """A real SIGINT delivered to this process while frame `n` is being segmented."""

    def predict(self, frame: np.ndarray, **kw: Any) -> np.ndarray:
        self.calls += 1
        if self.calls == self._n:
            signal.raise_signal(signal.SIGINT)
        return self._seg.predict(frame, **kw)


def test_a_real_sigint_is_a_flag_checked_between_frames(seg: Segmenter, tmp_path: Path) -> None:
    """SIGINT must not raise inside the demo's queues (a KeyboardInterrupt between a lock's
    acquire and release left the writer and the clean-up waiting on it forever): the frame
    in flight is finished and written, then the demo stops, and Ctrl-C works again after."""
    src = make_video(tmp_path / "in.mp4")
    out = tmp_path / "demo.mp4"
    # Python's own Ctrl-C handler, as a fresh `segkd demo` process has it, whatever an
    # earlier test in this process left installed
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        stats = run_demo(src, _SigintAfter(seg, 5), out)  # type: ignore[arg-type]
        assert stats.stopped == "interrupted" and stats.frames_out == 5
        assert count_frames(tmp_path / "demo.partial.mp4") == 5
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_crash_mid_run_leaves_the_previous_output_untouched(
    seg: Segmenter, tmp_path: Path
) -> None:
    src = make_video(tmp_path / "in.mp4", n=10)
    out = tmp_path / "demo.mp4"
    run_demo(src, seg, out, max_frames=3)
    before = out.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        run_demo(src, _InterruptAfter(seg, 5, RuntimeError("boom")), out)  # type: ignore[arg-type]
    assert out.read_bytes() == before and count_frames(out) == 3
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_live_stream_that_drops_ends_with_a_warning(
    seg: Segmenter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A video read as if it were a network stream: its end is a dropped stream.
    monkeypatch.setattr(demo._Source, "live", property(lambda self: True))
    src = make_video(tmp_path / "in.mp4", n=12)
    out = tmp_path / "demo.mp4"
    with caplog.at_level(logging.WARNING, logger="runtime.demo"):
        stats = run_demo(src, seg, out)
    assert stats.stopped == "stream dropped"
    assert "stopped delivering frames" in caplog.text
    # Live sources may skip frames to stay real time; the file holds what was written.
    assert stats.frames_in == 12 and stats.frames_out + stats.frames_dropped == 12
    assert count_frames(out) == stats.frames_out > 0


def test_unreadable_sources_name_themselves(seg: Segmenter, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(SegkdError) as e:
        run_demo(corrupt, seg, tmp_path / "o.mp4")
    assert str(corrupt) in str(e.value)
    assert not (tmp_path / "o.mp4").exists()
    with pytest.raises(SegkdError, match=r"demo source not found: .*missing\.mp4"):
        run_demo(tmp_path / "missing.mp4", seg, tmp_path / "o.mp4")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SegkdError, match="holds no images"):
        run_demo(empty, seg, tmp_path / "o.mp4")


def test_bad_output_and_show_without_display(
    seg: Segmenter,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    src = make_video(tmp_path / "in.mp4", n=3)
    with pytest.raises(SegkdError, match=r"--out .*out\.gif"):
        run_demo(src, seg, tmp_path / "out.gif")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert not display_available()
    with caplog.at_level(logging.WARNING, logger="runtime.demo"):
        stats = run_demo(src, seg, None, show=True)
    assert "no display" in caplog.text and stats.frames_out == 3 and stats.out is None
