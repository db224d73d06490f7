"""Golden outputs of CIRKD's own PSPNet and DeepLabV3 (winycg/CIRKD models/) for segkd's tests.

Run OUTSIDE the project with a checkout of the CIRKD repository (its `models/` package
only; pretrained_base='None', CIRKD's spelling of no ImageNet file) and torch 2.13.0:

    git -C CIRKD archive HEAD models | tar -x -C /work/throwaway/cirkd
    python tools/golden/cirkd_golden.py /work/throwaway/cirkd tests/distill/zoo/golden \
        --commit <the checkout's commit>

Weights: tools/golden/formula.py on the model's own state-dict keys; input
formula.image(H, W). Sizes: ASPP rate 36 at output stride 8 needs a feature map wider
than 73 pixels (input > 584). The fixture keeps the key layout and float16 outputs:
logits and aux at the feature resolution (CIRKD's forward returns them unsampled),
`out` = eval.py's upsampling (bilinear, align_corners=True) of classes 0-3, every 5th pixel.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import formula

# name: (module, builder, backbone, input (H, W))
CASES = {
    "psp_resnet101": ("pspnet", "get_psp", "resnet101", (97, 129)),
    "deeplabv3_resnet101": ("deeplabv3", "get_deeplabv3", "resnet101", (593, 601)),
}


def half(t: torch.Tensor) -> np.ndarray:
    assert float(t.abs().max()) < 6e4, "beyond float16"
    return t.detach().numpy().astype(np.float16)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkout", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--commit", required=True)
    p.add_argument("--only", nargs="*")
    a = p.parse_args()
    sys.path.insert(0, str(a.checkout))
    torch.set_num_threads(2)
    import importlib

    for name in a.only or CASES:
        module, builder, backbone, (h, w) = CASES[name]
        build = getattr(importlib.import_module(f"models.{module}"), builder)
        model = build(backbone=backbone, pretrained="None", pretrained_base="None",
                      num_class=19, aux=True).eval()  # fmt: skip
        layout = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
        model.load_state_dict(formula.state_dict(layout), strict=True)
        x = formula.image(h, w)
        t0 = time.perf_counter()
        with torch.no_grad():
            logits, aux = model(x)[:2]
            out = F.interpolate(logits, (h, w), mode="bilinear", align_corners=True)
        info = {
            "case": name,
            "input": [h, w],
            "layout": layout,
            "upstream": {"CIRKD": f"winycg/CIRKD {a.commit}", "torch": torch.__version__},
            "generator": "tools/golden/cirkd_golden.py",
            "seconds": round(time.perf_counter() - t0, 2),
        }
        np.savez_compressed(
            a.out / f"cirkd_{name}.npz", info=np.array(json.dumps(info)), logits=half(logits),
            aux=half(aux), out=half(out[:, :4, ::5, ::5]),
        )  # fmt: skip
        print(name, info["seconds"], "s", tuple(logits.shape))


if __name__ == "__main__":
    main()
