"""torch.load(weights_only=True) with one clear error line: the only way segkd unpickles.

segkd checkpoints, backbone weights and model-zoo teachers all come through here, so a file
holding anything but tensors and plain data is refused the same way everywhere, and its
payload never runs.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from core.errors import SegkdError


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def load_plain_data(
    path: Path, *, noun: str, advice: str, not_a: str, allowed_globals: Sequence[Any] = ()
) -> Any:
    """The unpickled object, or one SegkdError line naming `noun` + `path`.

    noun: what the file is, with its trailing space ("checkpoint ", "" ...); advice: what to
    do about a file that holds code; not_a: what arbitrary bytes are not ("a checkpoint").
    allowed_globals: non-builtin types that are data, not code (numpy scalars in mmseg meta).
    """
    try:
        # A foreign pickle's protocol notice: such a file is refused or loaded as data anyway.
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allowed_globals)):
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise SegkdError(
            f"refused to load {noun}{path}: it holds objects other than tensors and plain data "
            f"(weights_only=True); {advice} ({_first_line(e)})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise SegkdError(
            f"cannot read {noun}{path}: corrupt or truncated ({_first_line(e)})"
        ) from None
    except Exception as e:  # arbitrary bytes: the weights-only unpickler fails in other ways
        raise SegkdError(
            f"cannot read {noun}{path}: corrupt or not {not_a} ({type(e).__name__})"
        ) from None
