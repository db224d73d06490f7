"""The teacher sees each image as its source trained it to; the student as its own spec says.

Both come from the same augmented crop: the batch arrives normalised by the student's
PreprocessSpec, so the teacher's input is recovered exactly from it (undo the student's
mean/std back to 0..255 pixels, flip RGB<->BGR if the orders differ, apply the teacher's
mean/std), an affine map per channel, done on the device in one multiply-add.

Class sets: a teacher fits a dataset when the dataset's classes are the teacher's, or a
subset of them by name (e.g. a Cityscapes-19 teacher on the 12-class synthetic set): its
logits are then reduced to the dataset's classes, in the dataset's order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import SegkdError
from core.labels import LabelSpec
from core.preprocess import PreprocessSpec
from distill.zoo.base import ZooTeacher, normalized_names


def input_affine(
    student: PreprocessSpec, teacher: PreprocessSpec
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(scale, shift, flip): teacher_x = flip(student_x) * scale + shift, per channel.

    student_x[c] = (p[c] - m_s[c]) / s_s[c] in the student's channel order; the pixel in the
    teacher's order is p'[c] = p[perm c]; teacher_x[c] = (p'[c] - m_t[c]) / s_t[c].
    """
    flip = student.color_order != teacher.color_order
    m_s = torch.tensor(student.mean, dtype=torch.float64)
    s_s = torch.tensor(student.std, dtype=torch.float64)
    if flip:  # the student's channel statistics, reordered like the flipped tensor
        m_s, s_s = m_s.flip(0), s_s.flip(0)
    m_t = torch.tensor(teacher.mean, dtype=torch.float64)
    s_t = torch.tensor(teacher.std, dtype=torch.float64)
    scale = s_s / s_t
    shift = (m_s - m_t) / s_t
    return scale.float().view(1, 3, 1, 1), shift.float().view(1, 3, 1, 1), flip


def class_indices(
    teacher: LabelSpec, dataset: Sequence[str], path: Path, option: str = "--teacher"
) -> list[int] | None:
    """None when the classes are the same; else the teacher's index of each dataset class."""
    t_names = normalized_names(teacher.names)
    d_names = normalized_names(dataset)
    if t_names == d_names:
        return None
    missing = [n for n, k in zip(dataset, d_names, strict=False) if k not in t_names]
    if missing:
        raise SegkdError(
            f"{option} {path}: its {teacher.num_classes} classes ({', '.join(teacher.names[:4])}, "
            f"...) do not cover the dataset's {len(dataset)}: no {', '.join(missing[:4])}"
            + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        )
    return [t_names.index(k) for k in d_names]


def output_size(size: Sequence[int], stride: int = 8) -> tuple[int, int]:
    """Where a segkd student's 1/8 maps land: three stride-2 steps, each rounding up."""
    out = []
    for s in size:
        for _ in range(stride.bit_length() - 1):
            s = (int(s) + 1) // 2
        out.append(s)
    return out[0], out[1]


class ConvertedTeacher(nn.Module):
    """A ZooTeacher fed the student's batches: converts the input, maps the classes, and
    brings logits/feat to the student's 1/8 grid when the source's stride differs (the
    torchvision MobileNetV3 DeepLabV3 is at 1/16), resized the way the source upsamples."""

    def __init__(
        self,
        teacher: ZooTeacher,
        student_preprocess: PreprocessSpec,
        class_index: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.teacher = teacher
        scale, shift, self.flip = input_affine(student_preprocess, teacher.preprocess)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)
        index = torch.tensor(class_index if class_index is not None else [], dtype=torch.long)
        self.register_buffer("class_index", index, persistent=False)
        self.mapped = class_index is not None
        self.feat_channels = teacher.feat_channels
        self.num_classes = len(class_index) if class_index is not None else teacher.num_classes

    def teacher_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip:
            x = x.flip(1)
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)

    def extract(self, x: torch.Tensor, with_aux: bool = False) -> dict[str, torch.Tensor]:
        out = self.teacher.extract(self.teacher_input(x), with_aux=with_aux)
        size = output_size(x.shape[-2:])
        align = self.teacher.convention.align_corners
        for key in list(out):
            if self.mapped and key in ("logits", "aux"):
                out[key] = out[key].index_select(1, self.class_index)
            if tuple(out[key].shape[-2:]) != size:
                out[key] = F.interpolate(out[key], size=size, mode="bilinear", align_corners=align)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.teacher(self.teacher_input(x))
        return logits.index_select(1, self.class_index) if self.mapped else logits
