"""The `segkd` command: parses arguments and calls the stages; no logic of its own."""

from __future__ import annotations

import errno
import inspect
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from core.errors import SegkdError
from core.numbers import finite
from runtime.paths import Output, check_model_arg, guard_outputs, model_paths
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


def _spec_folder(spec: str | None) -> Path | None:
    """The folder of a `KIND:PATH` dataset spec (None for synthetic): an input to protect.
    A bad spec is refused here, before anything is written, in the dataset's own words."""
    if spec is None:
        return None
    from distill.data.spec import parse_dataset_spec

    return parse_dataset_spec(spec).path


# What `segkd train`/`distill` write into --out, and `segkd pipeline` into its --out: an
# input there under one of these names would be overwritten (others are left alone).
TRAIN_WRITES = ("best.pt", "last.pt", "resume.pt", "summary.json", "metrics.jsonl", "*.tmp")
PIPELINE_WRITES = ("teacher", "baseline*", "student*", "export", "qat", "export-qat", "eval",
                   "bench", "figures", "report.*", ".steps")  # fmt: skip


def _write_json(path: Path | None, data: Any) -> None:
    if path is not None:
        from core.atomic_io import write_json_atomic

        write_json_atomic(data, path)


@app.command()
def models(
    input_size: Annotated[str, typer.Option(help="HxW for the MAC count")] = "512x1024",
    num_classes: Annotated[
        int, typer.Option(min=1, max=254, help="at most 254: mask value 255 is the ignore id")
    ] = 19,
    deep_stem: Annotated[
        bool, typer.Option(help="three-conv stem of the reference code bases")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also write the table as JSON")
    ] = None,
) -> None:
    """List every architecture with its parameter count and GMACs, training-only heads
    (aux, boundary) included and as exported (deploy)."""
    from distill.models.complexity import model_table

    guard_outputs([Output("--json", json_out)], {})
    size = parse_size(input_size, "--input-size", minimum=32)
    rows = model_table(size, num_classes=num_classes, deep_stem=deep_stem)
    stem = "deep stem" if deep_stem else "torchvision stem"
    table = Table(title=f"segkd models at {input_size}, {num_classes} classes, ResNets with {stem}")
    cols = ("arch", "params (M)", "GMACs", "deploy params (M)", "deploy GMACs", "feat channels")
    for col in cols:
        table.add_column(col, justify="left" if col == "arch" else "right")
    for r in rows:
        table.add_row(
            r["arch"],
            f"{r['params_m']:.2f}",
            f"{r['gmacs']:.1f}",
            f"{r['deploy_params_m']:.2f}",
            f"{r['deploy_gmacs']:.1f}",
            str(r["feat_channels"]),
        )
    console.print(table)
    _write_json(json_out, rows)


# Options `segkd train` and `segkd distill` share: the CLI type and help live here, the
# default is TrainConfig's (read without torch), so the two cannot drift apart.
_TRAIN_OPTIONS: dict[str, tuple[Any, str]] = {
    "data": (str, "dataset SPEC: synthetic, cityscapes:PATH, voc:PATH, ade20k:PATH, folder:PATH"),
    "iters": (int | None, "training iterations (dataset default)"),
    "batch_size": (int | None, "per-process batch size (dataset default)"),
    "crop_size": (str | None, "training crop HxW (dataset default)"),
    "export_size": (str | None, "deploy input size HxW, also validated at (dataset default)"),
    "lr": (float | None, "base learning rate (dataset default)"),
    "weight_decay": (float | None, "(dataset default)"),
    "eval_interval": (int | None, "validate + checkpoint every N iterations (default: iters/4)"),
    "val_images": (
        int | None,
        "val images (spread over the split) every evaluation scores (default: all)",
    ),
    "num_workers": (
        int | None,
        "data loader workers per process (default: this process's share of the CPUs, less one)",
    ),
    "seed": (int, "random seed (the same on every process; data order per process)"),
    "device": (str, "auto, cpu, cuda or cuda:N"),
    "amp": (bool, "mixed precision on CUDA"),
    "amp_dtype": (str, "float16 (with GradScaler) or bfloat16 (GPUs that have it; no scaler)"),
    "max_skips": (int, "fp16 AMP: stop after this many consecutive non-finite steps skipped"),
    "dist_timeout": (float, "under torchrun: seconds a rank waits for the others, then stops"),
    "sync_bn": (bool, "SyncBatchNorm under torchrun"),
    "deep_stem": (bool, "three-conv stem of the reference code bases"),
    "backbone_weights": (
        Path | None,
        "local ImageNet weights: torchvision ResNet, or the authors' DDRNet/PIDNet file",
    ),
    "resume": (bool, "continue the run in --out from resume.pt"),
    "loss": (str, "supervised loss: ce, or ohem (the DDRNet/PIDNet authors' recipe)"),
    "ohem_threshold": (float, "ohem: pixels below this true-class probability count"),
    "ohem_min_kept": (int, "ohem: the hardest pixels always kept per process batch"),
    "class_weights": (str | None, "ohem: per-class CE weights, e.g. cityscapes (the authors')"),
    "ohem_align": (bool, "ohem: align_corners of the loss's upsampling (PIDNet: on)"),
}


