"""The `segkd` command: parses arguments and calls the stages; no logic of its own."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

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
console = Console()
err_console = Console(stderr=True)


def _size(value: str | None, option: str) -> tuple[int, int] | None:
    return None if value is None else parse_size(value, option, minimum=32)


def _write_json(path: Path | None, data: Any) -> None:
    if path is None:
        return
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


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
    summary = run_training(cfg)
    console.print(
        f"[bold]{model}[/]: best val mIoU {summary['best_miou']:.4f} at iteration "
        f"{summary['best_iter']} -> {summary['checkpoints']['best']}"
    )


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(standalone_mode=False)
    except SegkdError as e:
        err_console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click usage errors etc. arrive here with standalone_mode=False
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
