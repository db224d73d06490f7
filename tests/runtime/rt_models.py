"""Tiny real models for the runtime tests: a torch segmenter, its ONNX exports, an export folder.

A module of its own (not conftest) so test files can import the helpers by a unique name."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from core.labels import LabelSpec
from core.preprocess import PreprocessSpec
from runtime.metadata import sha256_of

NUM_CLASSES = 4
INPUT_SIZE = (64, 64)
LABELS = LabelSpec(names=("road", "car", "sky", "tree"))
PREPROCESS = PreprocessSpec(input_size=INPUT_SIZE)


def make_tiny_net(seed: int) -> Any:
    import torch
    from torch import nn

    class TinySeg(nn.Module):
        """conv (stride 2) -> relu -> 1x1 classifier -> bilinear back to the input size."""

        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
            self.cls = nn.Conv2d(8, NUM_CLASSES, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.cls(self.body(x))
            return nn.functional.interpolate(
                y, size=x.shape[-2:], mode="bilinear", align_corners=False
            )

    torch.manual_seed(seed)
    return TinySeg().eval()


def sample_frames(n: int = 3, size: tuple[int, int] = (48, 80)) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, size=(*size, 3), dtype=np.uint8) for _ in range(n)]


def min_margin(net: Any) -> float:
    """Smallest top-1/top-2 logit gap over the test frames: ORT and torch differ by ~1e-6."""
    import torch

    xs = np.concatenate([PREPROCESS.apply(f)[0] for f in sample_frames()])
    with torch.inference_mode():
        top2 = net(torch.from_numpy(xs)).topk(2, dim=1).values
    return float((top2[:, 0] - top2[:, 1]).min())


def segkd_meta(output: str = "logits", precision: str = "fp32") -> dict[str, Any]:
    return {
        "arch": "tinyseg",
        "labels": LABELS.to_dict(),
        "preprocess": PREPROCESS.to_dict(),
        "output": output,
        "precision": precision,
        "input_name": "input",
        "output_name": "labels" if output == "labels" else "logits",
    }


def export_onnx(module: Any, path: Path, output: str, meta: dict[str, Any] | None) -> Path:
    """torch.onnx.export (dynamic batch) + the "segkd" metadata_props entry, as export/ writes it."""
    import onnx

    out_name = "labels" if output == "labels" else "logits"
    with warnings.catch_warnings():  # the legacy exporter's deprecation notices
        warnings.simplefilter("ignore", DeprecationWarning)
        _legacy_export(module, path, out_name)
    model = onnx.load(str(path))
    if meta is not None:
        model.metadata_props.add(key="segkd", value=json.dumps(meta))
    onnx.save(model, str(path))
    return path


def _legacy_export(module: Any, path: Path, out_name: str) -> None:
    import torch

    torch.onnx.export(
        module,
        (torch.zeros(1, 3, *INPUT_SIZE),),
        str(path),
        dynamo=False,  # the legacy exporter is 100x faster for a 2-layer test net
        input_names=["input"],
        output_names=[out_name],
        dynamic_axes={"input": {0: "batch"}, out_name: {0: "batch"}},
        opset_version=17,
    )


def write_export_folder(folder: Path, model_dir: Path, engines: bool = False) -> Path:
    """An export folder as export/ writes it: model files + export.json with sha256."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    arts = []
    for name, precision, output in (
        ("model.onnx", "fp32", "logits"),
        ("model.labels.onnx", "fp16", "labels"),  # stands in for a second precision
    ):
        model = onnx.load(str(model_dir / name))  # embedded metadata agrees with the manifest
        del model.metadata_props[:]
        model.metadata_props.add(key="segkd", value=json.dumps(segkd_meta(output, precision)))
        onnx.save(model, str(folder / name))
        arts.append(
            {
                "file": name,
                "precision": precision,
                "output": output,
                "sha256": sha256_of(folder / name),
                "inputs": [
                    {"name": "input", "shape": ["batch", 3, *INPUT_SIZE], "dtype": "float32"}
                ],
                "outputs": [{"name": "labels" if output == "labels" else "logits"}],
            }
        )
    if engines:
        (folder / "model.fp16.engine").write_bytes(b"\x00serialized plan")
        arts.append(
            {
                "file": "model.fp16.engine",
                "precision": "fp16",
                "output": "labels",
                "sha256": sha256_of(folder / "model.fp16.engine"),
                "tensorrt_version": "10.3.0",
                "gpu": "Orin",
                "inputs": [{"name": "input"}],
                "outputs": [{"name": "labels"}],
            }
        )
    manifest = {
        "format": "segkd-export",
        "version": 1,
        "arch": "tinyseg",
        "labels": LABELS.to_dict(),
        "preprocess": PREPROCESS.to_dict(),
        "artifacts": arts,
    }
    (folder / "export.json").write_text(json.dumps(manifest, indent=1))
    return folder
