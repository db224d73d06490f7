"""Teachers from model zoos: mmsegmentation, CIRKD and torchvision checkpoints, rebuilt as
their sources define them, each with its own input convention (distill.zoo.convert)."""

from distill.zoo.base import ZooTeacher
from distill.zoo.load import has_zoo_prefix, load_zoo_teacher, parse_teacher_spec

__all__ = ["ZooTeacher", "has_zoo_prefix", "load_zoo_teacher", "parse_teacher_spec"]
