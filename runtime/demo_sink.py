"""Where `segkd demo` writes: a video file or a folder of images, replaced all at once.

A failed run (full disk, read-only folder, a crash) must leave an earlier output exactly as
it was, so both sinks write a hidden sibling and put it in place only when complete:
  - video: `.STEM.tmp.SUFFIX`, checked to open with the frames written (OpenCV's writer
    reports no write errors: on a full disk it "succeeds" and leaves a file without an
    index), fsynced, then renamed over --out;
  - image folder: `.NAME.tmp-XXXX/`, swapped with --out in one step. An existing --out
    folder is replaced only when it holds an earlier demo run (its marker file); any
    other non-empty folder is refused, so a demo never mixes with or deletes other files.
An interrupted run keeps what it wrote beside --out as `STEM.partial.SUFFIX` (a folder:
`NAME.partial`), never over a complete earlier output.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.atomic_io import publish_folder
from core.errors import SegkdError

VIDEO_SUFFIXES = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}
DEMO_MARKER = ".segkd-demo.json"  # marks a folder as a segkd demo run (safe to replace)


def partial_path(out: Path) -> Path:
    """Where an interrupted demo leaves its (valid, shorter) output: beside --out."""
    return out.with_name(f"{out.stem}.partial{out.suffix}")


def _reason(e: BaseException) -> str:
    return (e.strerror or str(e)) if isinstance(e, OSError) else str(e)


def check_image_folder(out: Path) -> None:
    """Refuse an --out folder that holds anything but an earlier demo run."""
    if not out.is_dir():
        return
    entries = list(out.iterdir())
    if entries and not (out / DEMO_MARKER).is_file():
        raise SegkdError(
            f"--out {out} is a folder that holds other files ({len(entries)} entries, not an "
            "earlier segkd demo run): choose a new or empty folder"
        )


class Sink:
    """An annotated video or an image folder, put in place only when complete."""

    def __init__(self, out: Path, fps: float, size: tuple[int, int]) -> None:
        self.out, self.size = out, size  # size is (W, H)
        self.writer: Any = None
        self.tmp: Path | None = None  # the video's hidden temporary name
        self.folder: Path | None = None  # the image run's hidden temporary folder
        self.count = 0
        suffix = out.suffix.lower()
        if suffix in VIDEO_SUFFIXES:
            if out.is_dir():
                raise SegkdError(f"--out {out} is a folder; give a video file name")
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise SegkdError(f"cannot write --out {out}: {_reason(e)}") from None
            self.tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
            if self.tmp.is_dir() or self.tmp.is_symlink():
                raise SegkdError(
                    f"cannot write --out {out}: its temporary name {self.tmp.name} is taken by "
                    "something that is not a file; remove it"
                )
            fourcc = cv2.VideoWriter_fourcc(*VIDEO_SUFFIXES[suffix])
            self.writer = cv2.VideoWriter(str(self.tmp), fourcc, fps, size)
            if not self.writer.isOpened():
                self.tmp.unlink(missing_ok=True)
                raise SegkdError(
                    f"cannot write video {out}: OpenCV has no {VIDEO_SUFFIXES[suffix]} "
                    "encoder or the folder is not writable"
                )
        elif suffix == "" or out.is_dir():
            if out.exists() and not out.is_dir():
                raise SegkdError(f"--out {out} exists and is not a folder")
            check_image_folder(out)
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                self.folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
            except OSError as e:
                raise SegkdError(f"cannot write --out {out}: {_reason(e)}") from None
        else:
            raise SegkdError(
                f"--out {out}: use a video file ({', '.join(VIDEO_SUFFIXES)}) or a folder"
            )

    def write(self, frame: np.ndarray, name: str) -> None:
        if self.writer is not None:
            if (frame.shape[1], frame.shape[0]) != self.size:  # a video has one frame size
                frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
            self.writer.write(frame)
        else:
            assert self.folder is not None
            ok, data = cv2.imencode(".jpg", frame)
            if not ok:
                raise SegkdError(f"cannot write --out {self.out}: OpenCV cannot encode a frame")
            try:
                (self.folder / f"{name}.jpg").write_bytes(data.tobytes())
            except OSError as e:  # full disk, quota, a name OpenCV's source gave us
                raise SegkdError(f"cannot write --out {self.out}: {_reason(e)}") from None
        self.count += 1

    def close(self, keep: bool = True, partial: bool = False) -> Path | None:
        """Put the output in place: at `out`, or with `partial` beside it (an interrupted
        run never replaces a complete earlier output). Returns where it went, None if
        nothing was kept; SegkdError if the written output is not sound (the earlier
        output is then kept and the temporary one removed)."""
        try:
            if not keep or self.count == 0:
                return None
            target = partial_path(self.out) if partial else self.out
            if self.writer is not None:
                self.writer.release()
                self.writer = None
                assert self.tmp is not None
                self._check_video(self.tmp)
                os.replace(self.tmp, target)
            else:
                assert self.folder is not None
                stats = {"format": "segkd-demo", "frames": self.count}
                (self.folder / DEMO_MARKER).write_text(json.dumps(stats) + "\n")
                if partial:
                    check_image_folder(target)
                publish_folder(self.folder, target)
                self.folder = None
            return target
        except OSError as e:
            raise SegkdError(f"cannot write --out {self.out}: {_reason(e)}") from None
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove what this run wrote; an earlier output is untouched."""
        if self.writer is not None:
            with contextlib.suppress(cv2.error):
                self.writer.release()
            self.writer = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
        elif self.tmp is not None:
            self.tmp.unlink(missing_ok=True)

    def _check_video(self, tmp: Path) -> None:
        """The written file opens and holds every frame, and is on disk (fsync)."""
        cap = cv2.VideoCapture(str(tmp))
        try:
            frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        finally:
            cap.release()
        if frames != self.count:
            raise SegkdError(
                f"cannot write --out {self.out}: the video came out unreadable ({frames} of "
                f"{self.count} frames; is the disk full?); the earlier file is kept"
            )
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
