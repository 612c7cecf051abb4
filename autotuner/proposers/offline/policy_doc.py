"""A policy file as editable parts: docstring, imports, TUNABLES and top-level statements.

The offline proposer edits files through this view so that untouched code keeps its text and
comments (a diff shows only the change), helpers that nothing reaches any more are pruned, and
code grafted from another file is renamed wherever it would clash. Nothing here executes the code
it handles: archive members can be untrusted.
"""

from __future__ import annotations

import ast
import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from autotuner.policy import DECISION_POINTS
from autotuner.proposers import ingredients as ing

# The proposer's notes on what it changed end the docstring, the latest few only.
MAX_EDIT_NOTES = 6
EDIT_NOTE = "Offline edit: "


@dataclass(frozen=True)
class Statement:
    """One top-level statement with its own text (comments and decorators attached)."""

    text: str
    binds: frozenset[str]
    loads: frozenset[str]
    strings: frozenset[str]
    kind: str  # "def", "assign", "import" or "other"
    dynamic_params: bool = False  # reads params with a computed key

    @classmethod
    def of(cls, text: str) -> Statement:
        return statement_of(text.strip("\n") + "\n")

    @classmethod
    def build(cls, text: str) -> Statement:
        tree = ast.parse(text)
        binds: set[str] = set()
        kind = "other"
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                binds.add(node.name)
                kind = "def"
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    binds.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
                kind = "assign"
            else:
                binds.update(
                    n.id
                    for n in ast.walk(node)
                    if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
                )
        loads: set[str] = set()
        strings: set[str] = set()
        for n in ast.walk(tree):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
                loads.add(n.id)
            elif isinstance(n, (ast.Global, ast.Nonlocal)):
                loads.update(n.names)
            elif isinstance(n, ast.Constant) and isinstance(n.value, str):
                strings.add(n.value)
        return cls(
            text,
            frozenset(binds),
            frozenset(loads),
            frozenset(strings),
            kind,
            reads_params_dynamically(tree),
        )


@functools.lru_cache(maxsize=4096)
def statement_of(text: str) -> Statement:
    """Cached: the same pieces and helpers are parsed again and again across proposals."""
    return Statement.build(text)


def reads_params_dynamically(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == "params"
            and not (isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str))
        ):
            return True
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "params"
            and node.attr in ("items", "keys", "values")
        ):
            return True
    return False


