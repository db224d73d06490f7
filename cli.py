"""The `segkd` command: parses arguments and calls the stages; no logic of its own."""

from __future__ import annotations

import errno
import inspect
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from core.errors import SegkdError
from core.numbers import finite
from core.options import Option, OptionSet, cli_flag
from core.schema.bench import BENCH
from core.schema.demo import DEMO
from core.schema.distill import DISTILL, READOUT_ITERS
from core.schema.evaluate import EVAL
from core.schema.export import EXPORT, EXPORT_CLI_NAMES
from core.schema.qat import QAT
from core.schema.runtime import RUNTIME
from core.schema.tensorrt import BUILD_TRT, EXPORT_TRT, TrtOptions
from core.schema.tolerances import TOLERANCE_NAMES, TOLERANCES, Tolerances
from core.schema.train import TRAIN
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
    deep_stem: Annotated[bool, typer.Option(help=TRAIN["deep_stem"].help)] = TRAIN.default(
        "deep_stem"
    ),
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


def _parameters(options: OptionSet) -> list[inspect.Parameter]:
    """typer parameters for declared options: name, type, default, range and help from the
    schema; each hidden alias becomes a hidden option of its own (None: not typed)."""
    params = []
    for o in options.values():
        ranges = {} if o.finite else {"min": o.min, "max": o.max}
        info = typer.Option(*([o.flag] if o.flag else []), help=o.help, **ranges)
        kind = inspect.Parameter.KEYWORD_ONLY
        params.append(inspect.Parameter(o.name, kind, default=o.cli_default(),
                                        annotation=Annotated[o.type, info]))  # fmt: skip
        params += [
            inspect.Parameter(a, kind, default=None,
                              annotation=Annotated[o.type | None, typer.Option(hidden=True)])
            for a in o.aliases
        ]  # fmt: skip
    return params


