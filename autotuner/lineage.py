"""Which reference policy a candidate is, when it is one: credit where it is due.

A model asked for a better policy sometimes sends back a seed it was shown, word for word or
with cosmetic changes (a docstring, comments, other variable names, a tunable renamed or given
another default, the fixed-chunk ``partition`` that a route-only seed inherits written out). Such
a candidate behaves exactly as that reference, so it must be reported as that reference and never
as a discovery. ``same_policy_as`` answers that question from the code alone, without running it.

Two files are the same policy here when their canonical programs are equal. The canonical program
keeps everything that can change a decision and drops what cannot:

- kept: the code of ``partition`` and ``route`` (the fallback file's when a file leaves one out,
  as the simulator does), of the helpers and module-level values they reach, every constant, and
  each tunable's type (int or float changes the values the code computes with);
- dropped: docstrings, comments, formatting, imports (their uses stay: ``math.ceil``), code
  nothing reaches, the names of locals, helpers and tunables (renamed in order of first use), and
  the TUNABLES table itself: defaults and ranges only change where the tuner starts and searches,
  and every candidate and reference is tuned before it is scored.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from collections.abc import Mapping

from autotuner.policy import (
    DECISION_POINTS,
    FALLBACK_BASELINE,
    PARSE_LOCK,
    PolicyFileError,
    read_policy_file,
    read_policy_source,
)
from autotuner.resources import baseline_path


def same_policy_as(code: str, references: Mapping[str, str]) -> str | None:
    """The name of the first reference whose canonical program equals ``code``'s, else None.

    ``references`` maps a name (e.g. ``"least_outstanding"``) to that policy file's text. A file
    that cannot be read as a policy is the same as nothing.
    """
    mine = canonical_program(code)
    if mine is None:
        return None
    for name, ref_code in references.items():
        if canonical_program(ref_code) == mine:
            return name
    return None


def shipped_references() -> dict[str, str]:
    """Every policy shipped in ``baselines/`` (not its ``audit/`` subjects), by file stem."""
    folder = baseline_path(FALLBACK_BASELINE).parent
    return {path.stem: path.read_text(encoding="utf-8")
            for path in sorted(folder.glob("*.py")) if not path.name.startswith("_")}


def program_fingerprint(code: str) -> str | None:
    """A short stable digest of the canonical program (None when the file is not a policy)."""
    canon = canonical_program(code)
    return None if canon is None else hashlib.sha256(canon.encode()).hexdigest()[:16]


def canonical_program(code: str) -> str | None:
    """The program with everything that cannot change a decision removed, as text."""
    with PARSE_LOCK:
        return _canonical_program(code)


def changed_points(code: str, other: str) -> tuple[str, ...] | None:
    """The decision points (``partition``, ``route``) whose canonical code differs between two
    policy files, each with what it reaches; None when either is not a policy. Says which
    decisions a candidate changed against its parent or the baseline, from the code alone."""
    with PARSE_LOCK:
        mine = [_canonical_program(code, (p,)) for p in DECISION_POINTS]
        theirs = [_canonical_program(other, (p,)) for p in DECISION_POINTS]
    if None in mine or None in theirs:
        return None
    return tuple(p for p, a, b in zip(DECISION_POINTS, mine, theirs, strict=True) if a != b)


def _canonical_program(code: str, points: tuple[str, ...] = DECISION_POINTS) -> str | None:
    try:
        source = read_policy_source(code)
        tree = ast.parse(source.code)
    except (PolicyFileError, SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    tunable_types = {t.name: t.type for t in source.tunables}
    top = _top_level(tree)
    for point in DECISION_POINTS:
        if point not in top:  # the simulator takes it from the fallback file: so do we
            fallback = _top_level(_fallback_tree())
            top[point] = fallback[point]
            for name, stmt in fallback.items():
                top.setdefault(name, stmt)
    reached = _reachable(top, points)
    renamer = _Renamer(reached, tunable_types)
    parts = [ast.dump(renamer.visit(_strip_docstrings(top[name]))) for name in reached]
    tunables = ",".join(f"{renamer.tunables[name]}:{tunable_types[name]}"
                        for name in renamer.tunable_order)
    return "\n".join([f"tunables {tunables}", *parts])


@functools.lru_cache(maxsize=1)
def _fallback_tree() -> ast.Module:
    return ast.parse(read_policy_file(baseline_path(FALLBACK_BASELINE)).code)


def _top_level(tree: ast.Module) -> dict[str, ast.stmt]:
    """Top-level definitions by the name they bind (functions, constants); TUNABLES, imports
    and docstrings are not part of the program's behaviour here."""
    out: dict[str, ast.stmt] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef):
            out[stmt.name] = stmt
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for target in targets:
                for node in ast.walk(target):
                    if isinstance(node, ast.Name) and node.id != "TUNABLES":
                        out[node.id] = stmt
    return out


