"""The runtime-only install for a Jetson (requirements/jetson*.in, docs/JETSON.md).

What runs here: every third-party module runtime/ imports is either in the Jetson
requirements or provided by JetPack (cv2 with GStreamer, tensorrt), or belongs to a
backend a Jetson does not use (torch, onnxruntime); and those requirements never pull
torch, onnxruntime or a pip OpenCV. The aarch64 resolution itself (`uv pip compile
--python-platform aarch64-manylinux_2_28` for Python 3.10 and 3.12) needs the package
index, so it is recorded in docs/JETSON.md rather than run here.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQ = ROOT / "requirements"
FROM_JETPACK = {"cv2", "tensorrt"}  # JetPack's own builds, seen through --system-site-packages
OTHER_BACKENDS = {"torch", "onnxruntime"}  # imported only inside their backends
IMPORT_NAMES = {"yaml": "pyyaml", "PIL": "pillow", "cuda": "cuda-python"}


def _requirements(name: str) -> set[str]:
    names = set()
    for line in (REQ / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            names |= _requirements(line[3:].strip())
            continue
        names.add(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].lower())
    return names


def _runtime_imports() -> set[str]:
    mods = set()
    for path in [*(ROOT / "runtime").rglob("*.py"), *(ROOT / "core").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return {
        m
        for m in mods
        if m not in sys.stdlib_module_names and m not in ("runtime", "core", "__future__")
    }


def test_the_jetson_requirements_cover_what_the_runtime_imports() -> None:
    for flavour in ("jetson-jp6.in", "jetson-jp7.in"):
        have = _requirements(flavour)
        missing = [
            m for m in sorted(_runtime_imports() - FROM_JETPACK - OTHER_BACKENDS)
            if IMPORT_NAMES.get(m, m).lower() not in have
        ]  # fmt: skip
        assert missing == [], (flavour, missing)


def test_the_jetson_requirements_leave_torch_onnxruntime_and_opencv_out() -> None:
    for flavour in ("jetson-jp6.in", "jetson-jp7.in"):
        have = _requirements(flavour)
        assert not {n for n in have if n.startswith(("torch", "onnxruntime", "opencv"))}
        assert "cuda-python" in have


def test_numpy_stays_below_2_for_jetpacks_compiled_modules() -> None:
    text = (REQ / "jetson.in").read_text()
    assert re.search(r"^numpy>=1\.24,<2$", text, re.MULTILINE)
