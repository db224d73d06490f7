"""`--help` at 80 columns: rich must not cut option names short (issue 12)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cli import app
from core.errors import SegkdError

ROOT = Path(__file__).resolve().parents[1]
COMMAND = typer.main.get_command(app)


def _option_names(command: str) -> list[str]:
    cmd = COMMAND.commands[command]  # type: ignore[attr-defined]
    names = []
    for param in cmd.params:
        if getattr(param, "hidden", False):
            continue
        names += [n for n in (*param.opts, *param.secondary_opts) if n.startswith("-")]
    return names


def _missing(help_text: str, names: list[str]) -> list[str]:
    # A name counts only whole: "--min-agreement-…" does not show "--min-agreement-int8".
    tokens = set(re.findall(r"--?[A-Za-z0-9][A-Za-z0-9-]*(?![A-Za-z0-9…-])", help_text))
    return [n for n in names if n not in tokens]


@pytest.mark.parametrize("command", sorted(COMMAND.commands))  # type: ignore[attr-defined]
def test_every_option_name_is_whole_at_80_columns(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    assert _missing(result.output, _option_names(command)) == []


def test_export_help_through_a_pipe() -> None:
    # No terminal and no COLUMNS: rich falls back to 80 columns.
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERMINAL_WIDTH")}
    out = subprocess.run(
        [sys.executable, "-m", "cli", "export", "--help"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    names = _option_names("export")
    assert "--min-int8" in names and "--min-fp16" in names
    assert _missing(out, names) == []


def test_old_agreement_option_names_still_parse(tmp_path: Path) -> None:
    missing = tmp_path / "none.pt"
    for opt in ("--min-agreement-int8", "--min-agreement-fp16", "--min-int8", "--min-fp16"):
        result = CliRunner().invoke(app, ["export", str(missing), opt, "0.5"])
        assert "No such option" not in result.output, (opt, result.output)
        # parsed: the command itself ran and refused the missing checkpoint
        assert isinstance(result.exception, SegkdError), (opt, result.output)
        assert "none.pt" in str(result.exception)
