"""The code's shape, as issue #26 measures it: import cycles, the longest functions, and the
training config's path through the code when a user runs `segkd distill`.

    python benchmarks/code_shape.py [--root DIR] [--no-trace]

--root: another checkout to measure (e.g. an older commit in a git worktree); its own
modules are imported from there. The trace runs the real CLI in-process on a tiny
synthetic dataset: `segkd train` (untraced, the teacher), then `segkd distill --losses
kd,idd,pid` under sys.setprofile. A *stop* is the first call of a project function that
receives a TrainConfig among its arguments; a *return* is a stop in a file the path had
already left (the back-and-forth a reader follows).
"""

from __future__ import annotations

import argparse
import ast
import itertools
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

PACKAGES = ("core", "runtime", "distill", "export", "pipeline", "cli")
SKIP_DIRS = {"benchmarks", "tests", ".venv", ".git", ".tools", "docs"}


def project_files(root: Path) -> list[Path]:
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if rel.parts[0] in SKIP_DIRS or any(s.startswith(".") for s in rel.parts):
            continue
        out.append(p)
    return out


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def longest_functions(root: Path, n: int = 10) -> list[tuple[int, str, str]]:
    rows = []
    for p in project_files(root):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                rows.append(
                    (node.end_lineno - node.lineno + 1, str(p.relative_to(root)), node.name)
                )
    return sorted(rows, reverse=True)[:n]


def import_graph(root: Path, lazy: bool) -> dict[str, set[str]]:
    """Module -> project modules it imports (module level only unless `lazy`)."""
    mods = {module_name(root, p): p for p in project_files(root)}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        nodes = ast.walk(tree) if lazy else iter(tree.body)
        for node in nodes:
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: counted up from this module's package
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                subs = [f"{base}.{a.name}" for a in node.names]
                # `from pkg import mod, mod2` depends on those modules, not on pkg's own code.
                own = [] if all(t in mods for t in subs) else [base]
                targets = own + subs
            for t in targets:
                # `from pkg import mod` names a module; `from mod import name` its module.
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def trace_config_path(root: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Run `segkd train` then, traced, `segkd distill` in-process. Returns the ordered stops
    that receive the config, and every project function in order of its first call."""
    from typer.testing import CliRunner

    import cli

    runner = CliRunner()
    with tempfile.TemporaryDirectory(prefix="code_shape_") as tmp:  # two checkpoints: 280 MB
        return _traced_runs(runner, cli.app, Path(tmp), root)


def _traced_runs(
    runner: Any, app: Any, work: Path, root: Path
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    data = "synthetic:size=64x128,train=4,val=2"
    tiny = ["--iters", "2", "--batch-size", "2", "--crop-size", "32x32", "--device", "cpu",
            "--num-workers", "0", "--data", data]  # fmt: skip
    r = runner.invoke(app, ["train", "--model", "pspnet_r18", "--out", str(work / "t"), *tiny])
    if r.exit_code != 0:
        raise SystemExit(f"teacher training failed: {r.output}\n{r.exception!r}")
    stops: list[tuple[str, str]] = []
    calls: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    called: set[tuple[str, str]] = set()
    rootstr = str(root.resolve()) + os.sep

    def is_config(v: object) -> bool:
        return type(v).__name__ == "TrainConfig"

    def profile(frame, event, arg):
        if event != "call":
            return
        f = frame.f_code.co_filename
        if not f.startswith(rootstr) or "/.venv/" in f:
            return
        rel = f[len(rootstr) :]
        if rel.split(os.sep)[0] in SKIP_DIRS:
            return
        key = (rel, frame.f_code.co_qualname)
        if key not in called:
            called.add(key)
            calls.append(key)
        if key in seen:
            return
        code = frame.f_code
        args = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        if any(is_config(frame.f_locals.get(a)) for a in args):
            seen.add(key)
            stops.append(key)

    argv = ["distill", "--teacher", str(work / "t" / "best.pt"), "--student", "ddrnet23_slim",
            "--losses", "kd,idd,pid", "--out", str(work / "s"), *tiny]  # fmt: skip
    sys.setprofile(profile)
    try:
        r = runner.invoke(app, argv)
    finally:
        sys.setprofile(None)
    if r.exit_code != 0:
        raise SystemExit(f"distillation failed: {r.output}\n{r.exception!r}")
    return stops, calls


def path_figures(stops: list[tuple[str, str]]) -> dict[str, object]:
    files = [f for f, _ in stops]
    returns, left = 0, set()
    for prev, cur in itertools.pairwise(files):
        if cur != prev:
            left.add(prev)
            returns += cur in left
    visits: dict[str, int] = defaultdict(int)
    for prev, cur in itertools.pairwise([None, *files]):
        if cur != prev:
            visits[cur] += 1
    top = sorted(visits.items(), key=lambda kv: -kv[1])[:5]
    return {"stops": len(stops), "files": len(set(files)), "returns": returns, "visits": top}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--no-trace", action="store_true")
    ap.add_argument("--list-stops", action="store_true")
    args = ap.parse_args()
    root = args.root.resolve()
    sys.path.insert(0, str(root))
    os.chdir(root)
    print(f"## code shape of {root}")
    for lazy in (False, True):
        found = cycles(import_graph(root, lazy))
        kind = "including imports inside functions" if lazy else "module-level imports"
        print(f"import cycles ({kind}): {len(found)}")
        for c in found:
            print("  ", " <-> ".join(c))
    print("ten longest functions (outside benchmarks/ and tests/):")
    for n, f, name in longest_functions(root):
        print(f"  {n:4d}  {f}  {name}")
    if not args.no_trace:
        stops, calls = trace_config_path(root)
        print("functions that receive the TrainConfig:", path_figures(stops))
        print("every project function `segkd distill` calls:", path_figures(calls))
        if args.list_stops:
            for f, q in stops:
                print(f"  {f}  {q}")


if __name__ == "__main__":
    main()
