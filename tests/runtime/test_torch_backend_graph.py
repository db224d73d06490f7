"""TorchBackend's CUDA-graph path: a clean fallback on the CPU, identical labels on CUDA."""

from __future__ import annotations

import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from distill.models import build_model  # noqa: E402
from runtime.backends.torch import TorchBackend  # noqa: E402


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("pspnet_r18", 5, aux=False).eval()


def test_cuda_graph_on_cpu_falls_back_to_eager(caplog: pytest.LogCaptureFixture) -> None:
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    eager = TorchBackend(tiny_model(), device="cpu")
    with caplog.at_level(logging.WARNING):
        graphed = TorchBackend(tiny_model(), device="cpu", cuda_graph=True)
    assert "CUDA graphs need CUDA" in caplog.text
    assert not graphed.cuda_graph and not graphed.uses_cuda_graph
    labels = graphed.run(x)
    assert labels.dtype == np.uint8 and labels.shape == (1, 64, 64)
    np.testing.assert_array_equal(labels, eager.run(x))
    on_device = graphed.labels_on_device(torch.from_numpy(x))
    np.testing.assert_array_equal(on_device.numpy(), labels)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_replays_the_eager_fp16_labels() -> None:
    model = tiny_model()
    x = torch.randn(1, 3, 128, 256, generator=torch.Generator().manual_seed(1)).cuda()
    eager = TorchBackend(model, device="cuda", precision="fp16")
    graphed = TorchBackend(model, device="cuda", precision="fp16", cuda_graph=True)
    ref = eager.labels_on_device(x)
    first = graphed.labels_on_device(x)
    assert graphed.uses_cuda_graph
    assert torch.equal(first, ref)
    x2 = torch.randn_like(x)  # new data, same shape: replayed, not re-captured
    graph_before = graphed._graph[1]
    assert torch.equal(graphed.labels_on_device(x2), eager.labels_on_device(x2))
    assert graphed._graph[1] is graph_before
    small = x[..., :64, :128].contiguous()  # a new shape is captured anew
    assert torch.equal(graphed.labels_on_device(small), eager.labels_on_device(small))
