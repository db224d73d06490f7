"""Parameter and MAC counts for the model table (`segkd models`) and the docs."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from distill.models.registry import available_models, build_model


def count_params(model: nn.Module, with_aux: bool = True) -> int:
    """All parameters, training-only heads (aux, boundary) included unless `with_aux` is
    False: then what an exported model holds."""
    total = sum(p.numel() for p in model.parameters())
    if not with_aux and hasattr(model, "training_heads"):
        total -= sum(p.numel() for head in model.training_heads() for p in head.parameters())
    return total


def count_macs(
    model: nn.Module, input_size: tuple[int, int] = (512, 1024), with_aux: bool = True
) -> int:
    """Multiply-accumulates of one image through `model.extract` (aux head included).

    Counted by FlopCounterMode (convolutions and matrix products; MACs = FLOPs / 2) on
    the meta device, so no memory is allocated and nothing is computed. BatchNorm runs
    in eval mode, which costs the same MACs as training and accepts a batch of one.
    """
    meta = model if _on_meta(model) else copy.deepcopy(model).to("meta")
    meta.eval()
    x = torch.empty(1, 3, *input_size, device="meta")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        meta.extract(x, with_aux=with_aux)
    return counter.get_total_flops() // 2


def _on_meta(model: nn.Module) -> bool:
    return all(p.device.type == "meta" for p in model.parameters())


def model_table(
    input_size: tuple[int, int], num_classes: int = 19, deep_stem: bool = False
) -> list[dict[str, Any]]:
    """One row per registered architecture: arch, params_m, gmacs (training-only heads
    included), deploy_params_m, deploy_gmacs (the exported graph: no aux / boundary
    head; what the DDRNet and PIDNet papers report), feat_channels.

    METHOD.md's reference figures are for the deep stem (what SKD/IFVD/CIRKD use);
    the torchvision stem is about 0.15 M parameters and 15 GMAC lighter. `deep_stem`
    applies to the ResNets only: the real-time networks have their own stem.
    """
    rows = []
    for arch in available_models():
        stem = {"deep_stem": deep_stem} if arch in available_models("resnet") else {}
        with torch.device("meta"):  # no weights allocated or initialised
            model = build_model(arch, num_classes, **stem)
        params, macs = count_params(model), count_macs(model, input_size)
        deploy_params = count_params(model, with_aux=False)
        deploy_macs = count_macs(model, input_size, with_aux=False)
        rows.append(
            {
                "arch": arch,
                "params_m": round(params / 1e6, 2),
                "gmacs": round(macs / 1e9, 1),
                "deploy_params_m": round(deploy_params / 1e6, 2),
                "deploy_gmacs": round(deploy_macs / 1e9, 1),
                "feat_channels": model.feat_channels,
                "params": params,
                "macs": macs,
                "deploy_params": deploy_params,
                "deploy_macs": deploy_macs,
            }
        )
    return rows
