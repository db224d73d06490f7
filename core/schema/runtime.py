"""How the runtime commands (eval, bench, demo) open a model: the options they share.
The pipeline picks these per step itself, so they are not config keys."""

from __future__ import annotations

from core.options import Option, OptionSet

RUNTIME = OptionSet([
    Option("backend", str, "auto", "auto, onnxruntime, tensorrt or torch", config=False),
    Option("device", str, "auto", "auto, cpu, cuda[:N] or tensorrt (ORT provider)",
           config=False),
    Option("precision", str | None, None, "artifact to pick from an export folder", config=False),
])  # fmt: skip
