"""`--resume` continues a run with the run's own settings.

A resumed run used to take every setting from the command line: a different --lr,
--batch-size or --data (`...,seed=5`: best.pt then chosen across two validation sets) was
accepted silently, and leaving out --iters trained a finished 2-iteration run on to the
default 300, rewriting its files. Now every setting the user did not type comes from the
run's resume.pt; one typed with another value is refused unless named in --change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from core.errors import SegkdError
from core.options import cli_flag

# Where the run is written and how fast, not what is trained: these may differ freely.
FREE = frozenset({"out", "resume", "device", "num_workers"})


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            return False
    return bool(a == b)


def _data_key(spec: Any) -> str:
    from distill.data.spec import parse_dataset_spec

    try:
        return str(parse_dataset_spec(str(spec)))
    except SegkdError:
        return str(spec)


def _shown(name: str, value: Any) -> str:
    if isinstance(value, (list, tuple)) and len(value) == 2 and name.endswith("size"):
        return f"{value[0]}x{value[1]}"
    return str(value)


def parse_change(text: str | None, known: Iterable[str]) -> set[str]:
    """`--change lr,batch-size` -> {"lr", "batch_size"}; unknown names refused."""
    names = {n.strip().lstrip("-").replace("-", "_") for n in (text or "").split(",") if n.strip()}
    unknown = sorted(names - set(known))
    if unknown:
        raise SegkdError(
            f"--change: unknown setting(s) {', '.join(unknown)}; "
            f"settings are {', '.join(sorted(n.replace('_', '-') for n in known))}"
        )
    return names


def settings_for_resume(
    given: Mapping[str, Any],
    typed: set[str],
    saved: Mapping[str, Any],
    change: set[str],
    where: Path,
) -> dict[str, Any]:
    """The values a resumed run uses: `saved` for every setting not typed, the typed value
    where it equals the saved one or is named in `change`; SegkdError otherwise.

    given: setting -> the command line's value; typed: the settings the user typed;
    saved: the run's resolved settings (resume.pt's config)."""
    values = dict(given)
    for name, value in given.items():
        if name in FREE or name not in saved:
            continue
        old = saved[name]
        same = _data_key(value) == _data_key(old) if name == "data" else _same(value, old)
        if name not in typed:
            values[name] = tuple(old) if isinstance(old, list) else old
        elif not same and name not in change:
            option = cli_flag(name)
            raise SegkdError(
                f"--resume: {option} {_shown(name, value)} differs from the run's "
                f"{_shown(name, old)} ({where}); a resumed run keeps its settings: leave "
                f"{option} out, or pass --change {name.replace('_', '-')} to change it"
            )
    return values
