"""Adaptive average pooling written as two matrix products, for exportable graphs.

`nn.AdaptiveAvgPool2d` with bins that do not divide the feature map (PSPNet's 3 and
6) fails with the legacy ONNX exporter, and the dynamo exporter unrolls it into
thousands of Gather/Add nodes valid only at the traced size (docs/DEPLOY_FACTS.md,
"ONNX export").
Here output = P_h @ X @ P_w^T, where row i of P_h averages input rows
[floor(i*H/out), ceil((i+1)*H/out)), exactly PyTorch's bin boundaries. The pooling
matrices are built from the runtime shape with tensor ops, so an exported graph
holds Shape/Range/MatMul nodes and stays correct at any input size. The module has
no parameters or buffers, so checkpoints trained with either pooling load into it.
"""

from __future__ import annotations

import torch
from torch import nn


def pooling_matrix(size: torch.Tensor | int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """(bins x size) matrix whose row i averages input cells [floor(i*size/bins), ceil((i+1)*size/bins)).

    `size` may be a traced/symbolic shape value; everything stays a tensor op so an
    exporter records it instead of baking in a constant.
    """
    # Sizes are non-negative, so truncating division is floor division; it exports as
    # a plain integer Div instead of floor's Div/Mod/sign-fix nodes.
    i = torch.arange(bins, device=like.device).unsqueeze(1)  # (bins, 1)
    j = torch.arange(size, device=like.device).unsqueeze(0)  # (1, size)
    start = torch.div(i * size, bins, rounding_mode="trunc")
    end = torch.div((i + 1) * size + bins - 1, bins, rounding_mode="trunc")  # ceil
    mask = ((j >= start) & (j < end)).to(like.dtype)
    return mask / mask.sum(dim=1, keepdim=True)


class AdaptiveAvgPool2dMatmul(nn.Module):
    """Drop-in for `nn.AdaptiveAvgPool2d(output_size)` on (B, C, H, W) tensors."""

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.output_size: tuple[int, int] = (int(output_size[0]), int(output_size[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_h, out_w = self.output_size
        p_h = pooling_matrix(x.shape[-2], out_h, x)  # (out_h, H)
        p_w = pooling_matrix(x.shape[-1], out_w, x)  # (out_w, W)
        return torch.matmul(torch.matmul(p_h, x), p_w.transpose(0, 1))

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"
