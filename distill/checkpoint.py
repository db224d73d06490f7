"""The checkpoint artifact: a dict of tensors and plain data, written atomically.

`best.pt` / `last.pt` are student-only model checkpoints (what `segkd export` takes);
`resume.pt` adds the optimizer, extra trainable modules (e.g. IDD adapters) and the
iteration. Everything loads with `torch.load(weights_only=True)`: nothing a user did
not create is ever unpickled.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from core.atomic_io import atomic_output
from core.errors import SegkdError
from core.labels import LabelSpec
from core.preprocess import PreprocessSpec
from distill.finite_weights import refuse_non_finite
from distill.weights_only import load_plain_data

log = logging.getLogger(__name__)

FORMAT = "segkd-checkpoint"
FORMAT_VERSION = 1
EXPORTED_SUFFIXES = (".onnx", ".engine", ".plan", ".trt")


# How torch's zip writer words a write that did not reach the disk (inline_container.cc).
_TORCH_WRITE_FAILURES = ("PytorchStreamWriter failed", "file write failed", "unexpected pos")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save through a temporary file and a rename: a crash never leaves half a file.
    A failed write (full disk, quota, size limit) is one line naming the file: torch's zip
    writer reports it as a RuntimeError, not an OSError."""
    try:
        with atomic_output(path, "wb") as f:
            torch.save(obj, f)
    except (RuntimeError, OSError) as e:
        # torch's zip writer fails in write() (OSError, or its own RuntimeError) or at
        # close ("unexpected pos"): either way the bytes did not reach the disk.
        cause = e if isinstance(e, OSError) else e.__context__
        if isinstance(cause, OSError):
            reason = cause.strerror or str(cause)
        elif any(m in str(e) for m in _TORCH_WRITE_FAILURES):
            reason = str(e).strip().splitlines()[0][:120]
        else:  # not a write failure (e.g. an object that cannot be pickled): a bug, not the disk
            raise
        import shutil

        free = shutil.disk_usage(Path(path).parent).free
        raise SegkdError(
            f"cannot write {path}: {reason} ({free / 2**20:.1f} MiB free: a full disk?); "
            f"the earlier {Path(path).name}, if any, is kept"
        ) from None


def make_checkpoint(
    *,
    model: torch.nn.Module,
    arch: str,
    model_kwargs: dict[str, Any],
    labels: LabelSpec,
    preprocess: PreprocessSpec,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    iteration: int = 0,
    role: str = "model",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The student-only checkpoint dict (model weights + metadata, no optimizer)."""
    module = model.module if hasattr(model, "module") else model  # unwrap DDP
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "role": role,  # "teacher", "student" or "model"
        "arch": arch,
        "num_classes": labels.num_classes,
        "model_kwargs": dict(model_kwargs),
        "state_dict": state,
        "labels": labels.to_dict(),
        "preprocess": preprocess.to_dict(),
        "config": dict(config or {}),
        "metrics": dict(metrics or {}),
        "iteration": int(iteration),
    }
    if extra:
        ckpt.update(extra)
    return ckpt


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a segkd checkpoint, refusing anything that is not plain data."""
    path = Path(path)
    if not path.is_file():
        raise SegkdError(f"checkpoint not found: {path}")
    if path.suffix.lower() in EXPORTED_SUFFIXES:  # else the unpickler's refusal would answer
        raise SegkdError(
            f"{path} is an exported model, not a checkpoint: teachers, students, --resume and "
            "`segkd export` take a segkd .pt checkpoint (best.pt / last.pt from `segkd train` "
            "or `segkd distill`); run exported models with `segkd eval` / `bench` / `demo`"
        )
    ckpt = load_plain_data(
        path, noun="checkpoint ", advice="load only checkpoints you created", not_a="a checkpoint"
    )
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise SegkdError(f"{path} is not a segkd checkpoint (no '{FORMAT}' format tag)")
    for key in ("arch", "num_classes", "state_dict", "labels", "preprocess"):
        if key not in ckpt:
            raise SegkdError(f"{path} is missing '{key}'; it is not a complete segkd checkpoint")
    _check_fields(ckpt, path)
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise SegkdError(
            f"{path} was written by a newer segkd (format {ckpt['format_version']}); upgrade segkd"
        )
    return ckpt


# field -> (types it may have, what the message says it must be)
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "format_version": ((int,), "an integer"),
    "arch": ((str,), "an architecture name (text)"),
    "num_classes": ((int,), "a positive integer"),
    "model_kwargs": ((dict,), "a dict of build options"),
    "state_dict": ((dict,), "a dict of tensors"),
    "labels": ((dict,), "a dict"),
    "preprocess": ((dict,), "a dict"),
    "iteration": ((int,), "an integer"),
}


