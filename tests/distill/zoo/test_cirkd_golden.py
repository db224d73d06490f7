"""segkd's CIRKD teachers against CIRKD's own models (tools/golden/cirkd_golden.py).

The fixtures hold the upstream key layout and CIRKD's outputs on formula weights; the test
saves the state dict as CIRKD does (torch.save(model.state_dict())), loads it through the
zoo loader and compares logits, aux and eval.py's align_corners=True upsampling.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill.zoo.load import load_zoo_teacher
from tests.distill.zoo import golden_fixtures as gf

CASES = sorted(gf.GOLDEN.glob("cirkd_*.npz"))
TOL = 3e-3  # the fixture is float16


@pytest.mark.parametrize("case", CASES, ids=[p.stem for p in CASES])
def test_cirkd_teacher_equals_cirkd(case: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    info, want = gf.read(case)
    path = tmp_path / f"{info['case']}_citys_best_model.pth"
    torch.save(gf.state_dict(info), path)
    teacher = load_zoo_teacher(path).eval()
    x = gf.image(info)
    with torch.no_grad():
        logits, _, aux = teacher.net(x, with_aux=True)
        assert gf.rel_err(logits, want["logits"]) < TOL
        assert gf.rel_err(aux, want["aux"]) < TOL
        assert gf.rel_err(teacher(x)[:, :4, ::5, ::5], want["out"]) < TOL
