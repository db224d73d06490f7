"""Live demo sources on a Jetson: the GStreamer strings and how each source is opened,
checked on the CPU (no camera here); the pip OpenCV has no GStreamer, so a CSI source
must stop with one line that says how to use JetPack's OpenCV."""

from __future__ import annotations

import cv2
import pytest

from core.errors import SegkdError
from runtime.camera import (
    csi_pipeline,
    gstreamer_in_build,
    open_capture,
    parse_live_source,
)

BUILD_INFO_JETPACK = """
  Video I/O:
    DC1394:                      NO
    FFMPEG:                      YES
      avcodec:                   YES (58.54.100)
    GStreamer:                   YES (1.20.3)
    v4l/v4l2:                    YES (linux/videodev2.h)
"""
BUILD_INFO_PIP = BUILD_INFO_JETPACK.replace("YES (1.20.3)", "NO")


def test_csi_pipeline_defaults_and_options() -> None:
    src = parse_live_source("csi://0")
    assert src is not None and (src.kind, src.backend) == ("camera", "gstreamer")
    assert src.target == csi_pipeline(0, 1920, 1080, 30, 0)
    p = parse_live_source("csi://1?width=1280&height=720&fps=60&flip=2")
    assert p is not None
    text = str(p.target)
    assert text.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM), ")
    assert "width=(int)1280, height=(int)720, framerate=(fraction)60/1" in text
    assert "nvvidconv flip-method=2 ! video/x-raw, format=(string)BGRx ! videoconvert" in text
    assert text.endswith("format=(string)BGR ! appsink drop=true max-buffers=1 sync=false")
    assert text.count(" ! ") == 6


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("csi://cam", "sensor id"),
        ("csi://0?width=0", "width must be an integer >= 1"),
        ("csi://0?fps=30.5", "fps must be an integer"),
        ("csi://0?exposure=3", "unknown option 'exposure'"),
        ("csi://0?flip=9", "flip must be 0..7"),
        ("gst:videotestsrc ! autovideosink", "must end in appsink"),
    ],
)
def test_bad_live_sources_are_one_line(source: str, message: str) -> None:
    with pytest.raises(SegkdError, match=message):
        parse_live_source(source)


def test_v4l2_rtsp_and_raw_gstreamer() -> None:
    v4l2 = parse_live_source("/dev/video2")
    assert v4l2 is not None and (v4l2.target, v4l2.backend) == (2, "v4l2")
    rtsp = parse_live_source("rtsp://192.168.1.10:8554/cam")
    assert rtsp is not None and (rtsp.kind, rtsp.backend) == ("stream", "any")
    gst = parse_live_source("gst: videotestsrc num-buffers=3 ! videoconvert ! appsink")
    assert gst is not None and gst.target == "videotestsrc num-buffers=3 ! videoconvert ! appsink"
    for other in ("video.mp4", "images/", "0", "/dev/videox"):
        assert parse_live_source(other) is None


def test_gstreamer_is_read_from_the_build_information() -> None:
    assert gstreamer_in_build(BUILD_INFO_JETPACK) and not gstreamer_in_build(BUILD_INFO_PIP)
    assert not gstreamer_in_build("")


@pytest.mark.skipif(
    gstreamer_in_build(cv2.getBuildInformation()), reason="this OpenCV has GStreamer"
)
def test_csi_without_gstreamer_says_how_to_use_jetpacks_opencv() -> None:
    src = parse_live_source("csi://0")
    assert src is not None
    with pytest.raises(SegkdError) as e:
        open_capture(src, "csi://0")
    line = str(e.value)
    assert "\n" not in line and "GStreamer" in line and cv2.__version__ in line
    assert "--system-site-packages" in line and "pip uninstall opencv-python" in line


@pytest.mark.skipif(
    gstreamer_in_build(cv2.getBuildInformation()), reason="this OpenCV has GStreamer"
)
def test_segkd_demo_csi_stops_before_any_output(model_dir, tmp_path) -> None:
    from runtime.demo import run_demo
    from runtime.loader import open_segmenter

    out = tmp_path / "out.mp4"
    with (
        open_segmenter(model_dir / "model.onnx") as seg,
        pytest.raises(SegkdError, match="GStreamer"),
    ):
        run_demo("csi://0?width=1280&height=720", seg, out)
    assert not out.exists() and list(tmp_path.iterdir()) == []