def _check_fields(ckpt: dict[str, Any], path: Path) -> None:
    """One line naming the field of a hand-edited or damaged checkpoint, never a traceback."""
    for key, (types, must) in _FIELD_TYPES.items():
        if key in ckpt and (isinstance(ckpt[key], bool) or not isinstance(ckpt[key], types)):
            raise SegkdError(
                f"{path}: field '{key}' must be {must}, got {type(ckpt[key]).__name__} "
                f"{str(ckpt[key])[:40]!r}; the checkpoint is damaged"
            )
    if ckpt["num_classes"] < 1:
        raise SegkdError(f"{path}: field 'num_classes' must be a positive integer")
    bad = [k for k, v in ckpt["state_dict"].items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise SegkdError(f"{path}: field 'state_dict' holds a non-tensor entry {str(bad[0])!r}")
    refuse_non_finite(ckpt["state_dict"], path)
    try:
        labels, _ = checkpoint_specs(ckpt)
    except (KeyError, TypeError, ValueError) as e:
        raise SegkdError(
            f"{path}: invalid 'labels' or 'preprocess' ({type(e).__name__}: {e})"
        ) from None
    if ckpt["num_classes"] != labels.num_classes:  # 1e12 would reach the allocator
        raise SegkdError(
            f"{path}: field 'num_classes' is {ckpt['num_classes']}, but 'labels' names "
            f"{labels.num_classes} classes; the checkpoint is damaged"
        )


def checkpoint_specs(ckpt: dict[str, Any]) -> tuple[LabelSpec, PreprocessSpec]:
    return LabelSpec.from_dict(ckpt["labels"]), PreprocessSpec.from_dict(ckpt["preprocess"])


def _apply_resize_policy(ckpt: dict[str, Any], path: str | Path) -> None:
    """Letterbox a checkpoint that was written to stretch images of varying aspect ratio.

    Checkpoints trained on VOC, ADE20K or folders before the policy existed say
    "stretch", which distorts every non-square image at eval and deploy.
    """
    from distill.data.spec import resize_policy

    data = (ckpt.get("config") or {}).get("data")
    pre = ckpt.get("preprocess")
    if not data or not isinstance(pre, dict) or pre.get("resize") != "stretch":
        return
    if resize_policy(str(data)) == "letterbox":
        log.warning("%s: trained on %s; letterboxing instead of the recorded stretch", path, data)
        ckpt["preprocess"] = {**pre, "resize": "letterbox"}


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the network a checkpoint describes and load its weights (strict)."""
    from distill.models import build_model

    ckpt = load_checkpoint(path)
    _apply_resize_policy(ckpt, path)
    try:
        model = build_model(ckpt["arch"], ckpt["num_classes"], **ckpt.get("model_kwargs", {}))
    except KeyError as e:
        raise SegkdError(f"{path}: unknown architecture {ckpt['arch']!r} ({e})") from None
    except (TypeError, ValueError) as e:  # an unknown or ill-typed entry of model_kwargs
        raise SegkdError(
            f"{path}: field 'model_kwargs' {ckpt.get('model_kwargs')!r} does not build "
            f"{ckpt['arch']} ({e})"
        ) from None
    try:
        result = model.load_state_dict(ckpt["state_dict"], strict=False)
    except RuntimeError as e:  # shape mismatch: another class count or width
        first = str(e).strip().splitlines()[-1].strip()
        raise SegkdError(
            f"{path}: weights do not fit {ckpt['arch']} with {ckpt['num_classes']} classes ({first[:200]})"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise SegkdError(
            f"{path}: weights do not fit {ckpt['arch']} with {ckpt['num_classes']} classes "
            f"({len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected keys, "
            f"e.g. {(result.missing_keys + result.unexpected_keys)[0]})"
        )
    model.to(device).eval()
    return model, ckpt
