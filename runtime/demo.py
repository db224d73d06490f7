"""Real-time demo: a video, camera, stream or image folder in; an annotated video (or images) out.

source -> infer -> draw -> sink, overlapping through bounded queues: a capture thread
decodes frames (`_Capture`), the calling thread runs the model (`_segment_frames`), a
writer thread draws the overlay (`_Overlay`; the calling thread does when a window shows
it) and encodes (`_Writer` over runtime/demo_sink.py's `Sink`). OpenCV
releases the GIL while decoding/encoding, so I/O runs while the model computes. The
bounded queues stop a fast reader from filling memory. Ctrl-C sets a flag that the
calling thread checks between frames (a KeyboardInterrupt raised inside a queue's lock
could deadlock the threads); every exit path joins both threads and releases the
writer, so the output file is always a valid video.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.errors import SegkdError
from core.labels import LabelSpec
from core.numbers import finite
from runtime.camera import open_capture, parse_live_source
from runtime.demo_sink import VIDEO_SUFFIXES, Sink, partial_path  # noqa: F401  (re-exported)
from runtime.evaluate import IMAGE_SUFFIXES
from runtime.postprocess import bgr_lut, draw_legend, draw_text, overlay, present_classes
from runtime.segmenter import Segmenter

log = logging.getLogger(__name__)

_END = object()  # queue sentinel


@dataclass(frozen=True)
class DemoStats:
    source: str
    out: str | None
    frames_in: int
    frames_out: int
    frames_dropped: int  # live sources only: frames skipped to stay real time
    seconds: float  # wall clock from the first frame to the last write
    fps: float  # sustained end-to-end rate (frames_out / seconds)
    infer_ms_mean: float  # preprocess + model + postprocess per frame, in the model thread
    # end of stream | max frames | interrupted | stream dropped | window closed; an
    # interrupted video is kept as `<stem>.partial<suffix>`, and `out` names that file.
    stopped: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def display_available() -> bool:
    """True when cv2.imshow can open a window (a display and an OpenCV built with a GUI)."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return False
    try:
        cv2.namedWindow("segkd")
        cv2.destroyWindow("segkd")
    except cv2.error:  # opencv-python-headless: "The function is not implemented"
        return False
    return True


# -- sources ---------------------------------------------------------------------------
class _Source:
    """Frames from a camera index, a video file, a stream URL or an image folder."""

    def __init__(self, source: str | int | Path) -> None:
        self.name = str(source)
        self.cap: Any = None
        self.files: list[Path] = []
        self.fps: float | None = None
        text = str(source)
        path = Path(text)
        live = None if isinstance(source, int) else parse_live_source(text)
        if isinstance(source, int) or text.isdigit():
            self.kind = "camera"
            self.cap = cv2.VideoCapture(int(text))
        elif live is not None:  # csi://N, /dev/videoN, a URL, gst:PIPELINE (runtime/camera.py)
            self.kind = live.kind
            self.cap = open_capture(live, text)
        elif path.is_dir():
            self.kind = "images"
            self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise SegkdError(
                    f"image folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})"
                )
        elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            self.kind, self.files = "images", [path]
        elif path.is_file():
            self.kind = "video"
            self.cap = cv2.VideoCapture(text)
        else:
            raise SegkdError(
                f"demo source not found: {text} (a video file, camera index, /dev/videoN, csi://N, URL, gst:PIPELINE or image folder)"
            )
        if self.cap is not None:
            if not self.cap.isOpened():
                self.cap.release()
                raise SegkdError(f"cannot open {self.kind} {text}: OpenCV could not open it")
            fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0)
            self.fps = fps if 0 < fps <= 240 else None
        self._next = 0

    @property
    def live(self) -> bool:
        return self.kind in ("camera", "stream")

    def read(self) -> tuple[np.ndarray | None, str]:
        """(frame, name) or (None, "") at the end."""
        if self.cap is not None:
            try:
                ok, frame = self.cap.read()
            except cv2.error as e:
                log.warning("%s: read failed (%s)", self.name, e)
                ok, frame = False, None
            self._next += 1
            return (frame, f"frame_{self._next:06d}") if ok and frame is not None else (None, "")
        while self._next < len(self.files):
            path = self.files[self._next]
            self._next += 1
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is not None:
                return frame, path.stem
            log.warning("skipping unreadable image %s", path)
        return None, ""

    def release(self) -> None:
        if self.cap is not None:
            self.cap.release()


