"""Checkpoints with training state beside the weights, as numpy 1.x and mmengine write them.

Run OUTSIDE the project, twice, in throwaway venvs (torch 2.13.0 in both):
    numpy 1.26 (`pip install 'numpy<2'`):
        python tools/golden/training_state.py numpy1 tests/distill/zoo/golden
    mmengine 0.10 with numpy 2 (the mmsegmentation venv of mmseg_golden.py):
        python tools/golden/training_state.py mmengine tests/distill/zoo/golden

numpy1: an mmseg-0.x-style {'meta', 'state_dict'} whose meta holds a numpy int64 seed and
a float array: the pickle names numpy 1.x writes (numpy.core.multiarray.scalar and
_reconstruct), which numpy 2's names do not match.
mmengine: what mmengine's Runner.save_checkpoint adds to the weights: meta (with a numpy
seed), 'message_hub' = MessageHub.state_dict() whose log_scalars are real HistoryBuffer
objects, 'optimizer' and 'param_schedulers' state.
The weights are tools/golden/formula.py's for a few keys, so a test can check them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import formula

LAYOUT = [
    ("decode_head.conv_seg.weight", (19, 8, 1, 1)),
    ("decode_head.conv_seg.bias", (19,)),
    ("backbone.stem.1.running_var", (8,)),
]


def main() -> None:
    kind, out = sys.argv[1], Path(sys.argv[2])
    state = formula.state_dict(LAYOUT)
    versions = {"numpy": np.__version__, "torch": torch.__version__}
    meta = {"seed": np.int64(1234), "scales": np.array([0.5, 1.0, 1.75]), "iter": 80000}
    if kind == "numpy1":
        assert np.__version__.startswith("1."), "run this with numpy 1.x"
        obj = {"meta": {**meta, "mmseg_version": "0.30.0"}, "state_dict": state}
    elif kind == "mmengine":
        import mmengine
        from mmengine.logging import MessageHub

        versions["mmengine"] = mmengine.__version__
        hub = MessageHub.get_instance("golden")
        for step in range(3):
            hub.update_scalar("train/loss", 1.0 / (step + 1))
            hub.update_scalar("train/lr", 0.01 * 0.9**step)
        hub.update_info("iter", 3)
        param = torch.nn.Parameter(state["decode_head.conv_seg.bias"].clone())
        opt = torch.optim.SGD([param], lr=0.01, momentum=0.9)
        param.grad = torch.ones_like(param)
        opt.step()
        obj = {
            "meta": {**meta, "mmengine_version": mmengine.__version__, "dataset_meta": {}},
            "state_dict": state,
            "message_hub": hub.state_dict(),
            "optimizer": opt.state_dict(),
            "param_schedulers": [{"eta_min": 0.0001, "power": 0.9, "last_step": 3}],
        }
    else:
        raise SystemExit(f"unknown kind {kind!r}: numpy1 or mmengine")
    path = out / f"training_state_{kind}.pt"
    torch.save(obj, path)
    path.with_suffix(".json").write_text(
        json.dumps({"generator": "tools/golden/training_state.py", "upstream": versions,
                    "layout": LAYOUT}, indent=1) + "\n"
    )  # fmt: skip
    print(path, versions)


if __name__ == "__main__":
    main()
