"""The trainer shared by `segkd train` and `segkd distill`.

TrainConfig imports without torch (the CLI reads its defaults at start-up); `train` pulls
torch in on first use.
"""

from __future__ import annotations

from typing import Any

from distill.training.config import TrainConfig

__all__ = ["TrainConfig", "train"]


def __getattr__(name: str) -> Any:
    if name == "train":
        from distill.training.trainer import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