@contextlib.contextmanager
def _sigint_sets(flag: threading.Event) -> Any:
    """While the demo runs, Ctrl-C sets `flag` instead of raising KeyboardInterrupt.

    A KeyboardInterrupt can land between a queue's lock acquire and the `with` block that
    releases it: the lock stays held, and the writer thread and our final put then wait
    on it forever (seen as a hung demo after SIGINT). So the main loop polls the flag
    between frames instead. Off the main thread signals cannot be caught; KeyboardInterrupt
    keeps its usual path there.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda *_: flag.set())
    previous_term = signal.signal(signal.SIGTERM, lambda *_: flag.set())  # the same, politely
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    """Blocking put that gives up once `stop` is set (so no thread hangs on a full queue)."""
    while True:
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            if stop.is_set():
                return False


# -- the stages: source -> infer -> draw -> sink ---------------------------------------
class _Capture:
    """The source stage: a thread reading frames into a bounded queue (a live source
    drops its oldest frame rather than fall behind); `_END` after the last one."""

    def __init__(
        self,
        src: _Source,
        first: tuple[np.ndarray, str],
        max_frames: int | None,
        queue_size: int,
        stop: threading.Event,
    ) -> None:
        self.src, self.first, self.max_frames, self.stop = src, first, max_frames, stop
        self.frames: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self.frames_in, self.dropped, self.end = 1, 0, "end of stream"
        self.thread = threading.Thread(target=self._read, name="segkd-capture", daemon=True)

    def _offer(self, item: tuple[np.ndarray, str]) -> bool:
        if not self.src.live:
            return _put(self.frames, item, self.stop)
        while True:  # real time: drop the oldest frame rather than fall behind
            try:
                self.frames.put_nowait(item)
                return True
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self.frames.get_nowait()
                    self.dropped += 1

    def _read(self) -> None:
        item, src = self.first, self.src
        try:
            while not self.stop.is_set():
                if not self._offer(item):
                    return
                if self.max_frames is not None and self.frames_in >= self.max_frames:
                    self.end = "max frames"
                    return
                frame, name = src.read()
                if frame is None:
                    if src.live:
                        log.warning(
                            "%s %s stopped delivering frames after %d; ending",
                            src.kind,
                            src.name,
                            self.frames_in,
                        )
                        self.end = "stream dropped"
                    return
                self.frames_in += 1
                item = (frame, name)
        finally:
            _put(self.frames, _END, self.stop)

    def drain(self) -> None:
        """Empty the queue until the reader has left (a blocked put then returns)."""
        while self.thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self.frames.get(timeout=0.05)


class _Overlay:
    """The draw stage: the label colours over the frame, a legend, the status line."""

    def __init__(self, labels: LabelSpec, alpha: float, legend: bool) -> None:
        self.spec, self.lut, self.alpha, self.legend = labels, bgr_lut(labels), alpha, legend

    def __call__(self, frame: np.ndarray, labels: np.ndarray, text: str) -> np.ndarray:
        shown = overlay(frame, labels, self.lut, self.alpha)
        if self.legend:
            draw_legend(shown, self.spec, present_classes(labels, self.spec.num_classes))
        draw_text(shown, text, (10, max(24, shown.shape[0] // 24)))
        return shown


class _Writer:
    """The sink stage: a thread drawing queued frames and writing them to the sink (or
    nothing); an error stops the demo and is raised in the calling thread."""

    def __init__(
        self, sink: Sink | None, draw: _Overlay, queue_size: int, stop: threading.Event
    ) -> None:
        self.sink, self.draw, self.stop = sink, draw, stop
        self.items: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._write, name="segkd-writer", daemon=True)

    def _write(self) -> None:
        try:
            while True:
                item = self.items.get()
                if item is _END:
                    return
                frame, labels, text, name = item
                shown = frame if labels is None else self.draw(frame, labels, text)
                if self.sink is not None:
                    self.sink.write(shown, name)
        except BaseException as e:  # surfaced in the calling thread after join
            self.error = e
            self.stop.set()

    def put(self, item: tuple[Any, ...]) -> bool:
        return _put(self.items, item, self.stop)

    def finish(self) -> None:
        """The writer drains what is queued, then stops; one that already failed (or fails
        now) is not waited for: a plain put here once hung the demo for ever."""
        while self.thread.is_alive():
            with contextlib.suppress(queue.Full):
                self.items.put(_END, timeout=0.1)
                break
        while self.thread.is_alive():
            self.thread.join(timeout=0.1)


@dataclass
class _Progress:
    stopped: str = "end of stream"
    done: int = 0
    busy: float = 0.0  # seconds in segmenter.predict
    finished: bool = False  # False if an error escaped: then an older output is left untouched


def _segment_frames(
    segmenter: Segmenter,
    capture: _Capture,
    writer: _Writer,
    show: bool,
    interrupted: threading.Event,
    progress: _Progress,
) -> str:
    """The infer stage, in the calling thread: frames from the capture queue, label maps to
    the writer's. Returns why it stopped."""
    size = f"{segmenter.input_size[0]}x{segmenter.input_size[1]}"
    label = f"{segmenter.backend_name} {segmenter.precision} {size}"
    live_fps, last = 0.0, time.perf_counter()
    while True:
        if interrupted.is_set():
            raise KeyboardInterrupt
        if writer.stop.is_set():  # only the writer sets it while we run: it failed
            return "write failed"
        try:
            item = capture.frames.get(timeout=0.1)
        except queue.Empty:
            continue
        if item is _END:
            return capture.end
        frame, name = item
        t0 = time.perf_counter()
        labels = segmenter.predict(frame)
        now = time.perf_counter()
        progress.busy += now - t0
        rate = 1.0 / max(now - last, 1e-9)
        live_fps = rate if progress.done == 0 else 0.9 * live_fps + 0.1 * rate  # smoothed
        last = now
        text = f"{live_fps:5.1f} FPS  {label}"
        # The writer thread draws the overlay while the next frame is segmented; only a
        # window needs the finished frame here (GUI calls belong to the main thread).
        shown = writer.draw(frame, labels, text) if show else None
        if not writer.put((shown, None, text, name) if show else (frame, labels, text, name)):
            return "write failed"
        progress.done += 1
        if show:
            cv2.imshow("segkd", shown)
            if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                return "window closed"


