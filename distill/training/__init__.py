"""The trainer shared by `segkd train` and `segkd distill`."""

from distill.training.config import TrainConfig
from distill.training.trainer import train

__all__ = ["TrainConfig", "train"]
