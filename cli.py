"""The `segkd` command: parses arguments and calls the stages; no logic of its own."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from runtime.errors import SegkdError
from runtime.sizes import parse_size

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Distil, export and run compact segmentation models (IDD + position distillation).",
)
# Tables stay readable when the output is piped or logged (rich would fall back to 80 columns).
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def _size(value: str | None, option: str) -> tuple[int, int] | None:
    return None if value is None else parse_size(value, option, minimum=32)


def _write_json(path: Path | None, data: Any) -> None:
    if path is not None:
        from runtime.atomic_io import write_json_atomic

        write_json_atomic(data, path)


@app.command()
def models(
    input_size: Annotated[str, typer.Option(help="HxW for the MAC count")] = "512x1024",
    num_classes: Annotated[int, typer.Option(min=1)] = 19,
    deep_stem: Annotated[
        bool, typer.Option(help="three-conv stem of the reference code bases")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also write the table as JSON")
    ] = None,
) -> None:
    """List every architecture with its parameter count and GMACs (aux head included)."""
    from distill.models.complexity import model_table

    size = parse_size(input_size, "--input-size", minimum=32)
    rows = model_table(size, num_classes=num_classes, deep_stem=deep_stem)
    stem = "deep stem" if deep_stem else "torchvision stem"
    table = Table(
        title=f"segkd models at {input_size}, {num_classes} classes, {stem}, aux head included"
    )
    for col in ("arch", "params (M)", "GMACs", "feat channels"):
        table.add_column(col, justify="left" if col == "arch" else "right")
    for r in rows:
        table.add_row(
            r["arch"], f"{r['params_m']:.2f}", f"{r['gmacs']:.1f}", str(r["feat_channels"])
        )
    console.print(table)
    _write_json(json_out, rows)


@app.command()
def train(
    data: Annotated[
        str,
        typer.Option(
            help="dataset SPEC: synthetic, cityscapes:PATH, voc:PATH, ade20k:PATH, folder:PATH"
        ),
    ] = "synthetic",
    model: Annotated[str, typer.Option(help="architecture, see `segkd models`")] = "pspnet_r18",
    out: Annotated[Path, typer.Option(help="output folder for checkpoints and logs")] = Path(
        "runs/train"
    ),
    iters: Annotated[int | None, typer.Option(help="training iterations [dataset default]")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="per-process batch size [dataset default]")
    ] = None,
    crop_size: Annotated[
        str | None, typer.Option(help="training crop HxW [dataset default]")
    ] = None,
    export_size: Annotated[
        str | None, typer.Option(help="input size recorded for export HxW [dataset default]")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="base learning rate [dataset default]")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="[dataset default]")] = None,
    eval_interval: Annotated[
        int | None, typer.Option(help="validate + checkpoint every N iterations [iters/4]")
    ] = None,
    val_images: Annotated[
        int | None, typer.Option(help="cap on val images for periodic evaluation")
    ] = None,
    num_workers: Annotated[int, typer.Option(help="data loader workers per process")] = 1,
    seed: int = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    amp: Annotated[bool, typer.Option(help="mixed precision on CUDA")] = True,
    sync_bn: Annotated[bool, typer.Option(help="SyncBatchNorm under torchrun")] = False,
    deep_stem: bool = False,
    backbone_weights: Annotated[
        Path | None, typer.Option(help="local torchvision-format ImageNet ResNet state dict")
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue the run in --out from resume.pt")] = False,
    role: Annotated[
        str, typer.Option(help="teacher, student or model (recorded in the checkpoint)")
    ] = "model",
    readout_iters: Annotated[
        int, typer.Option(help="with --role teacher: fit and store the position readout (0: skip)")
    ] = 200,
) -> None:
    """Train a teacher or a baseline student (cross-entropy + auxiliary head)."""
    from distill.training import TrainConfig
    from distill.training import train as run_training

    cfg = TrainConfig(
        data=data, model=model, out=str(out), iters=iters, batch_size=batch_size,
        crop_size=_size(crop_size, "--crop-size"), export_size=_size(export_size, "--export-size"),
        lr=lr, weight_decay=weight_decay, eval_interval=eval_interval, val_images=val_images,
        num_workers=num_workers, seed=seed, device=device, amp=amp, sync_bn=sync_bn,
        deep_stem=deep_stem, backbone_weights=str(backbone_weights) if backbone_weights else None,
        resume=resume, role=role,
    )  # fmt: skip
    if role not in ("teacher", "student", "model"):
        raise SegkdError(f"--role must be teacher, student or model, got {role!r}")
    if readout_iters < 0:
        raise SegkdError(f"--readout-iters must be >= 0, got {readout_iters}")
    summary = run_training(cfg)
    console.print(
        f"[bold]{model}[/]: best val mIoU {summary['best_miou']:.4f} at iteration "
        f"{summary['best_iter']} -> {summary['checkpoints']['best']}"
    )
    if role == "teacher" and readout_iters > 0 and _is_main_process():
        from distill.training.distill_run import embed_teacher_readout

        report = embed_teacher_readout(cfg, out, readout_iters)
        console.print(
            f"position readout stored with the teacher: corr {report.get('corr', float('nan')):.3f}"
        )


def _is_main_process() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


@app.command()
def distill(
    teacher: Annotated[
        Path, typer.Option(help="teacher checkpoint (.pt) trained on the same classes")
    ],
    data: Annotated[str, typer.Option(help="dataset SPEC")] = "synthetic",
    student: Annotated[str, typer.Option(help="student architecture")] = "pspnet_r18",
    losses: Annotated[str, typer.Option(help="comma-separated: kd, idd, pid, cwd")] = "cwd,idd,pid",
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/distill"),
    w_kd: Annotated[float, typer.Option(help="weight of pixel-wise KD")] = 1.0,
    kd_temperature: float = 4.0,
    w_idd: Annotated[float, typer.Option(help="weight of inter-class distance distillation")] = 8.0,
    idd_distance: Annotated[str, typer.Option(help="euclidean or cosine")] = "euclidean",
    idd_scale: Annotated[str, typer.Option(help="normalize, adapter, both or none")] = "normalize",
    w_pid: Annotated[float, typer.Option(help="weight of position information distillation")] = 5.0,
    pid_mode: Annotated[
        str, typer.Option(help="teacher_readout or student_readout")
    ] = "teacher_readout",
    w_cwd: Annotated[float, typer.Option(help="weight of channel-wise distillation")] = 3.0,
    cwd_temperature: float = 4.0,
    readout_iters: Annotated[
        int, typer.Option(help="iterations to fit the teacher's position readout if not cached")
    ] = 200,
    iters: Annotated[int | None, typer.Option(help="[dataset default]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="[dataset default]")] = None,
    crop_size: Annotated[str | None, typer.Option(help="HxW [dataset default]")] = None,
    export_size: Annotated[str | None, typer.Option(help="HxW [dataset default]")] = None,
    lr: Annotated[float | None, typer.Option(help="[dataset default]")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="[dataset default]")] = None,
    eval_interval: Annotated[int | None, typer.Option(help="[iters/4]")] = None,
    val_images: Annotated[int | None, typer.Option(help="cap for periodic evaluation")] = None,
    num_workers: int = 1,
    seed: int = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    amp: bool = True,
    sync_bn: bool = False,
    deep_stem: bool = False,
    backbone_weights: Annotated[
        Path | None, typer.Option(help="local torchvision-format ResNet state dict")
    ] = None,
    resume: bool = False,
) -> None:
    """Distil a student from a frozen teacher with KD, IDD, position distillation (and CWD)."""
    from distill.distillation import DistillConfig
    from distill.training import TrainConfig
    from distill.training.distill_run import run_distillation

    dcfg = DistillConfig(
        losses=losses, w_kd=w_kd, kd_temperature=kd_temperature, w_idd=w_idd,
        idd_distance=idd_distance, idd_scale=idd_scale, w_pid=w_pid, pid_mode=pid_mode,
        w_cwd=w_cwd, cwd_temperature=cwd_temperature,
    )  # fmt: skip
    cfg = TrainConfig(
        data=data, model=student, out=str(out), iters=iters, batch_size=batch_size,
        crop_size=_size(crop_size, "--crop-size"), export_size=_size(export_size, "--export-size"),
        lr=lr, weight_decay=weight_decay, eval_interval=eval_interval, val_images=val_images,
        num_workers=num_workers, seed=seed, device=device, amp=amp, sync_bn=sync_bn,
        deep_stem=deep_stem, backbone_weights=str(backbone_weights) if backbone_weights else None,
        resume=resume, role="student",
    )  # fmt: skip
    if readout_iters < 1:
        raise SegkdError(f"--readout-iters must be >= 1, got {readout_iters}")
    summary = run_distillation(cfg, teacher, dcfg, readout_iters=readout_iters)
    console.print(
        f"[bold]{student}[/] distilled from {summary['teacher']['arch']}: best val mIoU "
        f"{summary['best_miou']:.4f} at iteration {summary['best_iter']} -> {summary['checkpoints']['best']}"
    )


@app.command()
def export(
    checkpoint: Annotated[
        Path, typer.Argument(help="student checkpoint (.pt) from segkd train/distill")
    ],
    out: Annotated[
        Path, typer.Option(help="export folder (model*.onnx, engines, export.json)")
    ] = Path("runs/export"),
    precision: Annotated[
        str, typer.Option(help="comma list of fp32, fp16, int8")
    ] = "fp32,fp16,int8",
    input_size: Annotated[
        str | None, typer.Option(help="HxW [the checkpoint's export size]")
    ] = None,
    calib_data: Annotated[
        str | None,
        typer.Option(help="dataset SPEC for INT8 calibration and verification [training data]"),
    ] = None,
    calib_images: Annotated[int, typer.Option(min=1, help="calibration images (train split)")] = 32,
    verify_images: Annotated[
        int, typer.Option(min=1, help="held-out images (val split) for parity/agreement")
    ] = 16,
    sample_seed: Annotated[
        int, typer.Option(min=0, help="seed of the calibration/verification image draw")
    ] = 0,
    output: Annotated[str, typer.Option(help="labels (argmax in the graph) or logits")] = "labels",
    label_dtype: Annotated[str, typer.Option(help="uint8 or int32 label map")] = "uint8",
    dynamic: Annotated[
        bool, typer.Option(help="dynamic batch/H/W instead of the static input size")
    ] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset (verified in the written file)")] = 17,
    simplify: Annotated[bool, typer.Option(help="simplify the graph with onnxslim")] = True,
    int8_method: Annotated[
        str, typer.Option(help="calibration: minmax, entropy or percentile")
    ] = "minmax",
    int8_variants: Annotated[
        str, typer.Option(help="tensorrt (symmetric Q/DQ), cpu (ORT-CPU-friendly)")
    ] = "tensorrt,cpu",
    require_trt: Annotated[
        bool, typer.Option(help="fail instead of skipping engines when TensorRT is absent")
    ] = False,
    min_agreement_fp16: Annotated[
        float, typer.Option(help="fail below this pixel agreement with PyTorch")
    ] = 0.99,
    min_agreement_int8: Annotated[
        float, typer.Option(help="fail below this pixel agreement (catches broken calibration)")
    ] = 0.90,
    trt_workspace: Annotated[float, typer.Option(help="TensorRT builder workspace (GiB)")] = 4.0,
    opt_level: Annotated[
        int, typer.Option(min=0, max=5, help="TensorRT builder optimisation level")
    ] = 3,
    engine_cache: Annotated[
        Path | None, typer.Option(help="TensorRT engine/timing cache folder")
    ] = None,
    weak_typing: Annotated[
        bool, typer.Option(help="TensorRT 10.x: let the builder choose fp16/int8 per layer")
    ] = False,
    trt_max_batch: Annotated[
        int, typer.Option(min=1, help="TensorRT profile's largest batch (dynamic exports)")
    ] = 1,
    trt_verbose: Annotated[
        bool, typer.Option(help="TensorRT builder log at verbose level")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="copy export.json here too")
    ] = None,
) -> None:
    """PyTorch -> verified ONNX (fp32) -> fp16 and INT8 Q/DQ ONNX -> TensorRT engines."""
    from export.api import Tolerances, export_checkpoint, format_summary
    from export.tensorrt_engine import TrtOptions

    trt = TrtOptions(
        workspace_gib=trt_workspace, optimization_level=opt_level, cache_dir=engine_cache,
        weak_typing=weak_typing, max_batch=trt_max_batch, verbose=trt_verbose,
    )  # fmt: skip
    report = export_checkpoint(
        checkpoint, out, precisions=precision, input_size=input_size, calib_data=calib_data,
        calib_images=calib_images, verify_images=verify_images, sample_seed=sample_seed, output=output,
        label_dtype=label_dtype, dynamic=dynamic, opset=opset, simplify=simplify,
        int8_method=int8_method, int8_variants=int8_variants, require_trt=require_trt, trt=trt,
        tolerances=Tolerances(fp16_min_agreement=min_agreement_fp16, int8_min_agreement=min_agreement_int8),
        progress=lambda msg: err_console.print(f"[dim]{msg}[/]", highlight=False),
    )  # fmt: skip
    console.print(format_summary(report), highlight=False, markup=False)
    _write_json(json_out, report.manifest)


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Argument(help=".pt, .onnx, .engine or an export folder")],
    data: Annotated[str, typer.Option(help="dataset SPEC")] = "synthetic",
    split: Annotated[str, typer.Option(help="dataset split")] = "val",
    reference: Annotated[
        str | None, typer.Option(help="a second model scored on the same images (e.g. the .pt)")
    ] = None,
    max_drop: Annotated[
        float | None,
        typer.Option(help="fail (exit 3) if mIoU drops more than PTS points below --reference"),
    ] = None,
    max_images: Annotated[
        int | None, typer.Option(min=1, help="score only the first N images")
    ] = None,
    backend: Annotated[str, typer.Option(help="auto, onnxruntime, tensorrt or torch")] = "auto",
    device: Annotated[
        str, typer.Option(help="auto, cpu, cuda[:N] or tensorrt (ORT provider)")
    ] = "auto",
    precision: Annotated[
        str | None, typer.Option(help="artifact to pick from an export folder")
    ] = None,
    save_predictions: Annotated[
        Path | None, typer.Option(help="write label PNGs (dataset format) and overlays here")
    ] = None,
    convention: Annotated[
        str,
        typer.Option(
            help="logits: upsample logits bilinearly, then argmax (Cityscapes/mmseg); labels: "
            "argmax, then resize labels (deployment); auto: logits where the model has them"
        ),
    ] = "auto",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="write the results as JSON")
    ] = None,
) -> None:
    """mIoU, per-class IoU and pixel accuracy of a model on a dataset split."""
    if max_drop is not None and reference is None:
        raise SegkdError("--max-drop needs --reference (the model to compare against)")
    from pipeline.models import evaluate_on_dataset
    from runtime.evaluate import CONVENTIONS

    result = evaluate_on_dataset(
        model, data, split, max_images, backend, device, precision, save_predictions,
        convention=convention,
    )  # fmt: skip
    ref = None
    if reference is not None:  # scored the same way, or the drop would mix conventions
        ref = evaluate_on_dataset(
            reference, data, split, max_images, "auto", device, convention=result.convention
        )
    table = Table(
        title=f"segkd eval on {data} [{split}], {result.num_samples} images, "
        f"{result.convention} convention"
    )
    table.add_column("class")
    table.add_column("IoU", justify="right")
    if ref is not None:
        table.add_column("reference", justify="right")
    for name, iou in result.metrics.iou.items():
        row = [name, "-" if iou is None else f"{100 * iou:.2f}"]
        if ref is not None:
            r = ref.metrics.iou.get(name)
            row.append("-" if r is None else f"{100 * r:.2f}")
        table.add_row(*row)
    table.add_section()
    table.add_row("mIoU", f"{100 * result.miou:.2f}", *([f"{100 * ref.miou:.2f}"] if ref else []))
    table.add_row("pixel acc", f"{100 * result.metrics.pixel_acc:.2f}",
                  *([f"{100 * ref.metrics.pixel_acc:.2f}"] if ref else []))  # fmt: skip
    console.print(table)
    console.print(f"model: {result.model}")
    console.print(f"convention: {result.convention} ({CONVENTIONS[result.convention]})")
    payload: dict[str, Any] = {
        "model": str(model),
        "data": data,
        "split": split,
        **result.to_dict(),
    }
    drop = None
    if ref is not None:
        drop = 100 * (ref.miou - result.miou)
        payload["reference"] = {"model": str(reference), **ref.to_dict()}
        payload["drop_points"] = drop
        console.print(f"drop vs reference: {drop:+.2f} mIoU points")
    failed = max_drop is not None and drop is not None and drop > max_drop
    payload["max_drop"], payload["passed"] = max_drop, (None if max_drop is None else not failed)
    _write_json(json_out, payload)
    if failed:
        err_console.print(
            f"[red]FAIL:[/] mIoU drop {drop:.2f} points exceeds --max-drop {max_drop}"
        )
        raise typer.Exit(3)


@app.command()
def bench(
    models: Annotated[
        list[str], typer.Argument(help="one or more .pt / .onnx / .engine / export folders")
    ],
    backend: Annotated[
        str, typer.Option(help="comma list: auto, onnxruntime, tensorrt, torch")
    ] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda[:N] or tensorrt")] = "auto",
    precision: Annotated[
        str | None, typer.Option(help="artifact to pick from an export folder")
    ] = None,
    iters: Annotated[int, typer.Option(min=1)] = 50,
    warmup: Annotated[int, typer.Option(min=0)] = 10,
    batch: Annotated[int, typer.Option(min=1)] = 1,
    frame_size: Annotated[
        str, typer.Option(help="HxW of the synthetic camera frame")
    ] = "1024x2048",
    threads: Annotated[
        int | None, typer.Option(min=1, help="ONNX Runtime intra-op threads")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="write the results as JSON")
    ] = None,
) -> None:
    """Latency (mean, p50, p90, p99) and FPS, split into pre-, inference and post-processing."""
    from tqdm import tqdm

    from pipeline.models import open_model
    from runtime.bench import benchmark, format_table

    size = parse_size(frame_size, "--frame-size", minimum=16)
    backends = [b.strip() for b in backend.split(",") if b.strip()]
    results = []
    for m in models:
        for b in backends:
            with open_model(m, b, device, precision, threads) as seg:
                bar = tqdm(
                    total=iters + warmup,
                    desc=f"bench {Path(m).name} [{seg.backend_name}]",
                    leave=False,
                )
                res = benchmark(
                    seg, frame_size=size, iters=iters, warmup=warmup, batch=batch,
                    on_iteration=lambda done, total, bar=bar: bar.update(1),
                )  # fmt: skip
                bar.close()
                results.append(res)
    console.print(format_table(results))
    _write_json(json_out, [r.to_dict() for r in results])


@app.command()
def demo(
    source: Annotated[
        str, typer.Argument(help="video file, camera index, image folder or stream URL")
    ],
    model: Annotated[str, typer.Option(help=".pt, .onnx, .engine or an export folder")],
    out: Annotated[
        Path | None, typer.Option(help="output video (.mp4) or folder for images")
    ] = None,
    backend: str = "auto",
    device: str = "auto",
    precision: str | None = None,
    show: Annotated[
        bool, typer.Option(help="also show frames in a window (needs a display)")
    ] = False,
    max_frames: Annotated[int | None, typer.Option(min=1)] = None,
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="overlay opacity")] = 0.5,
    fps: Annotated[float | None, typer.Option(min=1.0, help="output frame rate [source's]")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="write the run's stats as JSON")
    ] = None,
) -> None:
    """Segment a video, camera, image folder or stream; write an annotated video or images."""
    from pipeline.models import open_model
    from runtime.demo import run_demo

    if out is None and not show:
        raise SegkdError("demo needs --out FILE.mp4 (or a folder) and/or --show")
    with open_model(model, backend, device, precision) as seg:
        stats = run_demo(source, seg, out, show=show, max_frames=max_frames, alpha=alpha, fps=fps)
    console.print(
        f"{stats.frames_out}/{stats.frames_in} frames, {stats.fps:.1f} FPS sustained, "
        f"{stats.infer_ms_mean:.1f} ms inference, stopped by {stats.stopped}"
        + (f" -> {out}" if out else "")
    )
    _write_json(json_out, stats.to_dict())


@app.command()
def pipeline(
    out: Annotated[
        Path, typer.Option(help="output folder (re-running resumes / skips finished steps)")
    ] = Path("runs/pipeline"),
    config: Annotated[
        Path | None, typer.Option(help="YAML or TOML file holding any stage's options")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override one option: section.key=value (repeatable)"),
    ] = None,
    data: Annotated[str | None, typer.Option(help="dataset SPEC (overrides the config)")] = None,
    teacher: Annotated[
        Path | None, typer.Option(help="use this teacher checkpoint instead of training one")
    ] = None,
    max_drop: Annotated[
        float | None,
        typer.Option(help="fail if any artifact loses more mIoU points than this vs PyTorch"),
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda[:N]")] = None,
) -> None:
    """Teacher -> IDD-distilled student -> ONNX/INT8/TensorRT -> eval -> bench -> report."""
    from pipeline.config import load_config
    from pipeline.run import run_pipeline

    overrides = list(set_ or [])
    for key, value in (
        ("data", data),
        ("teacher.checkpoint", teacher),
        ("eval.max_drop", max_drop),
        ("device", device),
    ):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(config, overrides)
    report = run_pipeline(
        cfg, out, log=lambda msg: console.print(msg, highlight=False, markup=False)
    )
    s, b = report["student"], report["baseline"]
    line = f"distilled {s['arch']}: {100 * s['val_miou']:.2f} mIoU"
    if b:
        line += f" (student alone {100 * b['val_miou']:.2f}, teacher {100 * report['teacher']['val_miou']:.2f})"
    console.print(line)
    console.print(f"report: {out / 'report.md'}")


def _fail(message: str, code: int) -> NoReturn:
    """Print ONE `error: ...` line on stderr and exit with `code`."""
    from rich.markup import escape
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):  # a bar left open would share the line
        bar.close()
    text = " ".join(line.strip() for line in message.strip().splitlines())
    # escape: a path like "a[/]b" in the message is text, not rich markup.
    err_console.print(f"[red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # OpenCV and its ffmpeg log their own lines for a file we report in one `error:` line;
    # set these variables (e.g. OPENCV_LOG_LEVEL=WARNING) to see them again.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "FATAL")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    try:
        # standalone_mode=False: a command's typer.Exit(code) comes back as the return value.
        code = app(standalone_mode=False)
    except SegkdError as e:
        _fail(str(e), 2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except OSError as e:  # disk full, permission denied, read-only folder: the user's to fix
        if e.filename is None:
            raise
        _fail(f"{e.filename}: {e.strerror or e}", 2)
    except Exception as e:  # click usage errors etc. arrive here with standalone_mode=False
        # typer >= 0.20 vendors click (typer._click), so match click's exceptions by shape.
        format_message = getattr(e, "format_message", None)
        if callable(format_message) and isinstance(getattr(e, "exit_code", None), int):
            if type(e).__name__ == "NoArgsIsHelpError":  # the help (typer may have printed it)
                text = format_message()
                if text:
                    print(text, file=sys.stderr)
                sys.exit(e.exit_code)
            _fail(format_message(), e.exit_code)
        if type(e).__name__ == "Abort":
            sys.exit(130)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