def _segment(
    segmenter: Segmenter, capture: _Capture, writer: _Writer, show: bool, progress: _Progress
) -> None:
    """`_segment_frames` with Ctrl-C turned into a clean stop (see `_sigint_sets`)."""
    interrupted = threading.Event()
    sigint = contextlib.ExitStack()
    try:
        sigint.enter_context(_sigint_sets(interrupted))
        progress.stopped = _segment_frames(segmenter, capture, writer, show, interrupted, progress)
        progress.finished = True
    except KeyboardInterrupt:
        progress.finished = True
        progress.stopped = "interrupted"
        log.warning("interrupted: finishing the %d frames already processed", progress.done)
    finally:
        sigint.close()  # Ctrl-C during the clean-up that follows ends it the usual way


def _shut_down(
    capture: _Capture, writer: _Writer, sink: Sink | None, show: bool, progress: _Progress
) -> Path | None:
    """Stop both threads, release the source and put the output in place (or, after an
    error, leave an earlier one untouched). Returns where the output went."""
    capture.stop.set()  # the reader leaves its loop
    try:
        capture.drain()
        writer.finish()
    except BaseException:  # a second Ctrl-C: nothing half-written stays behind
        if sink is not None:
            sink.discard()
        raise
    finally:
        capture.src.release()
        if show:
            cv2.destroyAllWindows()
    if sink is None:
        return None
    keep = progress.finished and writer.error is None
    try:
        return sink.close(keep=keep, partial=progress.stopped == "interrupted")
    except SegkdError as e:
        writer.error = writer.error or e
        return None


