"""Fixtures: the tiny torch segmenter and its exports, built once per session."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.runtime.rt_models import (
    LABELS,
    PREPROCESS,
    export_onnx,
    make_tiny_net,
    min_margin,
    segkd_meta,
)
from tests.tmpdirs import session_dir


@pytest.fixture(scope="session")
def tiny_net() -> Any:
    # A seed whose logits have no near-ties on the test frames, so "identical labels"
    # across backends is a property of the code, not luck.
    for seed in range(50):
        net = make_tiny_net(seed)
        if min_margin(net) > 1e-4:
            return net
    raise RuntimeError("no seed without near-ties")


@pytest.fixture(scope="session")
def model_dir(tiny_net: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model.pt (state dict), model.onnx (logits), model.labels.onnx (argmax+uint8 in graph),
    model.int64.onnx (ArgMax's raw int64 output), plain.onnx (no metadata)."""
    import torch

    d = session_dir(tmp_path_factory, "models")
    torch.save(tiny_net.state_dict(), d / "model.pt")
    export_onnx(tiny_net, d / "model.onnx", "logits", segkd_meta("logits"))

    class ArgMaxU8(torch.nn.Module):
        def __init__(self, net: Any, dtype: Any) -> None:
            super().__init__()
            self.net, self.dtype = net, dtype

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).argmax(1).to(self.dtype)

    export_onnx(
        ArgMaxU8(tiny_net, torch.uint8), d / "model.labels.onnx", "labels", segkd_meta("labels")
    )
    export_onnx(
        ArgMaxU8(tiny_net, torch.int64), d / "model.int64.onnx", "labels", segkd_meta("labels")
    )
    export_onnx(tiny_net, d / "plain.onnx", "logits", None)
    return d


@pytest.fixture()
def torch_loader(tiny_net: Any) -> Any:
    """What cli passes as torch_model_loader: (path, device) -> (model, checkpoint dict)."""
    import torch

    def load(path: Path, device: str) -> tuple[Any, dict[str, Any]]:
        net = copy.deepcopy(tiny_net)
        net.load_state_dict(torch.load(path, weights_only=True))
        ckpt = {"arch": "tinyseg", "labels": LABELS.to_dict(), "preprocess": PREPROCESS.to_dict()}
        return net.to(device).eval(), ckpt

    return load
