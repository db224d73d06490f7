"""Peak RSS of `segkd export` against the number of INT8 calibration images.

onnxruntime's histogram calibrators keep every intermediate tensor of one
`collect_data` call; segkd feeds them a few images per call and reads each image only
when it is calibrated on, so peak memory should not grow with --calib-images.

For each count, a measuring child process runs the real CLI (`python cli.py export`)
as its only child and reports `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`, the
peak resident set of that export. The checkpoint is a randomly initialised
pspnet_r18 (memory does not depend on the weights), calibrated and verified on
synthetic scenes at --size, INT8 TensorRT variant only (the CPU variant repeats the
same calibration).

Run from the repository root:
    OMP_NUM_THREADS=1 python benchmarks/calib_memory.py [--size 512x1024]
        [--counts 32,256] [--method entropy] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))


def make_random_checkpoint(path: Path, size: tuple[int, int], data: str) -> Path:
    import torch

    from core.preprocess import PreprocessSpec
    from distill.checkpoint import atomic_torch_save, make_checkpoint
    from distill.data import build_dataset
    from distill.models import build_model

    torch.manual_seed(0)
    labels = build_dataset(data, "val").labels
    model = build_model("pspnet_r18", labels.num_classes, aux=False).eval()
    ckpt = make_checkpoint(
        model=model,
        arch="pspnet_r18",
        model_kwargs=model.model_kwargs,
        labels=labels,
        preprocess=PreprocessSpec(input_size=size),
        config={"data": data},
    )
    atomic_torch_save(ckpt, path)
    return path


def measure(argv: list[str]) -> None:
    """Child mode: run one export as our only child; print its peak RSS (KiB) and seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-6:]
    print(
        json.dumps({"rc": proc.returncode, "peak_kib": peak_kib, "seconds": seconds, "tail": tail})
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="512x1024")
    ap.add_argument("--counts", default="32,256")
    ap.add_argument("--method", default="entropy")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--measure", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        measure(args.measure)
        return

    from runtime.machine import describe_cpu
    from runtime.sizes import parse_size

    size = parse_size(args.size, "--size", 32)
    counts = [int(c) for c in args.counts.split(",")]
    data = f"synthetic:size={size[0]}x{size[1]},train={max(counts)},val=2"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="segkd-calibmem-") as tmp:
        ckpt = make_random_checkpoint(Path(tmp) / "random.pt", size, data)
        for n in counts:
            cli = [
                sys.executable, str(ROOT / "cli.py"), "export", str(ckpt),
                "--out", str(Path(tmp) / f"export-{n}"), "--precision", "int8",
                "--int8-variants", "tensorrt", "--int8-method", args.method,
                "--calib-data", data, "--calib-images", str(n), "--verify-images", "1",
                "--min-agreement-int8", "0", "--no-simplify",
            ]  # fmt: skip
            out = subprocess.run(
                [sys.executable, __file__, "--measure", *cli],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row = {"calib_images": n, "peak_rss_mib": round(row["peak_kib"] / 1024, 1), **row}
            print(json.dumps(row), flush=True)
            if row["rc"] != 0:
                raise SystemExit(f"export with {n} images failed: {row['tail']}")
            rows.append(row)
    first, last = rows[0], rows[-1]
    result = {
        "size": list(size),
        "method": args.method,
        "cpu": describe_cpu(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "rows": [{k: r[k] for k in ("calib_images", "peak_rss_mib", "seconds")} for r in rows],
        "ratio": round(last["peak_rss_mib"] / first["peak_rss_mib"], 3),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