def _open_ends(
    source: str | int | Path, out: str | Path | None, fps: float | None
) -> tuple[_Source, tuple[np.ndarray, str], Sink | None]:
    """The source with its first frame read, and the sink sized for it."""
    src = _Source(source)
    first, first_name = src.read()
    if first is None:
        src.release()
        raise SegkdError(
            f"cannot read a frame from {src.kind} {src.name} (corrupt, empty or unsupported)"
        )
    size = (first.shape[1], first.shape[0])
    try:
        sink = Sink(Path(out), fps or src.fps or 30.0, size) if out is not None else None
    except BaseException:
        src.release()
        raise
    return src, (first, first_name), sink


def _check_options(alpha: float, fps: float | None, max_frames: int | None, show: bool) -> bool:
    """Refuse bad options; returns whether frames can really be shown."""
    finite("--alpha", alpha, low=0.0, high=1.0)
    if fps is not None:
        finite("--fps", fps, low=0.0, low_open=True)
    if max_frames is not None and max_frames < 1:
        raise SegkdError(f"--max-frames must be at least 1, got {max_frames}")
    if show and not display_available():
        log.warning("--show: no display (or OpenCV built without GUI); not showing frames")
        return False
    return show


def _write_failure(err: BaseException, out: str | Path | None) -> SegkdError:
    reason = (err.strerror or err) if isinstance(err, OSError) else err
    return SegkdError(f"cannot write --out {out}: {reason}")


def run_demo(
    source: str | int | Path,
    segmenter: Segmenter,
    out: str | Path | None,
    show: bool = False,
    max_frames: int | None = None,
    *,
    alpha: float = 0.5,
    legend: bool = True,
    fps: float | None = None,
    queue_size: int = 4,
) -> DemoStats:
    """Segment every frame of `source` and write the overlay to `out` (video file or folder).

    source: video file, camera index ("0"), image folder, image file or stream URL.
    out: `.mp4`/`.avi`/... for a video, a folder for one image per frame, None to write nothing.
    show: also display the frames when a display exists (a warning otherwise).
    fps: frame rate of the written video (default: the source's, else 30).
    """
    show = _check_options(alpha, fps, max_frames, show)
    src, first, sink = _open_ends(source, out, fps)
    t_start = time.perf_counter()
    stop = threading.Event()
    capture = _Capture(src, first, max_frames, queue_size, stop)
    writer = _Writer(sink, _Overlay(segmenter.labels, alpha, legend), queue_size, stop)
    capture.thread.start()
    writer.thread.start()
    progress = _Progress()
    try:
        _segment(segmenter, capture, writer, show, progress)
    finally:
        written_to = _shut_down(capture, writer, sink, show, progress)
    if isinstance(writer.error, SegkdError):
        raise writer.error
    if writer.error is not None:
        raise _write_failure(writer.error, out) from writer.error
    seconds = time.perf_counter() - t_start
    written = sink.count if sink is not None else progress.done
    return DemoStats(
        source=src.name,
        out=str(written_to) if written_to is not None else None,
        frames_in=capture.frames_in,
        frames_out=written,
        frames_dropped=capture.dropped,
        seconds=seconds,
        fps=written / seconds if seconds > 0 else 0.0,
        infer_ms_mean=progress.busy * 1e3 / progress.done if progress.done else 0.0,
        stopped=progress.stopped,
    )
