"""segkd's torchvision teachers against torchvision's own models (tools/golden/torchvision_golden.py).

The fixtures hold torchvision's key layout and its outputs on formula weights; the test
saves the bare state dict (as torchvision publishes its weights), loads it through the zoo
loader, and compares the classifier (and aux classifier) outputs at the feature resolution
and torchvision's own upsampled `out`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill.zoo.load import load_zoo_teacher
from tests.distill.zoo import golden_fixtures as gf

CASES = sorted(gf.GOLDEN.glob("torchvision_*.npz"))
TOL = 3e-3  # the fixture is float16


@pytest.mark.parametrize("case", CASES, ids=[p.stem for p in CASES])
def test_torchvision_teacher_equals_torchvision(case: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    info, want = gf.read(case)
    path = tmp_path / f"{info['case']}_coco.pth"
    torch.save(gf.state_dict(info), path)
    teacher = load_zoo_teacher(f"torchvision:{info['case']}:{path}").eval()
    x = gf.image(info)
    out_step, aux_step = info.get("out_step", 5), info.get("aux_step", 1)
    with torch.no_grad():
        logits, _, aux = teacher.net(x, with_aux=True)
        assert gf.rel_err(logits, want["logits"]) < TOL
        if "aux" in want:  # the fixture keeps fewer classes / pixels of a large aux map
            kept = aux[:, : want["aux"].shape[1], ::aux_step, ::aux_step]
            assert gf.rel_err(kept, want["aux"]) < TOL
        out = teacher(x)[:, :4, ::out_step, ::out_step]
        assert gf.rel_err(out, want["out"]) < TOL
