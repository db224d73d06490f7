"""Golden outputs of mmsegmentation's own EncoderDecoder for segkd's zoo tests.

Run OUTSIDE the project, in a throwaway venv with torch 2.13.0, mmengine 0.10.x, mmcv-lite
2.1.0 and mmsegmentation 1.2.2 from PyPI (mmcv-lite has no compiled ops; `mmcv._ext` is
replaced by a module whose every function raises, which the ResNet/PSP/ASPP/FCN models
never call, so the numbers below are mmseg's own):

    python tools/golden/mmseg_golden.py tests/distill/zoo/golden

For each case: mmseg builds the model from its config file (SyncBN reverted to BN, the
same keys), the weights come from tools/golden/formula.py (a formula of each key's name
and shape), the input is formula.image(H, W), already normalised. Sizes are chosen so
every dilated tap sees real pixels (the largest dilation x 2 + 1 < the feature map).
The fixture keeps the key layout (names and shapes), the config's pretty_text (what a
1.x checkpoint stores in meta['cfg']) and float16 outputs:
- logits / aux: decode and auxiliary head outputs at the feature resolution;
- out: encode_decode (logits upsampled to the input with the head's align_corners),
  classes 0-3 at every 5th pixel (keeps the fixture small);
- slide (slide cases): slide_inference with the case's crop/stride, classes 0-3 at every
  3rd pixel, and slide_argmax (all classes) at every pixel.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch


class _NoOps(types.ModuleType):
    """Stands in for mmcv's compiled ops library, absent from mmcv-lite."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise RuntimeError(f"mmcv op {name} is not built here")

        return unavailable


sys.modules["mmcv._ext"] = _NoOps("mmcv._ext")
sys.modules["mmcv._ext"].__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)
sys.path.insert(0, str(Path(__file__).parent))

import formula  # noqa: E402
import mmcv  # noqa: E402
import mmengine  # noqa: E402
import mmseg  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.model import revert_sync_batchnorm  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

# name: (config, input (H, W), slide (crop (H, W), stride (H, W)) or None)
CASES = {
    "pspnet_r101-d8_512x1024": ("pspnet/pspnet_r101-d8_4xb2-80k_cityscapes-512x1024.py",
                                (97, 129), None),
    "pspnet_r101-d8_769x769": ("pspnet/pspnet_r101-d8_4xb2-80k_cityscapes-769x769.py",
                               (145, 201), ((97, 113), (65, 81))),
    "deeplabv3_r101-d8_512x1024": ("deeplabv3/deeplabv3_r101-d8_4xb2-80k_cityscapes-512x1024.py",
                                   (593, 601), None),
    "deeplabv3_r101-d16-mg124": (
        "deeplabv3/deeplabv3_r101-d16-mg124_4xb2-80k_cityscapes-512x1024.py", (609, 593), None),
    "fcn_r50-d8_769x769": ("fcn/fcn_r50-d8_4xb2-80k_cityscapes-769x769.py", (113, 97), None),
    "fcn-d6_r50-d16_512x1024": ("fcn/fcn-d6_r50-d16_4xb2-80k_cityscapes-512x1024.py",
                                (225, 241), None),
}  # fmt: skip


def half(t: torch.Tensor) -> np.ndarray:
    assert float(t.abs().max()) < 6e4, "beyond float16"
    return t.detach().numpy().astype(np.float16)


def run_case(root: Path, name: str, out_dir: Path) -> None:
    rel, (h, w), slide = CASES[name]
    cfg = Config.fromfile(str(root / rel))
    cfg.model.pretrained = None
    model = revert_sync_batchnorm(MODELS.build(cfg.model)).eval()
    layout = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    model.load_state_dict(formula.state_dict(layout), strict=True)
    x = formula.image(h, w)
    t0 = time.perf_counter()
    arrays: dict[str, np.ndarray] = {}
    with torch.no_grad():
        feats = model.extract_feat(x)
        arrays["logits"] = half(model.decode_head(feats))
        arrays["aux"] = half(model.auxiliary_head(feats))
        metas = [dict(img_shape=(h, w), ori_shape=(h, w))]
        arrays["out"] = half(model.encode_decode(x, metas)[:, :4, ::5, ::5])
        if slide is not None:
            model.test_cfg = mmengine.ConfigDict(mode="slide", crop_size=slide[0], stride=slide[1])
            seg = model.slide_inference(x, [dict(img_shape=(h, w), ori_shape=(h, w))])
            arrays["slide"] = half(seg[:, :4, ::3, ::3])
            arrays["slide_argmax"] = seg.argmax(1).numpy().astype(np.uint8)
    seconds = time.perf_counter() - t0
    info = {
        "case": name,
        "config": rel,
        "input": [h, w],
        "slide": None if slide is None else {"crop": slide[0], "stride": slide[1]},
        "config_test_cfg": dict(cfg.model.test_cfg),
        "layout": layout,
        "pretty_text": cfg.pretty_text,
        "upstream": {
            "mmsegmentation": mmseg.__version__,
            "mmengine": mmengine.__version__,
            "mmcv": f"{mmcv.__version__} (mmcv-lite, no compiled ops)",
            "torch": torch.__version__,
        },
        "generator": "tools/golden/mmseg_golden.py",
        "seconds": round(seconds, 2),
    }
    np.savez_compressed(out_dir / f"mmseg_{name}.npz", info=np.array(json.dumps(info)), **arrays)
    print(f"{name}: {seconds:.1f} s, outputs {[a.shape for a in arrays.values()]}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--only", nargs="*")
    a = p.parse_args()
    torch.set_num_threads(2)
    register_all_modules()
    root = Path(mmseg.__file__).parent / ".mim" / "configs"
    a.out.mkdir(parents=True, exist_ok=True)
    for name in a.only or CASES:
        run_case(root, name, a.out)


if __name__ == "__main__":
    main()
