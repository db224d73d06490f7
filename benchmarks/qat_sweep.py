"""QAT settings sweep: one run's held-out agreement curve, with losses segkd does not use.

`segkd qat`'s own loop (distill.qat.train.train_qat: the same fake-quant graph, calibration,
preconditioned SGD and schedules) with other losses (mse on logits; klce = KL +
cross-entropy to the fp32 labels), evaluated every --eval-every steps on held-out val
images with the fake-quant graph (whose labels equal the Q/DQ file's; docs/notes/qat.md).
Its findings chose what `segkd qat` does; the figures are in docs/notes/qat.md.

    python benchmarks/qat_sweep.py /tmp/ddr/best.pt --size 256x512 --steps 600 --train 512 \\
        --lr 3e-4 --slr 1e-2 --cos --json /tmp/E.json
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import torch.nn.functional as F

from core.atomic_io import write_json_atomic
from core.schema.qat import QAT
from distill.qat.graph_module import QuantGraph
from distill.qat.stage import load_student
from distill.qat.structure import build_structure, pre_processed_graph, same_graph
from distill.qat.train import QatOptions, kd_loss, train_qat
from export.calibration import SampledSplit, SampleReader, prepare
from export.onnx_fp32 import INPUT_NAME, export_fp32
from runtime.machine import describe_cpu
from runtime.sizes import parse_size

LOSSES = {
    "kl": lambda s, t, temp: kd_loss(s, t, temp),
    "mse": lambda s, t, temp: F.mse_loss(s, t),
    "klce": lambda s, t, temp: kd_loss(s, t, temp) + F.cross_entropy(s, t.argmax(1)),
}


def _images(data: str, split: str, count: int, seed: int, pre) -> torch.Tensor:
    return torch.from_numpy(
        np.concatenate([s.x for s in prepare(list(SampledSplit(data, split, count, seed)), pre)])
    )


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--size", default="256x512")
    p.add_argument("--crop", default=None, help="train on HxW crops (segkd qat --crop-size)")
    p.add_argument("--data", default="synthetic:size=128x256")
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--n", type=int, default=16, help="held-out val images")
    p.add_argument("--train", type=int, default=64, help="train images")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--bs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4, help="SGD (preconditioned) weights")
    p.add_argument("--slr", type=float, default=1e-3, help="Adam log-scales; 0 freezes them")
    p.add_argument("--loss", choices=sorted(LOSSES), default="kl")
    p.add_argument("--T", type=float, default=1.0)
    p.add_argument("--cos", action="store_true", help="cosine decay of both learning rates")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args()


def main() -> None:
    a = _args()
    torch.set_num_threads(1)
    size = parse_size(a.size, "--size", 32)
    crop = parse_size(a.crop, "--crop", 32) if a.crop else None
    model, _, pre = load_student(a.checkpoint)
    pre = pre.with_input_size(size)
    fp32 = export_fp32(model, input_size=size, output="labels").model
    calib = SampledSplit(a.data, "train", a.calib, 0)
    st = build_structure(fp32, SampleReader(INPUT_NAME, calib, pre), "minmax")
    full = QuantGraph(st.graph, st.placement, st.scales)
    g = full
    if crop:
        at_crop = pre_processed_graph(export_fp32(model, input_size=crop, output="labels").model)
        g = QuantGraph(same_graph(st.graph, at_crop, "--crop"), st.placement, st.scales)
    val = _images(a.data, "val", a.n, 0, pre)
    train = [s.x for s in prepare(list(SampledSplit(a.data, "train", a.train, a.seed + 1000)), pre)]
    ref_full = copy.deepcopy(full).requires_grad_(False)
    ref_full.quantize = False
    with torch.no_grad():
        labels = torch.cat([ref_full(val[i : i + 1]) for i in range(len(val))]).argmax(1)

    def agreement() -> float:
        if g is not full:
            full.load_state_dict(g.state_dict())
        with torch.no_grad():
            out = torch.cat([full(val[i : i + 1]) for i in range(len(val))])
        return float((out.argmax(1) == labels).float().mean())

    opts = QatOptions(steps=a.steps, batch_size=a.bs, crop_size=crop, lr=a.lr,
                      scale_lr=a.slr or QAT.default("scale_lr"), learn_scales=a.slr > 0,
                      schedule="cosine" if a.cos else "constant", temperature=a.T,
                      seed=a.seed)  # fmt: skip
    curve, losses, started = [(0, agreement())], [], time.perf_counter()
    print("step 0 agreement", curve[0][1], flush=True)

    def progress(step: int, loss: float) -> None:
        losses.append(loss)
        if step % a.eval_every == 0 or step == a.steps:
            curve.append((step, agreement()))
            per_step = (time.perf_counter() - started) / step
            print(f"{step} loss {np.mean(losses[-a.eval_every :]):.4g} agreement "
                  f"{curve[-1][1]:.4f} {per_step:.2f} s/step", flush=True)  # fmt: skip

    train_qat(g, train, opts, progress, objective=LOSSES[a.loss])
    if a.json is not None:
        write_json_atomic({"command": " ".join(sys.argv), "machine": describe_cpu(),
                           "options": {k: str(v) for k, v in vars(a).items()}, "curve": curve,
                           "seconds_per_step": (time.perf_counter() - started) / a.steps,
                           "load": os.getloadavg()}, a.json)  # fmt: skip


if __name__ == "__main__":
    main()
