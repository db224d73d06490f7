"""The one line `segkd` prints when Ctrl-C (SIGINT) or SIGTERM stops a command: what was
interrupted, what is intact, how to go on. Exit status 130 for SIGINT, 143 for SIGTERM
(128 + the signal's number, as shells report it)."""

from __future__ import annotations

import atexit
import os
import signal
import sys
from collections.abc import Sequence


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every clean-up path that handles one handles both."""


# The signal that stopped the command: typer turns a KeyboardInterrupt into a bare exit
# status 130 before our handler sees it, so the handlers record it here first.
received: list[KeyboardInterrupt] = []


def _on_signal(signum: int, _frame: object) -> None:
    e = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    received.append(e)
    raise e


def install_handlers() -> None:
    """Ctrl-C and SIGTERM raise (SIGTERM's default would skip every clean-up) and are
    recorded. A stage that needs its own (the demo's) sets and restores its handler."""
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)


def _exit_at_once(signum: int, _frame: object) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + signum)


def exit_on_signal() -> None:
    """Once the command is ending (its line printed, its outputs in place), a further Ctrl-C
    or SIGTERM ends the process at once with the signal's status. Raising would let a
    KeyboardInterrupt escape the exit path, and Python then dies of SIGINT (status -2)."""
    signal.signal(signal.SIGINT, _exit_at_once)
    signal.signal(signal.SIGTERM, _exit_at_once)
    # Python's finalisation resets handlers it set to SIG_DFL (not ones set to SIG_IGN), so
    # a signal then would kill the process (-2) after its line and status were decided.
    atexit.unregister(_ignore_signals)  # once, however often main() runs in one process
    atexit.register(_ignore_signals)


def _ignore_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def exit_status(e: BaseException) -> int:
    return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)


_DEFAULT_OUT = {"train": "runs/train", "distill": "runs/distill", "export": "runs/export",
                "pipeline": "runs/pipeline"}  # fmt: skip


def _option(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def interrupted_line(argv: Sequence[str], e: BaseException) -> str:
    """argv: sys.argv[1:] (the command and its options)."""
    how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
    command = next((a for a in argv if not a.startswith("-")), "")
    out = _option(argv, "--out") or _DEFAULT_OUT.get(command, "")
    json_out = _option(argv, "--json")
    if command in ("train", "distill"):
        return (
            f"{how}: {command} stopped; {out} keeps the checkpoints of its last evaluation "
            "(best.pt, last.pt, resume.pt); continue with the same command and --resume"
        )
    if command == "export":
        return (
            f"{how}: export stopped; {out} is as it was (an export folder changes all at once "
            "or not at all); run the command again"
        )
    if command == "pipeline":
        return (
            f"{how}: pipeline stopped; the steps it finished are kept in {out}; run the same "
            "command again to continue from there"
        )
    if command in ("eval", "bench", "models"):
        kept = f"{json_out} was not written (nor changed)" if json_out else "nothing was written"
        return f"{how}: {command} stopped; {kept}; run the command again"
    return f"{how}: {command or 'segkd'} stopped"
