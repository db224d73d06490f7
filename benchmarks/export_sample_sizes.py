"""What the pipeline's export costs with the old pipeline sample sizes (16 calibration,
8 verification images) and with the export's defaults it now takes (32/16).

The pipeline's student (DDRNet-23-slim) at the synthetic default's size, every precision;
briefly trained so INT8 has real margins, gates off (this measures time, not accuracy).
One process, both settings alternated, so the shared machine's load affects both alike.

    nice -n 10 python benchmarks/export_sample_sizes.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.schema.export import EXPORT
from core.schema.tolerances import Tolerances
from export.api import export_checkpoint
from runtime.machine import cpu_info
from tests.export.tiny_student import train_tiny

OLD_PIPELINE = {"calib_images": 16, "verify_images": 8}  # pipeline/config.py before #26
DATA = "synthetic:size=128x256"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    now = {k: EXPORT.default(k) for k in OLD_PIPELINE}
    cpu = cpu_info()
    print(f"{cpu['model']}, {cpu['cores']} cores, load {os.getloadavg()[0]:.2f}, "
          f"python {platform.python_version()}, flags: {' '.join(cpu['flags'])}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = train_tiny(Path(tmp) / "s.pt", arch="ddrnet23_slim", steps=20)
        times: dict[str, list[float]] = {"old": [], "now": []}
        for i in range(args.repeats):
            for name, sizes in (("old", OLD_PIPELINE), ("now", now)):
                start = time.perf_counter()
                export_checkpoint(
                    ckpt, Path(tmp) / f"{name}{i}", input_size="128x256", calib_data=DATA,
                    tolerances=Tolerances(fp16_min_agreement=0.0, int8_min_agreement=0.0),
                    build_engines=False, **sizes,
                )  # fmt: skip
                times[name].append(time.perf_counter() - start)
    for name, sizes in (("old", OLD_PIPELINE), ("now", now)):
        print(f"{name} {sizes}: {min(times[name]):.1f} s (best of {args.repeats})")
    print(f"ratio now/old: {min(times['now']) / min(times['old']):.2f}")


if __name__ == "__main__":
    main()
