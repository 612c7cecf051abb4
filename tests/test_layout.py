"""The package's shape, as the design states it: the import graph flows one way (commands ->
campaign -> gate/scoring -> evaluate -> isolation/sim), argparse lives only in the commands wing,
and every stage stays small enough to read in one sitting.

Imports are read from the source with ``ast`` (function-local ones included: a local import
hides a cycle, it does not remove it)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "autotuner"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
# the stages whose functions must each fit on a screen (the bar)
SHORT_FUNCTION_STAGES = ("campaign", "gate", "scoring", "report")
MODULE_SIZE_EXEMPT = ("sim", "check.py")
# ``python -m autotuner``: the command's other door, three lines that only call commands.main
ENTRY_POINTS = ("autotuner.__main__",)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "_data" in path.parts:
            continue
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for c in candidates:
            # importing a submodule runs its package's __init__ too, but that is not an edge of
            # the design: count the module named
            if c in modules and c != name:
                found.add(c)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    graph = _graph()
    # a package's __init__ re-exporting its own modules is not a cycle of the design
    graph = {k: {w for w in v if not k.startswith(w + ".") and not w.startswith(k + ".")}
             for k, v in graph.items()}
    assert _cycles(graph) == []


def test_simulator_imports_nothing_from_the_rest() -> None:
    for name, deps in _graph().items():
        if name == "autotuner.sim" or name.startswith("autotuner.sim."):
            assert all(d.startswith("autotuner.sim.") for d in deps), (name, deps)


def test_argparse_only_in_the_commands_wing() -> None:
    for name, path in _modules().items():
        if name.startswith("autotuner.commands") or name in ENTRY_POINTS:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert "argparse" not in names, f"{name} imports argparse"
        deps = _imports(name, path, _modules())
        assert not any(d.startswith("autotuner.commands") for d in deps), (
            f"{name} imports the commands wing")


def test_stages_are_small() -> None:
    long_modules, long_functions = [], []
    for path in _modules().values():
        rel = path.relative_to(PACKAGE).as_posix()
        text = path.read_text(encoding="utf-8")
        if not rel.startswith(MODULE_SIZE_EXEMPT) and len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{rel}: {len(text.splitlines())} lines")
        if not rel.startswith(SHORT_FUNCTION_STAGES):
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{rel}:{node.lineno} {node.name}: {length} lines")
    assert long_modules == []
    assert long_functions == []
