"""Make a student deliberately hard to quantize: one outlier channel, the same fp32 function.

Per-tensor activation quantization (what TensorRT's INT8 Q/DQ does) gives every channel of a
tensor one scale. A channel whose values run FACTOR times larger than the rest takes the
scale with it, and the other channels keep about log2(FACTOR) bits fewer: the failure that
BatchNorm folding and unbalanced channels cause in real networks (Nagel et al., "Data-Free
Quantization Through Weight Equalization and Bias Correction", ICCV 2019). This script
makes that case on purpose without changing what the network computes in fp32:

    BN(x)_c -> FACTOR * BN(x)_c   (the BatchNorm's weight and bias of channel c)
    ReLU(FACTOR * y) = FACTOR * ReLU(y)   (positive homogeneity)
    next Conv: weight[:, c] / FACTOR

so the block's output is unchanged (to float rounding) and only the activation between the
two Convs gets the outlier. Written to a new checkpoint (temporary name, then rename).

    python benchmarks/outlier_student.py /tmp/ddr/best.pt /tmp/ddr_outlier.pt \\
        --block layer3.0 --channel 0 --factor 16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from core.errors import SegkdError
from distill.checkpoint import atomic_torch_save, load_checkpoint, load_model


def add_outlier(state: dict[str, torch.Tensor], block: str, channel: int, factor: float) -> None:
    """Scale `block`.bn1's channel by `factor` and `block`.conv2's input channel by 1/factor."""
    keys = [f"{block}.bn1.weight", f"{block}.bn1.bias", f"{block}.conv2.weight"]
    missing = [k for k in keys if k not in state]
    if missing:
        raise SegkdError(f"--block {block}: the checkpoint has no {missing[0]} (a conv1-bn1-relu-"
                         "conv2 block is needed, e.g. layer3.0)")  # fmt: skip
    if not 0 <= channel < state[keys[0]].numel():
        raise SegkdError(f"--channel {channel} is outside 0..{state[keys[0]].numel() - 1}")
    if not factor > 0:
        raise SegkdError(
            f"--factor must be positive (ReLU is homogeneous only for those), got {factor}"
        )
    state[keys[0]][channel] *= factor
    state[keys[1]][channel] *= factor
    state[keys[2]][:, channel] /= factor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="fp32 student checkpoint (.pt)")
    p.add_argument("out", type=Path, help="the new checkpoint (.pt)")
    p.add_argument("--block", default="layer3.0", help="a conv1-bn1-relu-conv2 block")
    p.add_argument("--channel", type=int, default=0)
    p.add_argument("--factor", type=float, default=16.0)
    args = p.parse_args()
    if args.out.resolve() == args.checkpoint.resolve():
        raise SystemExit("error: the output would overwrite the input checkpoint")
    ckpt = load_checkpoint(args.checkpoint)
    before, _ = load_model(args.checkpoint)
    state = {k: v.clone() for k, v in ckpt["state_dict"].items()}
    try:
        add_outlier(state, args.block, args.channel, args.factor)
    except SegkdError as e:
        raise SystemExit(f"error: {e}") from None
    atomic_torch_save({**ckpt, "state_dict": state}, args.out)
    after, _ = load_model(args.out)
    x = torch.randn(1, 3, 128, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = before.eval()(x), after.eval()(x)  # eval mode: the logits
    print(f"{args.out}: {args.block} channel {args.channel} x{args.factor:g}; fp32 logits "
          f"max |diff| {float((a - b).abs().max()):.2e} at max |logit| {float(a.abs().max()):.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
