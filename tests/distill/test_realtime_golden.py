"""DDRNet-23-slim and PIDNet-S against outputs the AUTHORS' code produced
(tools/golden/realtime_models.py ran ydhongHIT/DDRNet's and XuJiacong/PIDNet's model files,
commits in the fixtures): weights from tools/golden/formula.py in the upstream key layout,
saved as a file and loaded through segkd's own loader (`backbone_weights`, which keeps
every key whose name and shape fit, as PIDNet's get_seg_model does), then the outputs of
every head compared in eval mode and in train mode (batch statistics)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distill.models import build_model
from tools.golden.formula import images, parse_layout, state_dict

GOLDEN = Path(__file__).parent / "golden"
ARCHS = {"ddrnet23_slim": ("logits", "aux"), "pidnet_s": ("logits", "aux", "boundary")}


def fixture(arch: str):  # type: ignore[no-untyped-def]
    return np.load(GOLDEN / f"realtime_{arch}.npz")


def formula_file(layout: dict[str, tuple[int, ...]], path: Path, wrap: bool = False) -> Path:
    state = state_dict(list(layout.items()))
    torch.save({"state_dict": state} if wrap else state, path)
    return path


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_key_layout_is_the_authors(arch: str) -> None:
    upstream = parse_layout(fixture(arch)["layout"])
    ours = {k: tuple(v.shape) for k, v in build_model(arch, 19).state_dict().items()}
    assert ours == upstream


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_head_equals_the_authors_network(arch: str, tmp_path: Path) -> None:
    gold = fixture(arch)
    assert str(gold["upstream"]).startswith("github.com/")
    weights = formula_file(parse_layout(gold["layout"]), tmp_path / "w.pth", arch == "pidnet_s")
    model = build_model(arch, 19, backbone_weights=str(weights))
    assert model.backbone_report["missing"] == [] and model.backbone_report["mismatched"] == []
    x = images(*(int(v) for v in gold["size"][[0, 2, 3]]))
    for mode in ("eval", "train"):
        model.train(mode == "train")
        with torch.no_grad():
            out = model.extract(x, with_aux=True)
        for name in ARCHS[arch]:
            y = out[name].double().numpy()
            key = f"{mode}_{name}"
            # float32 summation-order noise (1 thread here, 2 upstream) grows with the
            # output's scale (eval logits: channel std up to 23); measured at most 9e-7
            # of this scale, so 1e-5 leaves room for another CPU's kernels.
            tol = 1e-5 * max(1.0, float(gold[key + "_std"].max()))
            np.testing.assert_allclose(
                y.mean(axis=(2, 3)), gold[key + "_mean"], atol=tol, err_msg=key
            )
            np.testing.assert_allclose(
                y.std(axis=(2, 3)), gold[key + "_std"], atol=tol, err_msg=key
            )
            ref = gold[key].astype(np.float64)
            np.testing.assert_allclose(
                y[0], ref, atol=2e-3 * max(1.0, np.abs(ref).max()), err_msg=key
            )
