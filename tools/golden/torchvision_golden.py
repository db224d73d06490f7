"""Golden outputs of torchvision's six segmentation models for segkd's zoo tests.

Run OUTSIDE the project, in a throwaway venv with torchvision from PyPI (on x86_64 here:
`pip install torch==2.14.1 torchvision==0.29.1`):

    python tools/golden/torchvision_golden.py tests/distill/zoo/golden

Each model is built by torchvision itself (weights=None, weights_backbone=None, 21
classes, with the auxiliary classifier its published COCO weights carry), filled with
tools/golden/formula.py's weights, and run in eval mode on formula.image(H, W). Sizes:
ASPP rate 36 needs a feature map wider than 73 pixels: input > 584 at output stride 8
(ResNet), > 1168 at 16 (MobileNetV3). The fixture keeps the key layout and float16
outputs: `out` (torchvision's own upsampling, classes 0-3 every 5th pixel; every 10th
above 1000 pixels), `logits` (the classifier at the feature resolution) and `aux` (above
1000 pixels of input: classes 0-3 at every 2nd pixel, to keep the fixture small).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from torchvision.models import segmentation

sys.path.insert(0, str(Path(__file__).parent))
import formula

CASES = {
    "deeplabv3_resnet50": (593, 601),
    "deeplabv3_resnet101": (593, 601),
    "fcn_resnet50": (97, 129),
    "fcn_resnet101": (97, 129),
    "deeplabv3_mobilenet_v3_large": (1185, 1201),
    "lraspp_mobilenet_v3_large": (161, 193),
}


def half(t: torch.Tensor) -> np.ndarray:
    assert float(t.abs().max()) < 6e4, "beyond float16"
    return t.detach().numpy().astype(np.float16)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--only", nargs="*")
    a = p.parse_args()
    torch.set_num_threads(2)
    for name in a.only or CASES:
        h, w = CASES[name]
        kwargs = {} if name.startswith("lraspp") else {"aux_loss": True}
        model = getattr(segmentation, name)(
            weights=None, weights_backbone=None, num_classes=21, **kwargs
        ).eval()
        layout = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
        model.load_state_dict(formula.state_dict(layout), strict=True)
        x = formula.image(h, w)
        t0 = time.perf_counter()
        arrays = {}
        big = h > 1000
        out_step, aux_step, aux_classes = (10, 2, 4) if big else (5, 1, 21)
        with torch.no_grad():
            result = model(x)
            arrays["out"] = half(result["out"][:, :4, ::out_step, ::out_step])
            feats = model.backbone(x)
            if name.startswith("lraspp"):
                arrays["logits"] = half(model.classifier(feats))
            else:
                arrays["logits"] = half(model.classifier(feats["out"]))
                aux = model.aux_classifier(feats["aux"])
                arrays["aux"] = half(aux[:, :aux_classes, ::aux_step, ::aux_step])
        info = {
            "case": name,
            "input": [h, w],
            "out_step": out_step,
            "aux_step": aux_step,
            "layout": layout,
            "upstream": {"torchvision": torchvision.__version__, "torch": torch.__version__},
            "generator": "tools/golden/torchvision_golden.py",
            "seconds": round(time.perf_counter() - t0, 2),
        }
        np.savez_compressed(
            a.out / f"torchvision_{name}.npz", info=np.array(json.dumps(info)), **arrays
        )
        print(name, info["seconds"], "s", {k: v.shape for k, v in arrays.items()})


if __name__ == "__main__":
    main()
