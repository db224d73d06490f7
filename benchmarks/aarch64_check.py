"""The torch-free runtime on aarch64, run under qemu-user emulation (docs/JETSON.md).

Runs the pieces of `segkd build` / `bench` / `demo` that need no inference backend on an
export folder: every runtime module imports (without torch or onnxruntime), the build
plan and the static TensorRT check, the reference set and the runtime preprocessing of
its images, machine facts from an Orin /proc/cpuinfo file, the Jetson readers on the
fixture trees, the camera pipeline strings, and `segkd build`'s one-line refusal where
TensorRT is absent. With --save it writes the preprocessed arrays; with --compare it
checks them against a file written by another machine (x86 vs aarch64 OpenCV/numpy).
No backend runs: onnxruntime's aarch64 wheel crashes under qemu-user, and TensorRT
needs the Jetson.

    python benchmarks/aarch64_check.py FOLDER --save host.npz          # on the host
    qemu-aarch64 -L ROOT ROOT/usr/bin/python3.11 benchmarks/aarch64_check.py FOLDER \
        --compare host.npz                                              # emulated
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import platform
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--save", type=Path)
    ap.add_argument("--compare", type=Path)
    args = ap.parse_args()
    import cv2

    import core
    import runtime

    for pkg in (core, runtime):
        for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            importlib.import_module(m.name)
    heavy = sorted({n.split(".")[0] for n in sys.modules} & {"torch", "onnxruntime", "tensorrt"})
    print(f"{platform.machine()}, Python {platform.python_version()}, numpy {np.__version__}, "
          f"cv2 {cv2.__version__}: every core and runtime module imports; heavy modules loaded: {heavy}")  # fmt: skip

    from core.preprocess import PreprocessSpec
    from runtime.camera import gstreamer_in_build, parse_live_source
    from runtime.engine_folder import plan_builds, static_check
    from runtime.jetson_facts import describe_run, power_meter, read_jetson_facts
    from runtime.machine import cpu_info, parse_cpuinfo
    from runtime.metadata import read_export_json
    from runtime.reference_set import read_reference_set

    print("cpuinfo (fixture):", parse_cpuinfo((FIXTURES / "cpuinfo/orin_arm64.txt").read_text()))
    print("cpu_info (this machine):", cpu_info())
    for board in ("orin_nano", "agx_orin"):
        facts = read_jetson_facts(FIXTURES / "jetson" / board)
        meter = power_meter(FIXTURES / "jetson" / board, interval_s=0.001)
        assert facts is not None and meter is not None
        meter.start()
        print(board, "->", describe_run(facts.to_dict(), meter.stop(frames=10)))
    csi = parse_live_source("csi://0?width=1280&height=720&fps=60")
    print("csi://0 ->", csi.target if csi else None)
    print("this cv2 has GStreamer:", gstreamer_in_build(cv2.getBuildInformation()))

    export = read_export_json(args.folder)
    plan = plan_builds(args.folder, export)
    for step in plan:
        print(f"plan: {step.onnx_file} -> {step.engine_file} (gate {step.min_agreement}), "
              f"static check {static_check(args.folder, step)}")  # fmt: skip
    pre = PreprocessSpec.from_dict(export["preprocess"])
    refs = read_reference_set(args.folder / "reference.npz")
    inputs = np.concatenate([pre.to_input(r.image, "RGB")[None] for r in refs])
    frame = cv2.resize(refs[0].image, (refs[0].image.shape[1] * 3, refs[0].image.shape[0] * 2))
    applied, _ = pre.float_input().apply(frame, input_order="RGB")  # resize + normalise
    print(f"reference set: {len(refs)} images, network inputs {inputs.shape} {inputs.dtype}")
    if args.save:
        np.savez_compressed(args.save, inputs=inputs, applied=applied)
    if args.compare:
        with np.load(args.compare) as other:
            same_in = np.array_equal(other["inputs"], inputs)
            diff = float(np.abs(other["applied"].astype(np.float64) - applied).max())
        print(f"vs {args.compare}: network inputs identical: {same_in}; "
              f"resize+normalise max |diff| {diff:.3g}")  # fmt: skip

    import cli

    sys.argv = ["segkd", "build", str(args.folder)]
    try:
        cli.main()
    except SystemExit as e:
        print("segkd build exit code:", e.code)


if __name__ == "__main__":
    main()
