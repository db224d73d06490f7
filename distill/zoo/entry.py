"""One entry for `--teacher SPEC` and `segkd eval FILE`: a segkd checkpoint or a zoo file.

A plain path is read once: a segkd checkpoint (its 'format' tag) goes through
distill.checkpoint as before; anything else is rebuilt from its model zoo's layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from core.labels import LabelSpec
from core.preprocess import PreprocessSpec
from distill.checkpoint import EXPORTED_SUFFIXES, FORMAT, load_model
from distill.zoo.base import ZooTeacher
from distill.zoo.convert import ConvertedTeacher, class_indices
from distill.zoo.load import TeacherSpec, load_zoo_teacher, parse_teacher_spec
from distill.zoo.safe_load import read_weights_file


def _zoo_or_none(spec: TeacherSpec) -> ZooTeacher | None:
    """The zoo teacher SPEC names, or None when SPEC is a segkd checkpoint."""
    if spec.source is not None:
        return load_zoo_teacher(spec)
    if spec.path.suffix.lower() in EXPORTED_SUFFIXES:
        return None  # load_checkpoint says what an exported model is and what to pass instead
    obj = read_weights_file(spec.path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return None
    return load_zoo_teacher(spec, obj)


def teacher_record(teacher: ZooTeacher, spec: TeacherSpec) -> dict[str, Any]:
    """What distillation reads from a teacher checkpoint (arch, labels, metrics), for a zoo file."""
    return {**teacher.describe(), "metrics": {}, "zoo": {"source": spec.source or teacher.source}}


def load_teacher(
    spec_text: str | Path,
    dataset_classes: Sequence[str],
    student_preprocess: PreprocessSpec,
    option: str = "--teacher",
) -> tuple[nn.Module, dict[str, Any], Path]:
    """(frozen teacher fed the student's batches, checkpoint-like record, the file's path).

    Raises a one-line SegkdError when the teacher's classes do not fit the dataset's
    (naming `option`, the setting that gave SPEC).
    """
    from distill.teacher import check_teacher_fits

    spec = parse_teacher_spec(spec_text)
    zoo = _zoo_or_none(spec)
    if zoo is None:
        model, ckpt = load_model(spec.path, device="cpu")
        check_teacher_fits(ckpt, dataset_classes, spec.path, option)
        return model, ckpt, spec.path  # segkd trains every model under the student's spec
    index = class_indices(zoo.labels, dataset_classes, spec.path, option)
    return ConvertedTeacher(zoo, student_preprocess, index), teacher_record(zoo, spec), spec.path


def load_any_model(
    spec_text: str | Path, device: str = "cpu", dataset: LabelSpec | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """For `segkd eval` / the torch backend: (model in eval mode, record with arch, labels,
    preprocess). A zoo teacher keeps its own preprocessing and upsampling; with `dataset`
    whose classes are a subset of the teacher's, its logits are reduced to them."""
    spec = parse_teacher_spec(spec_text)
    zoo = _zoo_or_none(spec)
    if zoo is None:
        return load_model(spec.path, device)
    record = teacher_record(zoo, spec)
    model: nn.Module = zoo
    if dataset is not None:
        index = class_indices(zoo.labels, dataset.names, spec.path, option="model")
        if index is not None:
            same = PreprocessSpec.from_dict(record["preprocess"])
            model = ConvertedTeacher(zoo, same, index)
            record["labels"] = dataset.to_dict()
    return model.to(device).eval(), record
