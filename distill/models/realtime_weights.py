"""Load the authors' published ImageNet checkpoints into DDRNet-23-slim / PIDNet-S.

The files are local (nothing is downloaded) and read with weights_only=True:
- DDRNet23s_imagenet.pth (ydhongHIT/DDRNet): a plain state dict of the ImageNet
  DualResNet: the segmentation network's trunk under the same names (conv1.*,
  layer1..layer5, layer3_..layer5_, compression3/4, down3/4), plus its classifier
  (down5.*, last_layer.*, linear.*), which is ignored here. The DAPPM (spp.*) and the
  heads are not in it and stay at their initialisation.
- PIDNet_S_ImageNet.pth.tar (XuJiacong/PIDNet): {"state_dict": ...} under the
  segmentation network's own names; the authors keep every key whose name and shape
  match, which is what this loader does.
A "module." prefix (DataParallel) is stripped and a {"state_dict"/"model": ...} wrapper
unwrapped (`registry.read_state_dict`). Keys are matched by name and shape; the report
lists what loaded, what the network kept at init (missing), what the file holds that
the network lacks (unexpected), same-name-other-shape keys (mismatched, skipped) and
the known ImageNet classifier keys (ignored).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.models.segmentor import SegmentationNet

# Parts of the authors' ImageNet classifiers that have no place in the segmentation net.
IMAGENET_ONLY_PREFIXES = ("down5.", "last_layer.", "linear.", "fc.", "classifier.")


def load_realtime_imagenet(model: SegmentationNet, path: str | Path) -> dict[str, Any]:
    from distill.models.registry import load_matching_weights

    return load_matching_weights(
        model,
        path,
        IMAGENET_ONLY_PREFIXES,
        target=model.arch,
        hint="is it the authors' ImageNet checkpoint?",
        describe=lambda keys: f", by module: {_by_module(keys)}",
    )


def _by_module(keys: list[str]) -> str:
    """'spp (70), final_layer (10)': the head and context module are missing by design."""
    counts: dict[str, int] = {}
    for k in keys:
        top = k.split(".", 1)[0]
        counts[top] = counts.get(top, 0) + 1
    return ", ".join(f"{m} ({n})" for m, n in counts.items())