def _reachable(top: dict[str, ast.stmt], points: tuple[str, ...]) -> list[str]:
    """Names of the top-level definitions the decision points use, in first-use order."""
    order: list[str] = []
    queue = [p for p in points if p in top]
    while queue:
        name = queue.pop(0)
        if name in order:
            continue
        order.append(name)
        for node in ast.walk(top[name]):
            if isinstance(node, ast.Name) and node.id in top and node.id not in order:
                queue.append(node.id)
    return order


def _strip_docstrings(stmt: ast.stmt) -> ast.stmt:
    """A copy without string statements (docstrings, strings used as comments): no effect."""
    stmt = ast.parse(ast.unparse(stmt)).body[0]
    for node in ast.walk(stmt):
        for attr in ("body", "orelse", "finalbody"):
            block = getattr(node, attr, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                kept = [s for s in block if not _is_string_statement(s)]
                setattr(node, attr, kept or ([ast.Pass()] if attr == "body" else []))
    return stmt


def _is_string_statement(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str))


class _Renamer(ast.NodeTransformer):
    """Renames, in order of first appearance, the top-level names a program defines (helpers,
    constants: ``g0``...), each function's parameters and locals (``v0``...) and the tunables it
    reads (``t0``...), so that names chosen differently still give the same program."""

    def __init__(self, top_names: list[str], tunable_types: Mapping[str, str]):
        self.globals = {name: name if name in DECISION_POINTS else f"g{i}"
                        for i, name in enumerate(top_names)}
        self.tunable_types = tunable_types
        self.tunables: dict[str, str] = {}
        self.tunable_order: list[str] = []
        self.locals: list[dict[str, str]] = []

    def _local(self, name: str) -> str | None:
        for scope in reversed(self.locals):
            if name in scope:
                return scope[name]
        return None

    def _bind_locals(self, node: ast.AST, args: ast.arguments) -> dict[str, str]:
        scope: dict[str, str] = {}
        names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
        names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                names.append(sub.id)
        depth = len(self.locals)
        for name in names:
            if name not in scope and name not in self.globals:
                scope[name] = f"v{depth}_{len(scope)}"
        return scope

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        self.locals.append(self._bind_locals(node, node.args))
        node.name = self.globals.get(node.name, self._local(node.name) or node.name)
        self.generic_visit(node)
        self.locals.pop()
        return node

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        self.locals.append(self._bind_locals(node, node.args))
        self.generic_visit(node)
        self.locals.pop()
        return node

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.arg = self._local(node.arg) or node.arg
        node.annotation = None
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = self._local(node.id) or self.globals.get(node.id, node.id)
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        value = node.value
        if isinstance(value, str) and value in self.tunable_types:
            if value not in self.tunables:
                self.tunables[value] = f"t{len(self.tunables)}"
                self.tunable_order.append(value)
            node.value = self.tunables[value]
        return node
