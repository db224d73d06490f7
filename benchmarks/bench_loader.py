"""Training loader throughput at Cityscapes geometry: images/s per worker and for 1..N
workers, before (float32 images, int64 labels normalised on the host) and after (uint8
images and labels; the float cast and normalisation move to the device).

    python benchmarks/bench_loader.py --images 8 --batches 6 --max-workers 2 \
        --json docs/results/loader_cpu.json

Each sample is what the trainer's loader does for Cityscapes: decode a 1024x2048 image
(PNG through the cityscapes:PATH reader; JPEG through folder:PATH, the same pixels) and its
label PNG, then TrainTransform: random scale 0.5-2.0, 1024x1024 crop, flip, jitter. The
fixture is written first, in the dataset's own layouts, from the synthetic street-like
scenes (smoother than noise, so PNG sizes and decode times are photo-like). Both paths run
interleaved in one process, so the before/after ratio holds even on a shared machine;
the absolute figures depend on its load (printed with the CPU flags).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from core.labels import CITYSCAPES
from core.preprocess import PreprocessSpec
from distill.data import build_dataset
from distill.data import loader as loaders
from distill.data.cityscapes import TRAIN_TO_LABEL_ID
from distill.data.transforms import TrainTransform
from runtime.machine import describe_cpu

SIZE = (1024, 2048)
CROP = (1024, 1024)
BATCH = 2
PATHS = {  # name: (dataset wrapper, collate): the two wire formats
    "before (float32 + int64)": (loaders.NormalizedDataset, loaders.collate),
    "after (uint8 + uint8)": (loaders.PixelDataset, loaders.collate_pixels),
}


def write_fixture(root: Path, n: int) -> dict[str, str]:
    """n 1024x2048 scenes as cityscapes:ROOT/cs (PNG) and folder:ROOT/jpeg (JPEG q95)."""
    scenes = build_dataset(f"synthetic:size={SIZE[0]}x{SIZE[1]},train={n}", "train")
    label_ids = np.full(256, 0, dtype=np.uint8)  # train id -> labelId; ignore -> 0
    label_ids[: len(TRAIN_TO_LABEL_ID)] = TRAIN_TO_LABEL_ID
    for i in range(n):
        image, train_ids = scenes[i]
        bgr = image[:, :, ::-1]
        stem = f"bench_000000_{i:06d}"
        cs_img = root / "cs" / "leftImg8bit" / "train" / "bench" / f"{stem}_leftImg8bit.png"
        cs_lab = root / "cs" / "gtFine" / "train" / "bench" / f"{stem}_gtFine_labelIds.png"
        for p in (cs_img, cs_lab, root / "jpeg" / "images" / "x", root / "jpeg" / "masks" / "x"):
            p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(cs_img), bgr)
        cv2.imwrite(str(cs_lab), label_ids[train_ids])
        cv2.imwrite(
            str(root / "jpeg" / "images" / f"{stem}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95]
        )
        cv2.imwrite(str(root / "jpeg" / "masks" / f"{stem}.png"), train_ids)
    stems = "\n".join(f"bench_000000_{i:06d}" for i in range(n))
    (root / "jpeg" / "splits").mkdir()
    (root / "jpeg" / "splits" / "train.txt").write_text(stems)
    (root / "jpeg" / "classes.txt").write_text("\n".join(CITYSCAPES.names))
    return {"png": f"cityscapes:{root / 'cs'}", "jpeg": f"folder:{root / 'jpeg'}"}


def make_loader(spec: str, path: str, workers: int, seed: int) -> DataLoader:
    """The trainer's loader (make_train_loader's settings) with one of the two wire formats."""
    dataset = build_dataset(spec, "train", transform=TrainTransform(CROP, scale_range=(0.5, 2.0)))
    wrap, collate = PATHS[path]
    dataset.transform.reseed(seed)
    return DataLoader(
        wrap(dataset, PreprocessSpec(input_size=(512, 1024))),
        batch_size=BATCH,
        sampler=RandomSampler(range(len(dataset)), generator=torch.Generator().manual_seed(seed)),
        num_workers=workers,
        collate_fn=collate,
        drop_last=True,
        worker_init_fn=loaders._seed_worker if workers else None,  # the trainer's seeding
        persistent_workers=workers > 0,
    )


def images_per_s(loader: DataLoader, batches: int) -> tuple[float, float, int]:
    """(images per wall second and per CPU second of this process over `batches` batches
    after one warm-up batch, bytes of one batch). With 0 workers the CPU-second figure is
    one worker's throughput on a core of its own, the figure a shared machine's load
    disturbs least; with workers this process only waits, and wall time is the figure."""
    it = iter(_cycle(loader))
    images, labels = next(it)  # workers started, first batch out of the way
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        images, labels = next(it)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    wire = images.numel() * images.element_size() + labels.numel() * labels.element_size()
    return batches * BATCH / wall, batches * BATCH / max(cpu, 1e-9), wire


def _cycle(loader: DataLoader):  # type: ignore[no-untyped-def]
    while True:
        yield from loader


def run(
    images: int, batches: int, min_workers: int, max_workers: int, repeats: int
) -> dict[str, Any]:
    load_before = os.getloadavg()
    cv2.setNumThreads(1)  # what a loader worker does (loader._seed_worker sets 0 there)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        specs = write_fixture(Path(tmp), images)
        rows = []
        for fmt, spec in specs.items():
            for workers in range(min_workers, max_workers + 1):
                for r in range(repeats):  # interleaved: both paths see the same load
                    for path in PATHS:
                        loader = make_loader(spec, path, workers, seed=r)
                        ips, per_cpu, wire = images_per_s(loader, batches)
                        rows.append(
                            {"format": fmt, "workers": workers, "path": path, "repeat": r,
                             "images_per_s": ips, "images_per_cpu_s": per_cpu,
                             "batch_bytes": wire}
                        )  # fmt: skip
                        print(
                            f"{fmt:4} workers={workers} {path:26} {ips:6.2f} img/s "
                            f"({per_cpu:.2f} per CPU-s of this process)", flush=True
                        )  # fmt: skip
    return {
        "command": "python benchmarks/bench_loader.py "
        f"--images {images} --batches {batches} --min-workers {min_workers} "
        f"--max-workers {max_workers} --repeats {repeats}",
        "cpu": describe_cpu(),
        "cpus_available": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "load_before": load_before,
        "geometry": {"image": list(SIZE), "crop": list(CROP), "scale": [0.5, 2.0], "batch": BATCH},
        "rows": rows,
        "summary": summarise(rows),
    }


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median images/s per (format, workers, path) and the after/before ratio. With 0
    workers the figure is per CPU-second of the process (one worker's rate), else per wall
    second."""
    out = []
    for fmt, workers in sorted({(r["format"], r["workers"]) for r in rows}):
        figure = "images_per_cpu_s" if workers == 0 else "images_per_s"
        med, wire = {}, {}
        for path in PATHS:
            mine = [
                r for r in rows if (r["format"], r["workers"], r["path"]) == (fmt, workers, path)
            ]
            med[path] = float(np.median([r[figure] for r in mine]))
            wire[path] = round(mine[0]["batch_bytes"] / 2**20, 1)
        (before, after), (wire_before, wire_after) = med.values(), wire.values()
        out.append(
            {"format": fmt, "workers": workers, "figure": figure,
             "before_images_per_s": round(before, 2), "after_images_per_s": round(after, 2),
             "after_over_before": round(after / before, 3),
             # CPU the training process itself spends receiving one image from workers
             "main_ms_per_image_before": _main_ms(rows, fmt, workers, 0),
             "main_ms_per_image_after": _main_ms(rows, fmt, workers, 1),
             "batch_mib_before": wire_before, "batch_mib_after": wire_after}
        )  # fmt: skip
    return out


def _main_ms(rows: list[dict[str, Any]], fmt: str, workers: int, which: int) -> float | None:
    if workers == 0:
        return None  # the process does the work itself
    path = list(PATHS)[which]
    mine = [r for r in rows if (r["format"], r["workers"], r["path"]) == (fmt, workers, path)]
    return round(1e3 / float(np.median([r["images_per_cpu_s"] for r in mine])), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=8, help="fixture images (1024x2048)")
    ap.add_argument("--batches", type=int, default=6, help="timed batches per measurement")
    ap.add_argument("--min-workers", type=int, default=0, help="0: in this process")
    ap.add_argument("--max-workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    result = run(args.images, args.batches, args.min_workers, args.max_workers, args.repeats)
    result["load_after"] = os.getloadavg()
    for s in result["summary"]:
        print(
            f"{s['format']:4} {s['workers']} workers: before {s['before_images_per_s']} img/s, "
            f"after {s['after_images_per_s']} img/s (x{s['after_over_before']}); "
            f"batch {s['batch_mib_before']} -> {s['batch_mib_after']} MiB"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
