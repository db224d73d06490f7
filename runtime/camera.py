"""Live sources for `segkd demo` on a Jetson: CSI cameras, V4L2 devices, RTSP, raw GStreamer.

  csi://N[?width=W&height=H&fps=F&flip=M]  a MIPI CSI camera through nvarguscamerasrc
      (Argus ISP), converted on the VIC by nvvidconv to BGRx and by videoconvert to the
      BGR frames OpenCV hands out; appsink keeps only the newest frame (drop=true,
      max-buffers=1) so a slow model never works on stale frames. Defaults 1920x1080 @ 30.
  /dev/videoN                              a USB/V4L2 camera through OpenCV's V4L2 backend.
  rtsp://... (and rtsps://, http://...)    a network stream, through whichever OpenCV backend
                                           takes the URL (FFmpeg in the pip wheels).
  gst:PIPELINE                             any GStreamer pipeline ending in appsink.

The CSI pipeline follows NVIDIA's Accelerated GStreamer guide (Jetson Linux Developer
Guide: nvarguscamerasrc, nvvidconv); it needs an OpenCV built with GStreamer, which the
pip wheels are not and JetPack's system OpenCV is (docs/JETSON.md, "Install").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from core.errors import SegkdError

CSI_DEFAULTS = {"width": 1920, "height": 1080, "fps": 30, "flip": 0}
_APPSINK = "appsink drop=true max-buffers=1 sync=false"


@dataclass(frozen=True)
class LiveSource:
    kind: str  # "camera" or "stream" (both live: frames may be dropped to stay real time)
    target: str | int  # what cv2.VideoCapture opens
    backend: str  # "gstreamer", "v4l2" or "any": the cv2.CAP_* it needs
    description: str


def csi_pipeline(sensor: int, width: int, height: int, fps: int, flip: int = 0) -> str:
    """The nvarguscamerasrc pipeline for CSI sensor `sensor`, BGR out at width x height."""
    return (
        f"nvarguscamerasrc sensor-id={sensor} ! "
        f"video/x-raw(memory:NVMM), width=(int){width}, height=(int){height}, "
        f"framerate=(fraction){fps}/1, format=(string)NV12 ! "
        f"nvvidconv flip-method={flip} ! video/x-raw, format=(string)BGRx ! "
        f"videoconvert ! video/x-raw, format=(string)BGR ! {_APPSINK}"
    )


def _positive(query: dict[str, list[str]], key: str, source: str, low: int = 1) -> int:
    raw = query.get(key, [str(CSI_DEFAULTS[key])])[-1]
    if not raw.isdigit() or int(raw) < low:
        raise SegkdError(f"demo source {source}: {key} must be an integer >= {low}, got {raw!r}")
    return int(raw)


def parse_live_source(text: str) -> LiveSource | None:
    """The live source `text` names, or None when it is a file, folder or camera index."""
    if text.startswith("csi://"):
        parts = urlsplit(text)
        if not parts.netloc.isdigit():
            raise SegkdError(f"demo source {text}: write csi://N with N the sensor id (csi://0)")
        query = parse_qs(parts.query)
        unknown = sorted(set(query) - set(CSI_DEFAULTS))
        if unknown:
            raise SegkdError(
                f"demo source {text}: unknown option {unknown[0]!r} "
                f"(csi://N?width=W&height=H&fps=F&flip=M)"
            )
        w, h = _positive(query, "width", text), _positive(query, "height", text)
        fps, flip = _positive(query, "fps", text), _positive(query, "flip", text, low=0)
        if flip > 7:
            raise SegkdError(f"demo source {text}: flip must be 0..7 (nvvidconv flip-method)")
        pipeline = csi_pipeline(int(parts.netloc), w, h, fps, flip)
        return LiveSource(
            "camera", pipeline, "gstreamer", f"CSI camera {parts.netloc} {w}x{h}@{fps}"
        )
    m = re.fullmatch(r"/dev/video(\d+)", text)
    if m:
        return LiveSource("camera", int(m.group(1)), "v4l2", f"V4L2 camera {text}")
    if text.startswith("gst:"):
        pipeline = text[4:].strip()
        if "appsink" not in pipeline:
            raise SegkdError("demo source gst:PIPELINE: the pipeline must end in appsink")
        return LiveSource("stream", pipeline, "gstreamer", "GStreamer pipeline")
    if "://" in text:
        return LiveSource("stream", text, "any", f"stream {urlsplit(text).scheme}")
    return None


def gstreamer_in_build(build_information: str) -> bool:
    """Whether an OpenCV build lists GStreamer under Video I/O (cv2.getBuildInformation())."""
    m = re.search(r"^\s*GStreamer:\s*(\S+)", build_information, re.MULTILINE)
    return bool(m) and m.group(1).upper().startswith("YES")


def no_gstreamer_message(source: str, cv2_version: str, cv2_path: str) -> str:
    return (
        f"demo source {source} needs OpenCV with GStreamer, and this cv2 ({cv2_version}, "
        f"{cv2_path}) has none (the pip wheels never do): on a Jetson use JetPack's own "
        "OpenCV: a venv made with --system-site-packages and no opencv-python* installed in "
        "it (pip uninstall opencv-python opencv-python-headless); see docs/JETSON.md"
    )


def open_capture(source: LiveSource, name: str) -> object:
    """cv2.VideoCapture for `source` with the backend it needs; SegkdError when that
    backend is missing from this OpenCV."""
    import cv2

    if source.backend == "gstreamer" and not gstreamer_in_build(cv2.getBuildInformation()):
        raise SegkdError(no_gstreamer_message(name, cv2.__version__, str(cv2.__file__)))
    api = {"gstreamer": cv2.CAP_GSTREAMER, "v4l2": cv2.CAP_V4L2, "any": cv2.CAP_ANY}
    return cv2.VideoCapture(source.target, api[source.backend])