def _with_options(*sets: OptionSet) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Append the options of `sets` to a command that takes them as **options; typer reads
    the signature built here."""

    def wrap(command: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(command, eval_str=True)  # cli.py has string annotations
        own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        added = [p for options in sets for p in _parameters(options)]
        command.__signature__ = sig.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
        return command

    return wrap


def _checked(values: dict[str, Any], options: OptionSet) -> dict[str, Any]:
    """`values` with each typed hidden alias folded into its option, and the ranges the
    parser does not check (core.numbers.finite) checked under the name the user typed."""
    for o in options.values():
        typed = cli_flag(o.name)
        for alias in o.aliases:
            if (value := values.pop(alias)) is not None:
                values[o.name], typed = value, cli_flag(alias)
        if o.finite:
            finite(typed, values[o.name], low=o.min, high=o.max)
    return values


def _training_options(model_option: str, out_default: str, model_help: str) -> OptionSet:
    """--MODEL_OPTION, --out and the training options (core/schema/train.py) of a command."""
    return OptionSet([
        replace(TRAIN["model"], name=model_option, help=model_help),
        Option("out", Path, Path(out_default), TRAIN["out"].help),
        *TRAIN.on_cli().values(),
    ])  # fmt: skip


def _distill_options() -> OptionSet:
    """The distillation options of `segkd distill`. Their command-line default is None,
    meaning "the library's default", which the help shows; a resumed run can thus tell a
    typed value from an untyped one."""

    def shown(o: Option) -> Option:
        value = o.cli_default()
        return replace(o, type=o.type | None, default=None, help=f"{o.help} (default: {value})")

    return OptionSet(shown(o) for o in DISTILL.on_cli().values())


def _train_config(options: dict[str, Any], model: str, **fixed: Any):  # type: ignore[no-untyped-def]
    from distill.training.config import TrainConfig

    values = {k: options[k] for k in TRAIN.on_cli()}
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

    known = set(TRAIN.on_cli()) | (set(DISTILL.on_cli()) if distill_given is not None else set())
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
    given = {k: parsed[k] for k in TRAIN.on_cli()}
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
@_with_options(_training_options("model", TRAIN.default("out"), TRAIN["model"].help))
def train(
    *,
    role: Annotated[str, typer.Option(help=TRAIN["role"].help)] = TRAIN.default("role"),
    readout_iters: Annotated[
        int, typer.Option(help="with --role teacher: fit and store the position readout (0: skip)")
    ] = READOUT_ITERS,
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
@_with_options(
    _distill_options(), _training_options("student", "runs/distill", "student architecture")
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
    ] = READOUT_ITERS,
    change: Annotated[str | None, typer.Option(help=_CHANGE_HELP)] = None,
    **options: Any,
) -> None:
    """Distil a student from a frozen teacher with KD, IDD, position distillation (and CWD)."""
    from distill.distillation import DistillConfig
    from distill.training.distill_run import run_distillation

    given = {k: options.pop(k) for k in DISTILL.on_cli()}
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
@_with_options(QAT)
def qat(
    checkpoint: Annotated[Path, typer.Argument(help="fp32 student checkpoint (.pt)")],
    out: Annotated[Path, typer.Option(help="folder for qat.pt and qat.json")],
    **o: Any,
) -> None:
    """Quantization-aware distillation into the TensorRT INT8 graph; `segkd export` of qat.pt
    then writes the INT8 files from the learned scales, without calibration."""
    from distill.qat.stage import QAT_FILE, QAT_JSON, run_qat
    from distill.qat.train import QatOptions

    guard_outputs(
        [Output("--out", out, "folder", (QAT_FILE, QAT_JSON, "*.tmp"))],
        {
            "the checkpoint": checkpoint,
            "the dataset folder": _spec_folder(o["data"]),
            "the --teacher": model_paths(o["teacher"]),
        },
    )
    opts = QatOptions.from_options(o, crop_size=_size(o["crop_size"], "--crop-size"))
    summary = run_qat(
        checkpoint, out, input_size=_size(o["input_size"], "--input-size"), data=o["data"],
        calib_images=o["calib_images"], train_images=o["train_images"],
        method=o["int8_method"], sample_seed=o["seed"], opts=opts, progress=console.print,
        teacher=o["teacher"],
    )  # fmt: skip
    t = summary["training"]
    console.print(
        f"QAT: {t['steps']} steps in {t['seconds']:.0f} s, KD loss {t['loss_first']:.4g} -> "
        f"{t['loss_last']:.4g}; export with `segkd export {out / QAT_FILE} --out DIR`"
    )


# `segkd export`'s options: the export's, its agreement gates and the TensorRT build's.
_EXPORT_OPTIONS = (
    EXPORT.renamed(EXPORT_CLI_NAMES),
    TOLERANCES.on_cli().renamed(TOLERANCE_NAMES),
    EXPORT_TRT,
)


@app.command()
@_with_options(*_EXPORT_OPTIONS)
def export(
    checkpoint: Annotated[
        Path, typer.Argument(help="student checkpoint (.pt) from segkd train/distill")
    ],
    out: Annotated[
        Path, typer.Option(help="export folder (model*.onnx, engines, export.json)")
    ] = Path("runs/export"),
    json_out: Annotated[
        Path | None, typer.Option("--json", help="copy export.json here too")
    ] = None,
    **o: Any,
) -> None:
    """PyTorch -> verified ONNX (fp32) -> fp16 and INT8 Q/DQ ONNX -> TensorRT engines."""
    from export.api import export_checkpoint, format_summary

    guard_outputs(
        [Output("--out", out, "replaced"), Output("--json", json_out)],
        {
            "the checkpoint": checkpoint,
            "the --calib-data folder": _spec_folder(o["calib_data"]),
            "the --engine-cache folder": o["engine_cache"],
        },
    )
    # Checked before anything runs, under the names the user typed (the hidden old
    # aliases are still honoured); a gate outside 0..1 used to fail after the whole export.
    export_opts, gates, trt = (names.to_library(_checked(o, names)) for names in _EXPORT_OPTIONS)
    report = export_checkpoint(
        checkpoint, out, **export_opts, trt=TrtOptions(**trt), tolerances=Tolerances(**gates),
        progress=lambda msg: err_console.print(f"[dim]{msg}[/]", highlight=False),
    )  # fmt: skip
    console.print(format_summary(report), highlight=False, markup=False)
    _write_json(json_out, report.manifest)


@app.command()
@_with_options(BUILD_TRT)
def build(
    folder: Annotated[Path, typer.Argument(help="an export folder copied to this machine")],
    precision: Annotated[
        str | None, typer.Option(help="comma list of fp32, fp16, int8 [every one the folder has]")
    ] = None,
    **o: Any,
) -> None:
    """Build TensorRT engines from an export folder on this GPU (a Jetson): no torch needed."""
    from runtime.engine_folder import build_folder, format_build

    opts = TrtOptions(**BUILD_TRT.to_library(o))
    wanted = [p.strip() for p in precision.split(",") if p.strip()] if precision else None
    guard_outputs([Output("FOLDER", folder, "folder")], {})  # engines land in it: writable?
    report = build_folder(
        folder, wanted, opts, say=lambda m: err_console.print(f"[dim]{m}[/]", highlight=False)
    )
    console.print(format_build(report), highlight=False, markup=False)


@app.command("eval")
@_with_options(EVAL)
def eval_cmd(
    model: Annotated[
        str,
        typer.Argument(
            help=".pt, .onnx, .engine, an export folder, or a model-zoo .pth (mmseg:FILE, ...)"
        ),
    ],
    **o: Any,
) -> None:
    """mIoU, per-class IoU and pixel accuracy of a model on a dataset split."""
    max_drop, reference = o["max_drop"], o["reference"]
    if max_drop is not None and reference is None:
        raise SegkdError("--max-drop needs --reference (the model to compare against)")
    if max_drop is not None:
        finite("--max-drop", max_drop)  # a nan gate would pass every model
    check_model_arg(model)
    check_model_arg(reference, "--reference")
    guard_outputs(
        [Output("--json", o["json_out"]),
         Output("--save-predictions", o["save_predictions"], "folder")],
        {
            "the model": model_paths(model),
            "the --reference": model_paths(reference),
            "the dataset folder": _spec_folder(o["data"]),
        },
    )  # fmt: skip
    from pipeline.artifacts import evaluate_on_dataset
    from runtime.slide import parse_hw

    window = {"crop": parse_hw(o["crop"], "--crop"), "stride": parse_hw(o["stride"], "--stride")}
    scored = (o["data"], o["split"], o["max_images"])
    result = evaluate_on_dataset(
        model, *scored, o["backend"], o["device"], o["precision"], o["save_predictions"],
        convention=o["convention"], mode=o["mode"], **window,
    )  # fmt: skip
    ref = None
    if reference is not None:  # --convention as given: `auto` resolves for each model
        ref = evaluate_on_dataset(reference, *scored, "auto", o["device"],
                                  convention=o["convention"])  # fmt: skip
    _print_eval(result, ref, o["data"], o["split"])
    payload, drop = _eval_payload(model, result, ref, o)
    failed = max_drop is not None and drop is not None and drop > max_drop
    payload["max_drop"], payload["passed"] = max_drop, (None if max_drop is None else not failed)
    _write_json(o["json_out"], payload)
    if failed:
        err_console.print(
            f"[red]FAIL:[/] mIoU drop {drop:.2f} points exceeds --max-drop {max_drop}"
        )
        raise typer.Exit(3)


def _print_eval(result: Any, ref: Any, data: str, split: str) -> None:
    """The per-class table (the reference's column beside it) and how the model was scored."""
    from runtime.evaluate import CONVENTIONS

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


def _eval_payload(
    model: str, result: Any, ref: Any, o: dict[str, Any]
) -> tuple[dict[str, Any], float | None]:
    """The --json payload and the mIoU drop vs the reference (None without one)."""
    payload: dict[str, Any] = {
        "model": str(model),
        "data": o["data"],
        "split": o["split"],
        **result.to_dict(),
    }
    if ref is None:
        return payload, None
    drop = 100 * (ref.miou - result.miou)
    payload["reference"] = {"model": str(o["reference"]), **ref.to_dict()}
    payload["drop_points"] = drop
    console.print(f"drop vs reference: {drop:+.2f} mIoU points")
    if ref.convention != result.convention:  # a label-map artifact vs a logits model
        console.print(
            f"note: the reference was scored with the {ref.convention} convention, the "
            f"model with {result.convention} (auto picks per model; give --convention "
            "labels to score both alike)"
        )
    return payload, drop


@app.command()
@_with_options(BENCH)
def bench(
    models: Annotated[
        list[str], typer.Argument(help="one or more .pt / .onnx / .engine / export folders")
    ],
    **o: Any,
) -> None:
    """Latency (mean, p50, p90, p99) and FPS, split into pre-, inference and post-processing."""
    from tqdm import tqdm

    from pipeline.artifacts import open_model
    from runtime.bench import benchmark, format_table
    from runtime.loader import folder_artifacts

    backend, device, precision, threads, json_out = (
        o[k] for k in ("backend", "device", "precision", "threads", "json_out")
    )
    iters, warmup, batch = o["iters"], o["warmup"], o["batch"]
    size = parse_size(o["frame_size"], "--frame-size", minimum=16)
    for m in models:
        check_model_arg(m)
    guard_outputs([Output("--json", json_out)], {f"the model {m}": model_paths(m) for m in models})
    backends = [b.strip() for b in backend.split(",") if b.strip()]
    if o["all_artifacts"]:
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
@_with_options(DEMO)
def demo(
    source: Annotated[
        str,
        typer.Argument(
            help="video file, camera index, /dev/videoN, csi://N, stream URL, gst:PIPELINE or image folder"
        ),
    ],
    model: Annotated[str, typer.Option(help=".pt, .onnx, .engine or an export folder")],
    **o: Any,
) -> None:
    """Segment a video, camera, image folder or stream; write an annotated video or images."""
    from pipeline.artifacts import open_model
    from runtime.demo import run_demo

    out, show, json_out = o["out"], o["show"], o["json_out"]
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
    with open_model(model, *(o[k] for k in RUNTIME)) as seg:
        stats = run_demo(
            source, seg, out, **{k: o[k] for k in ("show", "max_frames", "alpha", "fps")}
        )
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
    from runtime.interrupted import exit_on_signal, exit_status, interrupted_line

    exit_on_signal()  # a second Ctrl-C while this line is printed ends it the same way
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
        _run_app()
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (runtime.interrupted), at any point
        _interrupted(e)
    finally:
        interrupted.exit_on_signal()


def _run_app() -> None:
    from runtime import interrupted

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
