"""Opening any model artifact and scoring it on a dataset: shared by `segkd eval` and the pipeline,
so the pipeline's report and `segkd eval` compute the same number for the same artifact."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from core.labels import LabelSpec
from runtime.evaluate import EvalResult, evaluate, resolve_convention
from runtime.loader import open_segmenter
from runtime.segmenter import Segmenter


def torch_model_loader(
    path: Path | str, device: str, dataset: LabelSpec | None = None
) -> tuple[Any, dict[str, Any]]:
    """Rebuilds a .pt/.pth for the torch backend (needs segkd's training package): a segkd
    checkpoint, or a model-zoo file (mmseg/cirkd/torchvision; reduced to `dataset`'s classes
    when they are a subset of the teacher's)."""
    from distill.zoo.entry import load_any_model

    return load_any_model(path, device, dataset)


def _zoo_prefixed(model: str | Path) -> Path | None:
    """The file of 'mmseg:FILE' / 'torchvision:NAME:FILE' style model names, else None."""
    text = str(model)
    if ":" not in text or Path(text).exists():
        return None
    from distill.zoo import parse_teacher_spec

    spec = parse_teacher_spec(text)
    return spec.path if spec.source is not None else None


def open_model(
    model: str | Path,
    backend: str = "auto",
    device: str = "auto",
    precision: str | None = None,
    threads: int | None = None,
    dataset: LabelSpec | None = None,
) -> Segmenter:
    opts = {"intra_op_threads": threads} if threads else {}
    prefixed = _zoo_prefixed(model)

    def loader(path: Path, dev: str) -> tuple[Any, dict[str, Any]]:
        return torch_model_loader(model if prefixed is not None else path, dev, dataset)

    return open_segmenter(
        prefixed if prefixed is not None else model,
        backend=backend,
        device=device,
        precision=precision,
        torch_model_loader=loader,
        **opts,
    )


def dataset_split(
    data: str, split: str, max_images: int | None
) -> tuple[Callable[[], Iterator[tuple[np.ndarray, np.ndarray, str]]], LabelSpec, Any, int]:
    """(samples factory, label spec, encode_label, count) of a dataset split, read without torch."""
    from distill.data import build_dataset

    ds = build_dataset(data, split)
    n = len(ds) if max_images is None else min(len(ds), max_images)

    def samples() -> Iterator[tuple[np.ndarray, np.ndarray, str]]:
        for i in range(n):
            image, mask = ds[i]
            yield image, mask, ds.sample_id(i)

    return samples, ds.labels, ds.encode_label, n


def evaluate_on_dataset(
    model: str | Path,
    data: str,
    split: str = "val",
    max_images: int | None = None,
    backend: str = "auto",
    device: str = "auto",
    precision: str | None = None,
    save_predictions: Path | None = None,
    show_progress: bool = True,
    convention: str = "auto",
    mode: str = "auto",
    crop: tuple[int, int] | None = None,
    stride: tuple[int, int] | None = None,
) -> EvalResult:
    """mode/crop/stride: runtime.slide.resolve_mode (auto: the model's recorded test mode)."""
    from tqdm import tqdm

    from runtime.slide import resolve_mode

    samples, labels, encode, n = dataset_split(data, split, max_images)
    with open_model(model, backend, device, precision, dataset=labels) as seg:
        convention = resolve_convention(seg, convention)  # refuse before the progress bar
        slide = resolve_mode(mode, crop, stride, seg.meta.extra.get("test_mode"))
        bar = tqdm(
            total=n, desc=f"eval {Path(str(model)).name}", disable=not show_progress, leave=False
        )
        try:
            return evaluate(
                seg,
                samples(),
                labels,
                save_predictions=save_predictions,
                encode_label=encode,
                on_sample=lambda _n: bar.update(1),
                convention=convention,
                slide=slide,
            )
        finally:
            bar.close()
