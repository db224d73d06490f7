"""torch DataLoaders over SegDatasets: the only module in distill.data that imports torch.

Training batches travel as uint8 (images HxWx3 in the network's channel order, labels
HxW): a quarter of float32's bytes (an eighth of int64's) through the workers' shared
memory, the pinned copy and PCIe. `NetworkInput` casts and normalises them on the device
with the scale and shift of `PreprocessSpec.normalize`, the function the deployed runtime
calls, in the same two float32 steps, so training still sees exactly the tensors an
exported engine sees. Evaluation batches are normalised on the host as before.

Seeding: the train loader seeds everything from (seed, rank). The sampler's shuffle and
torch's per-worker base seed come from a torch.Generator; each worker then calls
`transform.reseed(torch worker seed)` on the dataset's TrainTransform, so workers draw
different augmentations and a rerun with the same seed draws the same ones. With
num_workers=0 the transform is reseeded once in the main process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from core.errors import SegkdError
from core.preprocess import PreprocessSpec
from distill.data.base import SegDataset

Batch = tuple[torch.Tensor, torch.Tensor]


class NormalizedDataset(Dataset):
    """dataset[i] -> (3xHxW float32 tensor via preprocess.normalize, HxW uint8 tensor)."""

    def __init__(self, dataset: SegDataset, preprocess: PreprocessSpec) -> None:
        self.dataset, self.preprocess = dataset, preprocess

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Batch:
        image, mask = self.dataset[index]
        return (
            torch.from_numpy(self.preprocess.normalize(image, "RGB")),
            torch.from_numpy(np.ascontiguousarray(mask)),
        )


class PixelDataset(Dataset):
    """dataset[i] -> (HxWx3 uint8 tensor in the network's channel order, HxW uint8 tensor)."""

    def __init__(self, dataset: SegDataset, preprocess: PreprocessSpec) -> None:
        self.dataset, self.preprocess = dataset, preprocess

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Batch:
        image, mask = self.dataset[index]  # RGB, as every SegDataset returns it
        if self.preprocess.color_order != "RGB":
            image = image[:, :, ::-1]
        return (
            torch.from_numpy(np.ascontiguousarray(image)),
            torch.from_numpy(np.ascontiguousarray(mask)),
        )


def collate_pixels(samples: Sequence[Batch]) -> Batch:
    """Stack into (BxHxWx3 uint8, BxHxW uint8): no widening on the host."""
    _same_size(samples)
    return torch.stack([x for x, _ in samples]), torch.stack([y for _, y in samples])


class NetworkInput:
    """`collate_pixels` batches -> (Bx3xHxW float32 normalised, BxHxW int64) on `device`.

    The copies are non-blocking (from pinned memory when the loader pins). Permuting NHWC
    to NCHW is a view whose strides already are channels_last, so that layout costs
    nothing; otherwise the uint8 tensor is made contiguous (1 byte a value) before the cast.
    """

    def __init__(self, preprocess: PreprocessSpec, device: torch.device, channels_last: bool):
        self.device, self.channels_last = device, channels_last
        # The deployed runtime's own float32 constants: x * scale + shift == (x - mean) / std.
        scale, shift = preprocess._scale_shift()
        self.scale = torch.from_numpy(scale).view(1, 3, 1, 1).to(device)
        self.shift = torch.from_numpy(shift).view(1, 3, 1, 1).to(device)

    def __call__(self, batch: Batch) -> Batch:
        pixels, labels = (t.to(self.device, non_blocking=True) for t in batch)
        images = pixels.permute(0, 3, 1, 2)
        images = (images if self.channels_last else images.contiguous()).float()
        images.mul_(self.scale).add_(self.shift)  # two float32 roundings, as normalize's
        return images, labels.long()


def workers_per_process(requested: int | None) -> int:
    """`requested`, or (None) the CPUs this process may use shared among the processes
    torchrun started on this machine, less one for the process itself (at least 1)."""
    if requested is not None:
        return requested
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, (cpus or 1) // local - 1)


def _same_size(samples: Sequence[Batch]) -> None:
    shapes = {tuple(x.shape) for x, _ in samples}
    if len(shapes) > 1:
        raise SegkdError(
            f"images of different sizes {sorted(shapes)} in one batch: use batch size 1 "
            "for whole-image evaluation, or a fixed eval size"
        )


def collate(samples: Sequence[Batch]) -> Batch:
    """Stack into (Bx3xHxW float32, BxHxW int64); sizes must agree within a batch."""
    _same_size(samples)
    images = torch.stack([x for x, _ in samples])
    labels = torch.stack([y for _, y in samples]).long()
    return images, labels


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    cv2.setNumThreads(0)  # one thread per worker: workers already use every core
    transform = getattr(getattr(info.dataset, "dataset", None), "transform", None)
    if hasattr(transform, "reseed"):
        # info.seed = torch's per-worker seed: base seed (from the loader's generator) + id.
        transform.reseed(info.seed)


def _rank_world(distributed: bool) -> tuple[int, int]:
    if not distributed:
        return 0, 1
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("distributed=True needs torch.distributed to be initialised first")
    return dist.get_rank(), dist.get_world_size()


def _one_line(exc: SegkdError) -> SegkdError:
    """A SegkdError re-raised from a worker carries the worker's traceback; keep its message."""
    text = str(exc)
    if "Original Traceback" not in text:
        return exc
    last = text.strip().splitlines()[-1]
    return SegkdError(last.partition("SegkdError: ")[2] or last)


class InfiniteLoader:
    """Iterates batches forever, epoch after epoch (iteration-based training)."""

    def __init__(self, loader: DataLoader, sampler: Sampler) -> None:
        self.loader, self.sampler = loader, sampler
        self.epoch = 0
        self._it: Iterator[Batch] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return len(self.loader)

    def __iter__(self) -> InfiniteLoader:
        return self

    def __next__(self) -> Batch:
        while True:
            if self._it is None:
                if isinstance(self.sampler, DistributedSampler):
                    self.sampler.set_epoch(self.epoch)  # a fresh shuffle on every process
                self._it = iter(self.loader)
            try:
                return next(self._it)
            except SegkdError as exc:
                raise _one_line(exc) from None
            except StopIteration:
                self._it = None
                self.epoch += 1


def make_train_loader(
    dataset: SegDataset,
    preprocess: PreprocessSpec,
    batch_size: int,
    num_workers: int,
    seed: int,
    distributed: bool,
) -> InfiniteLoader:
    """Shuffled, drop_last batches of (BxHxWx3 uint8, BxHxW uint8) forever, for
    `NetworkInput`.

    The dataset's transform must produce one size (a crop) so batches stack.
    """
    rank, world = _rank_world(distributed)
    if batch_size < 1:
        raise SegkdError(f"batch size must be >= 1, got {batch_size}")
    if len(dataset) < batch_size * world:
        raise SegkdError(
            f"{dataset.name} has {len(dataset)} samples, fewer than one batch "
            f"({batch_size} x {world} processes)"
        )
    # Independent, reproducible streams per (seed, rank).
    stream = np.random.SeedSequence([int(seed), rank]).generate_state(2, dtype=np.uint64)
    generator = torch.Generator().manual_seed(int(stream[0] >> 1))
    wrapped = PixelDataset(dataset, preprocess)
    sampler: Sampler
    if distributed:
        sampler = DistributedSampler(
            wrapped, num_replicas=world, rank=rank, shuffle=True, seed=int(seed), drop_last=True
        )
    else:
        sampler = RandomSampler(wrapped, generator=generator)
    transform: Any = getattr(dataset, "transform", None)
    if num_workers == 0 and hasattr(transform, "reseed"):
        transform.reseed(int(stream[1]))
    loader = DataLoader(
        wrapped,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_pixels,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        generator=generator,
        persistent_workers=num_workers > 0,
    )
    return InfiniteLoader(loader, sampler)


class ShardSampler(Sampler[int]):
    """Indices rank, rank + world, ...: every sample seen exactly once across processes.

    (DistributedSampler pads with repeats, which would count those images twice in mIoU.)
    """

    def __init__(self, length: int, rank: int, world: int) -> None:
        self.length, self.rank, self.world = length, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world))


class EvalLoader:
    """A DataLoader whose worker errors surface as one-line SegkdErrors."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.sampler = loader.sampler
        self.dataset = loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        it = iter(self.loader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            except SegkdError as exc:
                raise _one_line(exc) from None
            yield batch


def make_eval_loader(
    dataset: SegDataset,
    preprocess: PreprocessSpec,
    batch_size: int = 1,
    num_workers: int = 0,
    distributed: bool = False,
) -> EvalLoader:
    """(Bx3xHxW float32, BxHxW int64) batches in dataset order, each sample once.

    `list(loader.sampler)` gives the dataset indices in the order they arrive (for
    `dataset.sample_id`). Batches above 1 need images of one size (EvalTransform(size)).
    """
    rank, world = _rank_world(distributed)
    if batch_size < 1:
        raise SegkdError(f"batch size must be >= 1, got {batch_size}")
    wrapped = NormalizedDataset(dataset, preprocess)
    loader = DataLoader(
        wrapped,
        batch_size=batch_size,
        sampler=ShardSampler(len(wrapped), rank, world),
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        drop_last=False,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
    )
    return EvalLoader(loader)
