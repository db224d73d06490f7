"""Writes distill/zoo/data/mmseg_configs.json from mmsegmentation's own config files.

Run OUTSIDE the project, in a throwaway venv that has mmsegmentation 1.2.x and mmengine
installed from PyPI (the configs ship inside the package, under mmseg/.mim/configs):

    python tools/golden/mmseg_configs.py distill/zoo/data/mmseg_configs.json

For every PSPNet / DeepLabV3 / FCN config, mmengine resolves the inheritance and the
table keeps what segkd builds from (the `model` dict's backbone / decode_head /
auxiliary_head / test_cfg / data_preprocessor entries) plus the test pipeline's Resize.
metafile.yaml links each config to its checkpoint file name, so a downloaded file is
found by its own name (0.x names such as pspnet_r101-d8_512x1024_80k_cityscapes_...pth).
(The golden fixtures of tools/golden/mmseg_golden.py carry whole pretty_texts, the text
an mmseg 1.x checkpoint stores in meta['cfg'].)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import mmengine
import mmseg
import torch
import yaml
from mmengine.config import Config

FAMILIES = ("pspnet", "deeplabv3", "fcn")
KEEP = ("backbone", "decode_head", "auxiliary_head", "test_cfg", "data_preprocessor")
DROP = ("loss_decode", "init_cfg", "sampler", "norm_cfg", "pretrained")  # training only


def plain(x):
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items() if k not in DROP}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    return x


def test_resize(cfg: Config):
    for step in cfg.get("test_pipeline", []) or []:
        if step.get("type") == "Resize":
            return {"scale": list(step["scale"]), "keep_ratio": bool(step.get("keep_ratio"))}
    return None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    a = p.parse_args()
    root = Path(mmseg.__file__).parent / ".mim" / "configs"
    table: dict = {}
    checkpoints: dict = {}
    for fam in FAMILIES:
        for path in sorted((root / fam).glob("*.py")):
            cfg = Config.fromfile(str(path))
            model = cfg.model
            table[path.stem] = {
                "model": {k: plain(model[k]) for k in KEEP if model.get(k) is not None},
                "test_resize": test_resize(cfg),
            }
        meta = yaml.safe_load((root / fam / "metafile.yaml").read_text())
        for m in meta.get("Models", []):
            weights = m.get("Weights")
            if weights and m["Name"] in table:
                checkpoints[Path(weights).stem] = m["Name"]
    out = {
        "generated_by": "tools/golden/mmseg_configs.py",
        "upstream": {
            "mmsegmentation": mmseg.__version__,
            "mmengine": mmengine.__version__,
            "torch": torch.__version__,
        },
        "configs": table,
        "checkpoints": checkpoints,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"{len(table)} configs, {len(checkpoints)} checkpoint names -> {a.out}")


if __name__ == "__main__":
    main()
