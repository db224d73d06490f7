"""runtime/ and core/ must import on a Jetson with numpy + OpenCV only (no torch, no onnxruntime, no rich)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BLOCKED = ("torch", "onnxruntime", "onnx", "tensorrt", "cuda", "rich", "distill", "export")


def _run_without_heavy_packages(body: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # sys.modules[name] = None makes every `import name` (and name.sub) raise ImportError,
    # exactly as on a machine where the package is not installed.
    script = textwrap.dedent(
        f"""
        import sys
        for name in {BLOCKED!r}:
            sys.modules[name] = None
        sys.path.insert(0, {str(REPO)!r})
        """
    ) + textwrap.dedent(body)
    f = tmp_path / "probe.py"
    f.write_text(script)
    return subprocess.run(
        [sys.executable, str(f)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )


def test_every_runtime_module_imports_without_torch_ort_or_rich(tmp_path: Path) -> None:
    proc = _run_without_heavy_packages(
        """
        import importlib, pkgutil
        import core, runtime
        names = [m.name for pkg in (core, runtime)
                 for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
        for name in names:
            importlib.import_module(name)
        loaded = [n for n in sys.modules if n.split(".")[0] in BLOCKED_NAMES and sys.modules[n] is not None]
        assert not loaded, loaded
        print(len(names), "modules:", " ".join(sorted(names)))
        """.replace("BLOCKED_NAMES", repr(BLOCKED)),
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    for mod in ("runtime.segmenter", "runtime.loader", "runtime.bench", "runtime.evaluate",
                "runtime.demo", "runtime.postprocess", "runtime.backends.onnxruntime",
                "runtime.backends.tensorrt", "runtime.backends.torch"):  # fmt: skip
        assert mod in proc.stdout


def test_missing_backends_give_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(b"irrelevant")
    (tmp_path / "m.pt").write_bytes(b"irrelevant")
    (tmp_path / "m.engine").write_bytes(b"irrelevant")
    (tmp_path / "m.engine.json").write_text(
        '{"labels": {"names": ["a", "b"]}, "preprocess": {"input_size": [8, 8], '
        '"mean": [0, 0, 0], "std": [1, 1, 1]}}'
    )
    proc = _run_without_heavy_packages(
        f"""
        from core.errors import SegkdError
        from runtime.loader import open_segmenter
        for name in ("m.onnx", "m.pt", "m.engine"):
            try:
                open_segmenter({str(tmp_path)!r} + "/" + name)
            except SegkdError as e:
                print(name, "->", e)
            else:
                raise SystemExit(name + " opened without its backend")
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "m.onnx -> the onnxruntime backend needs the onnxruntime package" in out
    assert "m.pt -> " in out and "training package" in out
    assert "m.engine -> the tensorrt backend needs the TensorRT Python package" in out
