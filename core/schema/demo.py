"""Options of `segkd demo`."""

from __future__ import annotations

from pathlib import Path

from core.options import Option, OptionSet
from core.schema.runtime import RUNTIME

DEMO = OptionSet([
    Option("out", Path | None, None,
           "output video (.mp4, .avi, ...) or folder for images; written aside and put in "
           "place when complete, so a failed run keeps the earlier output. A folder is "
           "replaced only if it is new, empty or an earlier demo run (other files: refused)"),
    *RUNTIME.values(),
    Option("show", bool, False, "also show frames in a window (needs a display)"),
    Option("max_frames", int | None, None, "stop after N frames", min=1),
    Option("alpha", float, 0.5, "overlay opacity", min=0.0, max=1.0),
    Option("fps", float | None, None, "output frame rate [source's]", min=1.0),
    Option("json_out", Path | None, None, "write the run's stats as JSON", flag="--json"),
])  # fmt: skip