@dataclass
class PolicyDoc:
    """A policy file taken apart: ``render`` puts it back together, edits in between.

    ``notes`` are the proposer's one-line edit notes, kept at the end of the docstring so a
    child file says how it differs from its parent.
    """

    docstring: str
    imports: list[Statement]
    tunables: dict[str, dict[str, Any]]
    body: list[Statement]
    notes: list[str] = field(default_factory=list)

    # -- reading and writing ------------------------------------------------------------

    @classmethod
    def parse(cls, code: str) -> PolicyDoc:
        tree = ast.parse(code)
        lines = code.splitlines()
        docstring = ""
        imports: list[Statement] = []
        tunables: dict[str, dict[str, Any]] = {}
        body: list[Statement] = []
        taken_until = 0  # lines already attributed to a statement (1-based, inclusive)
        for pos, node in enumerate(tree.body):
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            first = start
            # attach the comment lines right above it
            while first - 1 > taken_until and lines[first - 2].lstrip().startswith("#"):
                first -= 1
            text = "\n".join(lines[first - 1 : node.end_lineno])
            taken_until = node.end_lineno or start
            if (
                pos == 0
                and isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                docstring = node.value.value
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = frozenset((a.asname or a.name).split(".")[0] for a in node.names)
                imports.append(
                    Statement(text.strip("\n") + "\n", names, frozenset(), frozenset(), "import")
                )
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "TUNABLES" for t in node.targets
            ):
                raw = ast.literal_eval(node.value)
                tunables = {str(k): dict(v) for k, v in raw.items()}
            else:
                body.append(Statement.of(text))
        notes: list[str] = []
        kept: list[str] = []
        for line in docstring.strip("\n").splitlines():
            if line.startswith(EDIT_NOTE):
                notes.append(line[len(EDIT_NOTE) :])
            else:
                kept.append(line)
        return cls("\n".join(kept).rstrip(), imports, tunables, body, notes)

    def render(self) -> str:
        doc = self.docstring.strip("\n")
        notes = self.notes[-MAX_EDIT_NOTES:]
        if notes:
            doc = (doc + "\n\n" if doc else "") + "\n".join(EDIT_NOTE + n for n in notes)
        doc = doc.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
        parts = ['"""' + doc + '\n"""\n'] if doc else []
        if self.imports:
            parts.append("".join(s.text for s in self.imports))
        parts.append(ing.render_tunables(self.tunables))
        out = "\n".join(parts)
        for stmt in self.body:
            out += "\n\n" + stmt.text
        return out

    # -- queries ------------------------------------------------------------------------

    def index_of(self, name: str) -> int | None:
        for i, stmt in enumerate(self.body):
            if name in stmt.binds:
                return i
        return None

    def defines(self, name: str) -> bool:
        return self.index_of(name) is not None

    def text_of(self, name: str) -> str | None:
        """The text of the statement that binds ``name``; None when nothing does."""
        i = self.index_of(name)
        return None if i is None else self.body[i].text

    def function_names(self) -> list[str]:
        return [n for s in self.body if s.kind == "def" for n in sorted(s.binds)]

    def module_names(self) -> set[str]:
        names = {n for s in self.body for n in s.binds}
        names.update(n for s in self.imports for n in s.binds)
        names.add("TUNABLES")
        return names

    def closure(self, roots: Iterable[str]) -> list[int]:
        """Indexes of the statements that ``roots`` need, transitively, in file order."""
        binders: dict[str, list[int]] = {}
        for i, stmt in enumerate(self.body):
            for n in stmt.binds:
                binders.setdefault(n, []).append(i)
        todo = [i for r in roots for i in binders.get(r, [])]
        seen: set[int] = set()
        while todo:
            i = todo.pop()
            if i in seen:
                continue
            seen.add(i)
            for n in self.body[i].loads:
                todo.extend(binders.get(n, []))
        return sorted(seen)

    def is_template(self) -> bool:
        i = self.index_of("partition")
        return (
            i is not None
            and {"_budget", "_order"} <= self.body[i].loads
            and self.defines("_budget")
            and self.defines("_order")
        )

    def params_used_dynamically(self) -> bool:
        """True if some code reads params with a computed key: then no tunable is pruned."""
        return any(stmt.dynamic_params for stmt in self.body)

    def copy(self) -> PolicyDoc:
        return PolicyDoc(
            self.docstring,
            list(self.imports),
            {k: dict(v) for k, v in self.tunables.items()},
            list(self.body),
            list(self.notes),
        )

    # -- edits --------------------------------------------------------------------------

    def bake(self, params: Mapping[str, Any]) -> None:
        """Tuned values become defaults (where they are numbers inside the declared range)."""
        for name, value in (params or {}).items():
            spec = self.tunables.get(name)
            if spec is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value) or not spec["low"] <= value <= spec["high"]:
                continue
            spec["default"] = int(round(value)) if spec.get("type") == "int" else float(value)

    def remove(self, name: str) -> int | None:
        i = self.index_of(name)
        if i is not None:
            del self.body[i]
        return i

    def prune(self) -> None:
        """Drop helpers, state, imports and tunables that nothing reachable uses any more."""
        keep = set(self.closure(DECISION_POINTS))
        keep.update(i for i, s in enumerate(self.body) if s.kind == "other")
        self.body = [s for i, s in enumerate(self.body) if i in keep]
        loads = {n for s in self.body for n in s.loads}
        self.imports = [
            s for s in self.imports if not s.binds or s.binds & loads or "__future__" in s.text
        ]
        if not self.params_used_dynamically():
            strings = {x for s in self.body for x in s.strings}
            self.tunables = {k: v for k, v in self.tunables.items() if k in strings}

    def graft(
        self,
        stmts: list[str],
        tunables: Mapping[str, Mapping[str, Any]],
        imports: Iterable[str],
        at: int | None,
    ) -> None:
        """Add statements (and the tunables and imports they need) at index ``at``.

        Names or tunables that the file already uses for something else are renamed in the
        grafted code; an identical statement already present is not added twice.
        """
        have = {n: s for s in self.body for n in s.binds}
        rename: dict[str, str] = {}
        incoming = [Statement.of(t) for t in stmts]
        taken = self.module_names() | {n for s in incoming for n in s.binds}
        for stmt in incoming:
            for n in stmt.binds:
                if n in have and have[n].text != stmt.text:
                    rename[n] = fresh_name(n, taken)
                    taken.add(rename[n])
        key_rename: dict[str, str] = {}
        strings_here = {x for s in self.body for x in s.strings}
        for key, spec in tunables.items():
            if key in self.tunables and key in strings_here and self.tunables[key] != dict(spec):
                key_rename[key] = fresh_name(key, set(self.tunables) | set(tunables))
        added: list[Statement] = []
        texts_here = {s.text for s in self.body}
        for stmt in incoming:
            if rename or key_rename:
                stmt = Statement.of(renamed(stmt.text, rename, key_rename))
            if stmt.text in texts_here:
                continue
            added.append(stmt)
        if at is None or at > len(self.body):
            at = len(self.body)
        self.body[at:at] = added
        for key, spec in tunables.items():
            self.tunables[key_rename.get(key, key)] = dict(spec)
        present = {s.text.strip() for s in self.imports}
        for imp in imports:
            if imp.strip() not in present:
                tree = ast.parse(imp)
                names = frozenset(
                    (a.asname or a.name).split(".")[0]
                    for node in tree.body
                    for a in node.names  # type: ignore[attr-defined]
                )
                self.imports.append(
                    Statement(imp.strip() + "\n", names, frozenset(), frozenset(), "import")
                )
                present.add(imp.strip())


