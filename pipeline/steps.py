"""Make-like steps: a step re-runs only when its inputs, settings or outputs changed.

Each finished step leaves a stamp with a key (hash of its settings and of its input
files' contents) and the hashes of the outputs it wrote. A step is up to date when its
stamp's key matches and every output still exists with the same hash; so removing one
artifact re-creates it, and what depends on it re-runs only if the re-created file differs.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.atomic_io import sha256_of as sha256_file


@dataclass
class Step:
    name: str
    run: Callable[[], None]
    # A list, or a function for steps whose outputs are only known once they ran (export).
    outputs: Sequence[Path] | Callable[[], Sequence[Path]]
    inputs: Sequence[Path] = ()
    settings: dict[str, Any] = field(default_factory=dict)

    def output_paths(self) -> list[Path]:
        return [Path(p) for p in (self.outputs() if callable(self.outputs) else self.outputs)]

    def key(self) -> str:
        h = hashlib.sha256(json.dumps(self.settings, sort_keys=True, default=str).encode())
        for p in self.inputs:
            h.update(str(p.name).encode())
            h.update(sha256_file(p).encode() if p.is_file() else b"<missing>")
        return h.hexdigest()


class StepRunner:
    """Runs steps in order, skipping the ones that are up to date; records what it did."""

    def __init__(self, out: Path, log: Callable[[str], None] = print, create: bool = True) -> None:
        self.stamps = out / ".steps"
        if create:  # under torchrun only rank 0 writes the pipeline's folder
            self.stamps.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.record: list[dict[str, Any]] = []

    def _stamp(self, step: Step) -> Path:
        return self.stamps / f"{step.name}.json"

    def up_to_date(self, step: Step, key: str) -> bool:
        stamp = self._stamp(step)
        if not stamp.is_file():
            return False
        try:
            saved = json.loads(stamp.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or UTF-8
            self.log(f"[{step.name}] {stamp} cannot be read ({type(e).__name__}); running again")
            return False
        outputs = saved.get("outputs") if isinstance(saved, dict) else None
        if not isinstance(outputs, dict):
            self.log(f"[{step.name}] {stamp} is not a step record; running again")
            return False
        if saved.get("key") != key:
            return False
        return all(
            p.is_file() and outputs.get(str(p)) == sha256_file(p) for p in step.output_paths()
        )

    def run(self, step: Step) -> bool:
        """Run `step` unless up to date; returns True when it ran."""
        key = step.key()
        if self.up_to_date(step, key):
            self.skip(step)
            return False
        self.log(f"[{step.name}] running")
        t0 = time.perf_counter()
        step.run()
        self.finish(step, key, time.perf_counter() - t0)
        return True

    def skip(self, step: Step) -> None:
        self.log(f"[{step.name}] up to date, skipped")
        self.record.append({"step": step.name, "ran": False, "seconds": 0.0})

    def finish(self, step: Step, key: str, seconds: float) -> None:
        """Check the step's outputs exist and stamp them."""
        produced = step.output_paths()
        missing = [str(p) for p in produced if not p.is_file()]
        if missing:
            raise RuntimeError(f"step {step.name} finished without writing {', '.join(missing)}")
        stamp = {
            "key": key,
            "outputs": {str(p): sha256_file(p) for p in produced},
            "seconds": seconds,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        tmp = self._stamp(step).with_suffix(".tmp")
        tmp.write_text(json.dumps(stamp, indent=2))
        tmp.replace(self._stamp(step))
        self.record.append({"step": step.name, "ran": True, "seconds": seconds})
        self.log(f"[{step.name}] done in {seconds:.1f} s")