def _with_train_options(
    model_option: str,
    out_default: str,
    model_help: str,
    extra: dict[str, tuple[Any, str, Any]] | None = None,
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Append `extra` (name: type, help, default), --MODEL_OPTION, --out and the TrainConfig
    options to a command that takes them as **options; typer reads the signature built here."""
    from distill.training.config import TrainConfig

    defaults = TrainConfig()
    specs = {
        **(extra or {}),
        model_option: (str, model_help, defaults.model),
        "out": (Path, "output folder for checkpoints and logs", Path(out_default)),
        **{k: (t, h, getattr(defaults, k)) for k, (t, h) in _TRAIN_OPTIONS.items()},
    }

    def wrap(command: Callable[..., None]) -> Callable[..., None]:
        sig = inspect.signature(command, eval_str=True)  # cli.py has string annotations
        own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        added = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[kind, typer.Option(help=text)],
            )
            for name, (kind, text, default) in specs.items()
        ]
        command.__signature__ = sig.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
        return command

    return wrap


# The DistillConfig options of `segkd distill`. Their CLI default is None, meaning "the
# dataclass's default", so behaviour cannot drift; the help shows that default, read from
# distill/distillation.py's source (importing it would import torch).
_DISTILL_OPTIONS: dict[str, tuple[Any, str]] = {
    "losses": (str | None, "comma-separated: kd, idd, pid, cwd"),
    "w_kd": (float | None, "weight of pixel-wise KD"),
    "kd_temperature": (float | None, "KD softmax temperature"),
    "w_idd": (float | None, "weight of inter-class distance distillation"),
    "idd_distance": (str | None, "euclidean or cosine"),
    "idd_scale": (str | None, "normalize, adapter, both or none"),
    "w_pid": (float | None, "weight of position information distillation"),
    "pid_mode": (str | None, "teacher_readout or student_readout"),
    "w_cwd": (float | None, "weight of channel-wise distillation"),
    "cwd_temperature": (float | None, "CWD softmax temperature"),
}


def literal_dataclass_defaults(module: str, cls: str) -> dict[str, Any]:
    """The literal field defaults of dataclass `cls` in `module`, read from its source
    without importing the module (fields whose default is not a literal are left out)."""
    import ast
    import contextlib
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return {}
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    body = next((n.body for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls), [])
    found: dict[str, Any] = {}
    for stmt in body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value:
            with contextlib.suppress(ValueError):
                found[stmt.target.id] = ast.literal_eval(stmt.value)
    return found


def _distill_option_specs() -> dict[str, tuple[Any, str, Any]]:
    library = literal_dataclass_defaults("distill.distillation", "DistillConfig")

    def shown(name: str) -> str:
        value = library.get(name)
        value = ",".join(value) if isinstance(value, tuple) else value
        return "" if value is None else f" (default: {value})"

    return {k: (t, h + shown(k), None) for k, (t, h) in _DISTILL_OPTIONS.items()}


def _train_config(options: dict[str, Any], model: str, **fixed: Any):  # type: ignore[no-untyped-def]
    from distill.training.config import TrainConfig

    values = {k: options[k] for k in _TRAIN_OPTIONS}
    values["crop_size"] = _size(values["crop_size"], "--crop-size")
    values["export_size"] = _size(values["export_size"], "--export-size")
    weights = values["backbone_weights"]
    values["backbone_weights"] = str(weights) if weights else None
    return TrainConfig(**values, model=model, out=str(options["out"]), **fixed)


def _typed_options() -> set[str]:
    """The options the user typed (or set through the environment), not defaults."""
    from typer.main import get_current_context

    ctx = get_current_context()
    return {
        name
        for name in ctx.params
        if (src := ctx.get_parameter_source(name)) is not None and src.name != "DEFAULT"
    }


def _resumed(options: dict[str, Any], change: str | None, distill_given: dict | None = None):  # type: ignore[no-untyped-def]
    """With --resume: the run's own settings for every option not typed (resume.pt's
    config), a typed one that differs refused unless named in --change."""
    from distill.training.resume_settings import parse_change, settings_for_resume

    known = set(_TRAIN_OPTIONS) | (set(_DISTILL_OPTIONS) if distill_given is not None else set())
    names = parse_change(change, known)
    if not options["resume"]:
        if names:
            raise SegkdError("--change applies to --resume only")
        return options, distill_given
    path = Path(options["out"]) / "resume.pt"
    if not path.is_file():
        return options, distill_given  # restore() says there is nothing to resume
    from distill.checkpoint import load_checkpoint

    saved = dict(load_checkpoint(path).get("config") or {})
    typed = _typed_options()
    parsed = {**options}
    parsed["crop_size"] = _size(options["crop_size"], "--crop-size")
    parsed["export_size"] = _size(options["export_size"], "--export-size")
    given = {k: parsed[k] for k in _TRAIN_OPTIONS}
    if given["backbone_weights"] is not None:
        given["backbone_weights"] = str(given["backbone_weights"])
    values = settings_for_resume(given, typed, saved, names, path)
    for k in ("crop_size", "export_size"):  # back to the command line's spelling
        if values[k] is not None and not isinstance(values[k], str):
            values[k] = f"{values[k][0]}x{values[k][1]}"
    if distill_given is not None:
        saved_d = dict((saved.get("extra") or {}).get("distill") or {})
        if isinstance(distill_given.get("losses"), str):  # compared as the saved list
            distill_given["losses"] = [
                n.strip().lower() for n in distill_given["losses"].split(",") if n.strip()
            ]
        distill_given = settings_for_resume(
            {k: v for k, v in distill_given.items() if v is not None or k in saved_d},
            typed, saved_d, names, path,
        )  # fmt: skip
        if isinstance(distill_given.get("losses"), (list, tuple)):
            distill_given["losses"] = ",".join(distill_given["losses"])
    return {**options, **values}, distill_given


_CHANGE_HELP = (
    "with --resume: settings to change from the run's, e.g. lr,iters (a resumed run takes "
    "every setting from its resume.pt; a different value typed without this is refused)"
)


@app.command()
@_with_train_options("model", "runs/train", "architecture, see `segkd models`")
def train(
    *,
    role: Annotated[
        str, typer.Option(help="teacher, student or model (recorded in the checkpoint)")
    ] = "model",
    readout_iters: Annotated[
        int, typer.Option(help="with --role teacher: fit and store the position readout (0: skip)")
    ] = 200,
    change: Annotated[str | None, typer.Option(help=_CHANGE_HELP)] = None,
    **options: Any,
) -> None:
    """Train a teacher or a baseline student (cross-entropy + auxiliary head)."""
    from distill.training import train as run_training

    model, out = options.pop("model"), options["out"]
    options, _ = _resumed(options, change)
    if role not in ("teacher", "student", "model"):
        raise SegkdError(f"--role must be teacher, student or model, got {role!r}")
    if readout_iters < 0:
        raise SegkdError(f"--readout-iters must be >= 0, got {readout_iters}")
    cfg = _train_config(options, model, role=role)
    _guard_training_outputs(options)
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


def _guard_training_outputs(options: dict[str, Any], **inputs: Any) -> None:
    guard_outputs(
        [Output("--out", options["out"], "folder", TRAIN_WRITES)],
        {
            "the dataset folder": _spec_folder(options["data"]),
            "the --backbone-weights file": options["backbone_weights"],
            **inputs,
        },
    )


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@app.command()
@_with_train_options(
    "student", "runs/distill", "student architecture", extra=_distill_option_specs()
)
def distill(
    teacher: Annotated[
        str,
        typer.Option(
            help="teacher: a segkd .pt, or a model-zoo file (mmseg, cirkd, torchvision; "
            "force with mmseg:FILE, cirkd:FILE, torchvision:NAME:FILE)"
        ),
    ],
    *,
    readout_iters: Annotated[
        int, typer.Option(help="iterations to fit the teacher's position readout if not cached")
    ] = 200,
    change: Annotated[str | None, typer.Option(help=_CHANGE_HELP)] = None,
    **options: Any,
) -> None:
    """Distil a student from a frozen teacher with KD, IDD, position distillation (and CWD)."""
    from distill.distillation import DistillConfig
    from distill.training.distill_run import run_distillation

    given = {k: options.pop(k) for k in _DISTILL_OPTIONS}
    options, given = _resumed(options, change, given)
    dcfg = DistillConfig(**{k: v for k, v in given.items() if v is not None})
    dcfg.require_a_term()  # before anything loads
    student = options.pop("student")
    cfg = _train_config(options, student, role="student")
    if readout_iters < 1:
        raise SegkdError(f"--readout-iters must be >= 1, got {readout_iters}")
    check_model_arg(teacher, "--teacher")
    _guard_training_outputs(options, **{"the --teacher": model_paths(teacher)})
    summary = run_distillation(cfg, teacher, dcfg, readout_iters=readout_iters)
    console.print(
        f"[bold]{student}[/] distilled from {summary['teacher']['arch']}: best val mIoU "
        f"{summary['best_miou']:.4f} at iteration {summary['best_iter']} -> {summary['checkpoints']['best']}"
    )


@app.command()
def qat(
    checkpoint: Annotated[Path, typer.Argument(help="fp32 student checkpoint (.pt)")],
    out: Annotated[Path, typer.Option(help="folder for qat.pt and qat.json")],
    input_size: Annotated[
        str | None,
        typer.Option(help="deploy HxW the INT8 file will have (default: the checkpoint's)"),
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="dataset SPEC (default: the checkpoint's)")
    ] = None,
    steps: Annotated[int, typer.Option(help="fine-tuning steps")] = 200,
    batch_size: Annotated[int, typer.Option(help="images per step")] = 2,
    train_images: Annotated[int, typer.Option(help="train-split images QAT draws from")] = 64,
    calib_images: Annotated[int, typer.Option(help="images of the initial calibration")] = 32,
    int8_method: Annotated[
        str, typer.Option(help="initial calibration: minmax, entropy, percentile")
    ] = "minmax",
    lr: Annotated[float, typer.Option(help="SGD learning rate of the Conv weights")] = 1e-4,
    scale_lr: Annotated[
        float, typer.Option(help="Adam learning rate of the activation scales")
    ] = 1e-3,
    learn_scales: Annotated[
        bool, typer.Option(help="learn the activation scales (LSQ) or keep the calibrated ones")
    ] = True,
    seed: Annotated[int, typer.Option(help="seed of the image draw and the batches")] = 0,
) -> None:
    """Quantization-aware distillation into the TensorRT INT8 graph; `segkd export` of qat.pt
    then writes the INT8 files from the learned scales, without calibration."""
    from distill.qat.stage import QAT_FILE, QAT_JSON, run_qat
    from distill.qat.train import QatOptions

    guard_outputs(
        [Output("--out", out, "folder", (QAT_FILE, QAT_JSON, "*.tmp"))],
        {"the checkpoint": checkpoint, "the dataset folder": _spec_folder(data)},
    )
    opts = QatOptions(steps=steps, batch_size=batch_size, lr=lr, scale_lr=scale_lr,
                      learn_scales=learn_scales, seed=seed)  # fmt: skip
    summary = run_qat(
        checkpoint, out, input_size=_size(input_size, "--input-size"), data=data,
        calib_images=calib_images, train_images=train_images, method=int8_method,
        sample_seed=seed, opts=opts, progress=console.print,
    )  # fmt: skip
    t = summary["training"]
    console.print(
        f"QAT: {t['steps']} steps in {t['seconds']:.0f} s, KD loss {t['loss_first']:.4g} -> "
        f"{t['loss_last']:.4g}; export with `segkd export {out / QAT_FILE} --out DIR`"
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
    output: Annotated[
        str,
        typer.Option(
            help="labels (argmax in the graph), labels-lowres (argmax at 1/8, resized on the "
            "host) or logits"
        ),
    ] = "labels",
    label_dtype: Annotated[str, typer.Option(help="uint8 or int32 label map")] = "uint8",
    input_dtype: Annotated[
        str,
        typer.Option(help="float32 (host normalises) or uint8 (NHWC BGR pixels, in-graph)"),
    ] = "float32",
    label_stride: Annotated[
        int | None,
        typer.Option(help="labels-lowres: argmax at 1/N of the input (2, 4) [output stride]"),
    ] = None,
    dynamic: Annotated[
        bool, typer.Option(help="dynamic batch/H/W instead of the static input size")
    ] = False,
    opset: Annotated[
        int, typer.Option(help="ONNX opset, checked in the file (the TensorRT INT8 file: >= 19)")
    ] = 17,
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
    # Short names: rich cuts longer ones at 80 columns (--min-agreement-fp16 and -int8
    # both showed as "--min-agreement-…"); the old names stay as hidden aliases.
    min_fp16: Annotated[
        float, typer.Option(help="fp16: fail below this pixel agreement with PyTorch")
    ] = 0.99,
    min_int8: Annotated[
        float, typer.Option(help="INT8: fail below this pixel agreement (broken calibration)")
    ] = 0.90,
    min_agreement_fp16: Annotated[float | None, typer.Option(hidden=True)] = None,
    min_agreement_int8: Annotated[float | None, typer.Option(hidden=True)] = None,
    trt_workspace: Annotated[
        float | None,
        typer.Option(help="TensorRT builder workspace (GiB) [half the free GPU memory, <= 4]"),
    ] = None,
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
    from runtime.backends.tensorrt_builder import TrtOptions

    guard_outputs(
        [Output("--out", out, "replaced"), Output("--json", json_out)],
        {
            "the checkpoint": checkpoint,
            "the --calib-data folder": _spec_folder(calib_data),
            "the --engine-cache folder": engine_cache,
        },
    )
    # Checked before anything runs, under the names the user typed (the hidden old
    # aliases are still honoured); a gate outside 0..1 used to fail after the whole export.
    for name, value, alias in (("fp16", min_fp16, min_agreement_fp16),
                               ("int8", min_int8, min_agreement_int8)):  # fmt: skip
        typed = f"--min-{name}" if alias is None else f"--min-agreement-{name}"
        finite(typed, value if alias is None else alias, low=0.0, high=1.0)
    trt = TrtOptions(
        workspace_gib=trt_workspace, optimization_level=opt_level, cache_dir=engine_cache,
        weak_typing=weak_typing, max_batch=trt_max_batch, verbose=trt_verbose,
    )  # fmt: skip
    report = export_checkpoint(
        checkpoint, out, precisions=precision, input_size=input_size, calib_data=calib_data,
        calib_images=calib_images, verify_images=verify_images, sample_seed=sample_seed, output=output,
        label_dtype=label_dtype, input_dtype=input_dtype, label_stride=label_stride,
        dynamic=dynamic, opset=opset,
        simplify=simplify,
        int8_method=int8_method, int8_variants=int8_variants, require_trt=require_trt, trt=trt,
        tolerances=Tolerances(
            fp16_min_agreement=min_fp16 if min_agreement_fp16 is None else min_agreement_fp16,
            int8_min_agreement=min_int8 if min_agreement_int8 is None else min_agreement_int8,
        ),
        progress=lambda msg: err_console.print(f"[dim]{msg}[/]", highlight=False),
    )  # fmt: skip
    console.print(format_summary(report), highlight=False, markup=False)
    _write_json(json_out, report.manifest)


@app.command()
def build(
    folder: Annotated[Path, typer.Argument(help="an export folder copied to this machine")],
    precision: Annotated[
        str | None, typer.Option(help="comma list of fp32, fp16, int8 [every one the folder has]")
    ] = None,
    dla_core: Annotated[
        int | None, typer.Option(min=0, help="Jetson DLA core, GPU fallback (not on Orin Nano)")
    ] = None,
    workspace: Annotated[
        float | None, typer.Option(help="builder workspace GiB [half the free memory, <= 4]")
    ] = None,
    engine_cache: Annotated[
        Path | None, typer.Option(help="engine + timing cache [~/.cache/segkd/tensorrt]")
    ] = None,
    cache: Annotated[bool, typer.Option(help="reuse an identical engine built before")] = True,
    opt_level: Annotated[int, typer.Option(min=0, max=5, help="builder optimization level")] = 3,
    verbose: Annotated[bool, typer.Option(help="TensorRT's verbose log")] = False,
) -> None:
    """Build TensorRT engines from an export folder on this GPU (a Jetson): no torch needed."""
    from runtime.backends.tensorrt_builder import TrtOptions
    from runtime.engine_folder import build_folder, format_build

    opts = TrtOptions(
        workspace_gib=workspace, optimization_level=opt_level, cache_dir=engine_cache,
        use_cache=cache, verbose=verbose, dla_core=dla_core,
    )  # fmt: skip
    wanted = [p.strip() for p in precision.split(",") if p.strip()] if precision else None
    guard_outputs([Output("FOLDER", folder, "folder")], {})  # engines land in it: writable?
    report = build_folder(
        folder, wanted, opts, say=lambda m: err_console.print(f"[dim]{m}[/]", highlight=False)
    )
    console.print(format_build(report), highlight=False, markup=False)


@app.command("eval")
def eval_cmd(
    model: Annotated[
        str,
        typer.Argument(
            help=".pt, .onnx, .engine, an export folder, or a model-zoo .pth (mmseg:FILE, ...)"
        ),
    ],
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
    mode: Annotated[
        str,
        typer.Option(
            help="whole images, or slide: mmseg's sliding window (averaged logits); auto: "
            "slide where a zoo teacher's config tests that way, else whole"
        ),
    ] = "auto",
    crop: Annotated[
        str | None, typer.Option(help="slide window HxW (default: the config's)")
    ] = None,
    stride: Annotated[
        str | None, typer.Option(help="slide step HxW (default: the config's)")
    ] = None,
) -> None:
    """mIoU, per-class IoU and pixel accuracy of a model on a dataset split."""
    if max_drop is not None and reference is None:
        raise SegkdError("--max-drop needs --reference (the model to compare against)")
    if max_drop is not None:
        finite("--max-drop", max_drop)  # a nan gate would pass every model
    check_model_arg(model)
    check_model_arg(reference, "--reference")
    guard_outputs(
        [Output("--json", json_out), Output("--save-predictions", save_predictions, "folder")],
        {
            "the model": model_paths(model),
            "the --reference": model_paths(reference),
            "the dataset folder": _spec_folder(data),
        },
    )
    from pipeline.artifacts import evaluate_on_dataset
    from runtime.evaluate import CONVENTIONS
    from runtime.slide import parse_hw

    window = {"crop": parse_hw(crop, "--crop"), "stride": parse_hw(stride, "--stride")}
    result = evaluate_on_dataset(
        model, data, split, max_images, backend, device, precision, save_predictions,
        convention=convention, mode=mode, **window,
    )  # fmt: skip
    ref = None
    if reference is not None:  # --convention as given: `auto` resolves for each model
        ref = evaluate_on_dataset(
            reference, data, split, max_images, "auto", device, convention=convention
        )
    table = Table(
        title=f"segkd eval on {data} [{split}], {result.num_samples} images, "
        f"{result.convention} convention, {result.mode}"
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
    console.print(f"mode: {result.mode}")
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
        if ref.convention != result.convention:  # a label-map artifact vs a logits model
            console.print(
                f"note: the reference was scored with the {ref.convention} convention, the "
                f"model with {result.convention} (auto picks per model; give --convention "
                "labels to score both alike)"
            )
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
    all_artifacts: Annotated[
        bool, typer.Option("--all", help="bench every artifact an export folder lists")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="write the results as JSON")
    ] = None,
) -> None:
    """Latency (mean, p50, p90, p99) and FPS, split into pre-, inference and post-processing."""
    from tqdm import tqdm

    from pipeline.artifacts import open_model
    from runtime.bench import benchmark, format_table
    from runtime.loader import folder_artifacts

    size = parse_size(frame_size, "--frame-size", minimum=16)
    for m in models:
        check_model_arg(m)
    guard_outputs([Output("--json", json_out)], {f"the model {m}": model_paths(m) for m in models})
    backends = [b.strip() for b in backend.split(",") if b.strip()]
    if all_artifacts:
        models = [
            str(f) for m in models
            for f in (folder_artifacts(Path(m)) if Path(m).is_dir() else [Path(m)])
        ]  # fmt: skip
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
    from runtime.jetson_facts import describe_run  # Jetson release, mode, clocks, power

    for line in dict.fromkeys(describe_run(r.jetson, r.power) for r in results if r.jetson):
        console.print(line, highlight=False, markup=False)
    _write_json(json_out, [r.to_dict() for r in results])


@app.command()
def demo(
    source: Annotated[
        str,
        typer.Argument(
            help="video file, camera index, /dev/videoN, csi://N, stream URL, gst:PIPELINE or image folder"
        ),
    ],
    model: Annotated[str, typer.Option(help=".pt, .onnx, .engine or an export folder")],
    out: Annotated[
        Path | None,
        typer.Option(
            help="output video (.mp4, .avi, ...) or folder for images; written aside and put "
            "in place when complete, so a failed run keeps the earlier output. A folder is "
            "replaced only if it is new, empty or an earlier demo run (other files: refused)"
        ),
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
    from pipeline.artifacts import open_model
    from runtime.demo import run_demo

    if out is None and not show:
        raise SegkdError("demo needs --out FILE.mp4 (or a folder) and/or --show")
    from runtime.demo_sink import VIDEO_SUFFIXES, check_image_folder

    check_model_arg(model, "--model")
    out_kind = "file" if out is not None and out.suffix.lower() in VIDEO_SUFFIXES else "folder"
    guard_outputs(
        [Output("--out", out, out_kind), Output("--json", json_out)],
        {"the demo source": source, "the --model": model_paths(model)},
    )
    if out is not None and out_kind == "folder":
        check_image_folder(out)  # before the model loads
    with open_model(model, backend, device, precision) as seg:
        stats = run_demo(source, seg, out, show=show, max_frames=max_frames, alpha=alpha, fps=fps)
    console.print(
        f"{stats.frames_out}/{stats.frames_in} frames, {stats.fps:.1f} FPS sustained, "
        f"{stats.infer_ms_mean:.1f} ms inference, stopped by {stats.stopped}"
        + (f" -> {stats.out}" if stats.out else "")
    )
    _write_json(json_out, stats.to_dict())
    if stats.stopped == "interrupted":  # Ctrl-C: the documented status, after the summary
        if out is not None and stats.out != str(out):
            err_console.print(f"interrupted: {out} left as it was", highlight=False)
        raise typer.Exit(130)


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
        str | None,
        typer.Option(
            help="use this teacher instead of training one: a segkd .pt, or a model-zoo file "
            "(mmseg, cirkd, torchvision; force with mmseg:FILE, cirkd:FILE, torchvision:NAME:FILE)"
        ),
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
    guard_outputs(
        [Output("--out", out, "folder", PIPELINE_WRITES)],
        {
            "the --config file": config,
            "the dataset folder": _spec_folder(cfg["data"]),
            "the teacher": model_paths(cfg["teacher"]["checkpoint"] or None),
            **{f"{k}.backbone_weights": cfg[k]["backbone_weights"] for k in ("teacher", "student")},
        },
    )
    report = run_pipeline(
        cfg, out, log=lambda msg: console.print(msg, highlight=False, markup=False)
    )
    if report is None:  # under torchrun, a rank other than 0: rank 0 writes the report
        return
    console.print(_gain_line(report))
    console.print(f"report: {out / 'report.md'}")


def _gain_line(report: dict) -> str:
    """The pipeline's result in one line: the students' means over seeds and the verdict."""
    from pipeline.gain import verdict

    s, dist = report["student"], report.get("distillation") or {}
    d_stats, b_stats = dist.get("distilled_stats") or {}, dist.get("baseline_stats")
    n = d_stats.get("n", 1)
    line = f"distilled {s['arch']}: {d_stats.get('mean', 100 * s['val_miou']):.2f} mIoU"
    line += f" (mean of {n} seeds)" if n > 1 else ""
    if b_stats:
        line += f", student alone {b_stats['mean']:.2f}"
        gain, spread = dist["gain_vs_baseline"], dist.get("spread")
        if spread is None:
            line += f": gain {gain:+.2f} pts (one seed: not a measurement)"
        else:
            line += f": gain {gain:+.2f} ± {spread:.2f} pts, {verdict(dist)}"
    return line + f"; teacher {100 * report['teacher']['val_miou']:.2f}"


# OS errors the user can fix even when the OS does not say which file they hit.
_USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def _close_bars() -> None:
    """Close open progress bars: one left open would share our last line."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _fail(message: str, code: int) -> NoReturn:
    """Print ONE `error: ...` line on stderr and exit with `code`."""
    from rich.markup import escape

    _close_bars()
    text = " ".join(line.strip() for line in message.strip().splitlines())
    # escape: a path like "a[/]b" in the message is text, not rich markup.
    err_console.print(f"[red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _interrupted(e: KeyboardInterrupt) -> NoReturn:
    """One line: what stopped, what is intact, how to go on; exit 130 (SIGINT) / 143 (TERM)."""
    from runtime.interrupted import exit_status, interrupted_line

    _close_bars()
    line = interrupted_line(sys.argv[1:], e)
    err_console.print(line, highlight=False, markup=False, soft_wrap=True)
    sys.exit(exit_status(e))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # OpenCV and its ffmpeg log their own lines for a file we report in one `error:` line;
    # set these variables (e.g. OPENCV_LOG_LEVEL=WARNING) to see them again.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "FATAL")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    from runtime import interrupted

    interrupted.install_handlers()
    try:
        # standalone_mode=False: a command's typer.Exit(code) comes back as the return value.
        code = app(standalone_mode=False)
    except SegkdError as e:
        _fail(str(e), 2)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (runtime.interrupted)
        _interrupted(e)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except OSError as e:  # disk full, permission denied, read-only folder: the user's to fix
        if e.filename is not None:
            _fail(f"{e.filename}: {e.strerror or e}", 2)
        if e.errno in _USER_ERRNOS:  # a write() that names no file
            _fail(f"{e.strerror or e} (free some space or choose another --out)", 2)
        raise
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
        if type(e).__name__ == "Abort":  # click turns a KeyboardInterrupt into Abort
            cause = e.__context__
            _interrupted(cause if isinstance(cause, KeyboardInterrupt) else KeyboardInterrupt())
        raise
    if interrupted.received:  # typer returned 130 for it: say what stopped
        _interrupted(interrupted.received[-1])
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
