"""Real-time demo: a video, camera, stream or image folder in; an annotated video (or images) out.

Three stages overlap through bounded queues: a capture thread decodes frames, the
calling thread runs the model and draws the overlay, a writer thread encodes. OpenCV
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


# -- the pipeline ----------------------------------------------------------------------
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
    finite("--alpha", alpha, low=0.0, high=1.0)
    if fps is not None:
        finite("--fps", fps, low=0.0, low_open=True)
    if max_frames is not None and max_frames < 1:
        raise SegkdError(f"--max-frames must be at least 1, got {max_frames}")
    if show and not display_available():
        log.warning("--show: no display (or OpenCV built without GUI); not showing frames")
        show = False
    src = _Source(source)
    first, first_name = src.read()
    if first is None:
        src.release()
        raise SegkdError(
            f"cannot read a frame from {src.kind} {src.name} (corrupt, empty or unsupported)"
        )
    t_start = time.perf_counter()
    size = (first.shape[1], first.shape[0])
    try:
        sink = Sink(Path(out), fps or src.fps or 30.0, size) if out is not None else None
    except BaseException:
        src.release()
        raise

    stop = threading.Event()
    frames_q: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
    write_q: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
    state: dict[str, Any] = {
        "frames_in": 1,
        "dropped": 0,
        "read_end": "end of stream",
        "write_error": None,
    }

    def reader() -> None:
        item: tuple[np.ndarray | None, str] = (first, first_name)
        try:
            while not stop.is_set():
                if src.live:  # real time: drop the oldest frame rather than fall behind
                    while True:
                        try:
                            frames_q.put_nowait(item)
                            break
                        except queue.Full:
                            with contextlib.suppress(queue.Empty):
                                frames_q.get_nowait()
                                state["dropped"] += 1
                elif not _put(frames_q, item, stop):
                    return
                if max_frames is not None and state["frames_in"] >= max_frames:
                    state["read_end"] = "max frames"
                    return
                frame, name = src.read()
                if frame is None:
                    if src.live:
                        log.warning(
                            "%s %s stopped delivering frames after %d; ending",
                            src.kind,
                            src.name,
                            state["frames_in"],
                        )
                        state["read_end"] = "stream dropped"
                    return
                state["frames_in"] += 1
                item = (frame, name)
        finally:
            _put(frames_q, _END, stop)

    def writer() -> None:
        try:
            while True:
                item = write_q.get()
                if item is _END:
                    return
                frame, labels, text, name = item
                shown = frame if labels is None else compose(frame, labels, text)
                if sink is not None:
                    sink.write(shown, name)
        except BaseException as e:  # surfaced in the calling thread after join
            state["write_error"] = e
            stop.set()

    lut, spec = bgr_lut(segmenter.labels), segmenter.labels

    def compose(frame: np.ndarray, labels: np.ndarray, text: str) -> np.ndarray:
        shown = overlay(frame, labels, lut, alpha)
        if legend:
            draw_legend(shown, spec, present_classes(labels, spec.num_classes))
        draw_text(shown, text, (10, max(24, shown.shape[0] // 24)))
        return shown

    threads = [threading.Thread(target=reader, name="segkd-capture", daemon=True)]
    threads.append(threading.Thread(target=writer, name="segkd-writer", daemon=True))
    for t in threads:
        t.start()

    label = f"{segmenter.backend_name} {segmenter.precision} {segmenter.input_size[0]}x{segmenter.input_size[1]}"
    stopped, done, busy = "end of stream", 0, 0.0
    live_fps, last = 0.0, time.perf_counter()
    finished = False  # False if an error escapes: then an older output is left untouched
    interrupted = threading.Event()
    sigint = contextlib.ExitStack()
    try:
        sigint.enter_context(_sigint_sets(interrupted))
        while True:
            if interrupted.is_set():
                raise KeyboardInterrupt
            if stop.is_set():  # only the writer sets it while we run: it failed
                stopped = "write failed"
                break
            try:
                item = frames_q.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _END:
                stopped = str(state["read_end"])
                break
            frame, name = item
            t0 = time.perf_counter()
            labels = segmenter.predict(frame)
            now = time.perf_counter()
            busy += now - t0
            rate = 1.0 / max(now - last, 1e-9)
            live_fps = rate if done == 0 else 0.9 * live_fps + 0.1 * rate  # smoothed for display
            last = now
            text = f"{live_fps:5.1f} FPS  {label}"
            # The writer thread draws the overlay while the next frame is segmented; only a
            # window needs the finished frame here (GUI calls belong to the main thread).
            shown = compose(frame, labels, text) if show else None
            queued = (shown, None, text, name) if show else (frame, labels, text, name)
            if not _put(write_q, queued, stop):
                stopped = "write failed"
                break
            done += 1
            if show:
                cv2.imshow("segkd", shown)
                if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                    stopped = "window closed"
                    break
        finished = True
    except KeyboardInterrupt:
        finished = True
        stopped = "interrupted"
        log.warning("interrupted: finishing the %d frames already processed", done)
    finally:
        sigint.close()  # Ctrl-C during the clean-up below ends it the usual way
        stop.set()  # the reader leaves its loop; drain so a blocked put returns
        try:
            while threads[0].is_alive():
                with contextlib.suppress(queue.Empty):
                    frames_q.get(timeout=0.05)
            # The writer drains what is queued, then stops; one that already failed (or
            # fails now) is not waited for: a plain put here once hung the demo for ever.
            while threads[1].is_alive():
                with contextlib.suppress(queue.Full):
                    write_q.put(_END, timeout=0.1)
                    break
            while threads[1].is_alive():
                threads[1].join(timeout=0.1)
        except BaseException:  # a second Ctrl-C: nothing half-written stays behind
            if sink is not None:
                sink.discard()
            raise
        finally:
            src.release()
            if show:
                cv2.destroyAllWindows()
        failed = state["write_error"] is not None
        written_to: Path | None = None
        if sink is not None:
            keep = finished and not failed
            try:
                written_to = sink.close(keep=keep, partial=stopped == "interrupted")
            except SegkdError as e:
                state["write_error"] = state["write_error"] or e
    if state["write_error"] is not None:
        err = state["write_error"]
        if isinstance(err, SegkdError):
            raise err
        reason = (err.strerror or err) if isinstance(err, OSError) else err
        raise SegkdError(f"cannot write --out {out}: {reason}") from err
    seconds = time.perf_counter() - t_start
    written = sink.count if sink is not None else done
    return DemoStats(
        source=src.name,
        out=str(written_to) if written_to is not None else None,
        frames_in=int(state["frames_in"]),
        frames_out=written,
        frames_dropped=int(state["dropped"]),
        seconds=seconds,
        fps=written / seconds if seconds > 0 else 0.0,
        infer_ms_mean=busy * 1e3 / done if done else 0.0,
        stopped=stopped,
    )
