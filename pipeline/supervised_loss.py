"""One sentence naming the supervised loss a pipeline's students trained with (the
baseline and the distilled student share it), for the report."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def describe_supervised_loss(section: Mapping[str, Any]) -> str:
    """From a pipeline `student` section (or the dict the report stores)."""
    if section.get("loss", "ce") != "ohem":
        return "plain cross-entropy (+ 0.4 x the aux head's CE)"
    weights = section.get("class_weights")
    return (
        f"the authors' OHEM cross-entropy (threshold {section.get('ohem_threshold')}, at least "
        f"{section.get('ohem_min_kept')} pixels kept per process batch, "
        f"{'class weights ' + str(weights) if weights else 'no class weights'}; "
        "boundary terms for PIDNet; docs/notes/authors.md)"
    )