def fresh_name(name: str, taken: set[str]) -> str:
    """``name_2``, ``name_3``, ...: the first that is not taken."""
    k = 2
    while f"{name}_{k}" in taken:
        k += 1
    return f"{name}_{k}"


class _Renamer(ast.NodeTransformer):
    """Renames module-level names and ``params`` keys (string constants) in grafted code."""

    def __init__(self, names: Mapping[str, str], keys: Mapping[str, str]):
        self.names, self.keys = names, keys

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in self.names:
            node.id = self.names[node.id]
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        if node.name in self.names:
            node.name = self.names[node.name]
        self.generic_visit(node)
        return node

    def visit_Global(self, node: ast.Global) -> ast.AST:
        node.names = [self.names.get(n, n) for n in node.names]
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, str) and node.value in self.keys:
            node.value = self.keys[node.value]
        return node


def renamed(text: str, names: Mapping[str, str], keys: Mapping[str, str]) -> str:
    """``text`` with names and tunable keys renamed (re-printed from the AST)."""
    tree = _Renamer(names, keys).visit(ast.parse(text))
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def split_statements(code: str) -> list[str]:
    """The top-level statements of ``code``, each with the comment lines right above it."""
    tree = ast.parse(code)
    lines = code.splitlines()
    out, taken = [], 0
    for node in tree.body:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        while first - 1 > taken and lines[first - 2].lstrip().startswith("#"):
            first -= 1
        out.append("\n".join(lines[first - 1 : node.end_lineno]))
        taken = node.end_lineno or first
    return out
