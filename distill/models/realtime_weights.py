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

import logging
from pathlib import Path
from typing import Any

from distill.models.segmentor import SegmentationNet
from runtime.errors import SegkdError

log = logging.getLogger(__name__)

# Parts of the authors' ImageNet classifiers that have no place in the segmentation net.
IMAGENET_ONLY_PREFIXES = ("down5.", "last_layer.", "linear.", "fc.", "classifier.")


def load_realtime_imagenet(model: SegmentationNet, path: str | Path) -> dict[str, Any]:
    from distill.models.registry import match_weights, read_state_dict

    path = Path(path)
    source = read_state_dict(path)
    target = model.state_dict()
    fitting, report = match_weights(source, target, IMAGENET_ONLY_PREFIXES)
    ignored = report["ignored"]
    if not fitting:
        raise SegkdError(
            f"backbone weights {path}: no key fits {model.arch} ({len(source)} keys, e.g. "
            f"{next(iter(source), 'none')!r}); is it the authors' ImageNet checkpoint?"
        )
    model.load_state_dict(fitting, strict=False)
    report = {"path": str(path), **report}
    log.info(
        "backbone weights %s: %d tensors loaded into %s, %d ImageNet classifier keys ignored",
        path,
        len(fitting),
        model.arch,
        len(ignored),
    )
    for kind in ("missing", "unexpected", "mismatched"):
        if report[kind]:
            log.warning(
                "backbone weights %s: %d %s keys, by module: %s",
                path,
                len(report[kind]),
                kind,
                _by_module(report[kind]),
            )
    return report


def _by_module(keys: list[str]) -> str:
    """'spp (70), final_layer (10)': the head and context module are missing by design."""
    counts: dict[str, int] = {}
    for k in keys:
        top = k.split(".", 1)[0]
        counts[top] = counts.get(top, 0) + 1
    return ", ".join(f"{m} ({n})" for m, n in counts.items())
