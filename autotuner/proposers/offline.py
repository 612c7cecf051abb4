"""The offline proposer: program mutation and recombination on policy files, no LLM, no network.

Every proposal starts from the parent's file with its tuned parameters baked in as the TUNABLES
defaults (a child starts where Optuna left its parent), then applies one operation:

- **insert**: replace a slot with a piece from ``ingredients``: the route, or a partition's budget
  or order (a partition that is not yet in budget/order form is rewritten into it);
- **recombine**: take a decision function (or a helper both files define) from an inspiration,
  with the helpers, state, imports and tunables it needs, renaming whatever would clash;
- **wrap**: compose an existing function with a piece: re-order the parent's chunks with an
  order piece (its budget and chunk-token total stay), or put a load guard / prefix affinity in
  front of the parent's router;
- **constant**, **promote**: perturb a numeric literal in the code, or turn it into a declared
  tunable (``params["..."]`` with a range around it) so that Optuna can tune it;
- **tunable**: move a tunable's default, or widen its range;
- **compare**: flip a comparison (``<`` to ``<=``, or its direction).

The first proposals of a proposer are biased to the combinations the research found strongest
(``ingredients.STRONG_COMBINATIONS``), interleaved with mutations so the archive is diverse early.
Everything is deterministic given the seed and the sequence of requests. Each candidate is run
through the caller's static check; a refused one is replaced by another operation, a bounded
number of times. Untouched code keeps its text and comments, so a diff shows only the change.
The proposer never executes the code it handles: archive members can be untrusted.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import math
import random
import re
import textwrap
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from autotuner.policy import DECISION_POINTS, FALLBACK_BASELINE, read_policy_file
from autotuner.proposers import ingredients as ing
from autotuner.proposers.base import CheckFn, Objective, ParentInfo, Proposal, ProposalRequest
from autotuner.resources import baseline_path

MAX_ATTEMPTS = 24
MAX_EDIT_NOTES = 6
EDIT_NOTE = "Offline edit: "

# Relative weights of the operations after the early phase.
OPERATION_WEIGHTS: dict[str, float] = {
    "insert": 3.0,
    "recombine": 3.0,
    "constant": 2.0,
    "promote": 1.5,
    "tunable": 1.0,
    "compare": 1.0,
    "wrap": 1.0,
}


OPERATIONS = ("strong", *OPERATION_WEIGHTS)


class _NoMutation(Exception):
    """This operation does not apply to this file (nothing to perturb, no inspiration...)."""


# ------------------------------------------------------------------------------------------
# A policy file as editable parts


@dataclass(frozen=True)
class _Stmt:
    """One top-level statement with its own text (comments and decorators attached)."""

    text: str
    binds: frozenset[str]
    loads: frozenset[str]
    strings: frozenset[str]
    kind: str  # "def", "assign", "import" or "other"
    dynamic_params: bool = False  # reads params with a computed key

    @classmethod
    def of(cls, text: str) -> _Stmt:
        return _stmt_of(text.strip("\n") + "\n")

    @classmethod
    def build(cls, text: str) -> _Stmt:
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
            _reads_params_dynamically(tree),
        )


@functools.lru_cache(maxsize=4096)
def _stmt_of(text: str) -> _Stmt:
    return _Stmt.build(text)


def _reads_params_dynamically(tree: ast.AST) -> bool:
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
class _Doc:
    docstring: str
    imports: list[_Stmt]
    tunables: dict[str, dict[str, Any]]
    body: list[_Stmt]
    notes: list[str] = field(default_factory=list)

    # -- reading and writing ------------------------------------------------------------

    @classmethod
    def parse(cls, code: str) -> _Doc:
        tree = ast.parse(code)
        lines = code.splitlines()
        docstring = ""
        imports: list[_Stmt] = []
        tunables: dict[str, dict[str, Any]] = {}
        body: list[_Stmt] = []
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
                    _Stmt(text.strip("\n") + "\n", names, frozenset(), frozenset(), "import")
                )
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "TUNABLES" for t in node.targets
            ):
                raw = ast.literal_eval(node.value)
                tunables = {str(k): dict(v) for k, v in raw.items()}
            else:
                body.append(_Stmt.of(text))
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

    def copy(self) -> _Doc:
        return _Doc(
            self.docstring,
            list(self.imports),
            {k: dict(v) for k, v in self.tunables.items()},
            list(self.body),
            list(self.notes),
        )

    # -- edits --------------------------------------------------------------------------

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
        incoming = [_Stmt.of(t) for t in stmts]
        taken = self.module_names() | {n for s in incoming for n in s.binds}
        for stmt in incoming:
            for n in stmt.binds:
                if n in have and have[n].text != stmt.text:
                    rename[n] = _fresh(n, taken)
                    taken.add(rename[n])
        key_rename: dict[str, str] = {}
        strings_here = {x for s in self.body for x in s.strings}
        for key, spec in tunables.items():
            if key in self.tunables and key in strings_here and self.tunables[key] != dict(spec):
                key_rename[key] = _fresh(key, set(self.tunables) | set(tunables))
        added: list[_Stmt] = []
        texts_here = {s.text for s in self.body}
        for stmt in incoming:
            if rename or key_rename:
                stmt = _Stmt.of(_rename(stmt.text, rename, key_rename))
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
                    _Stmt(imp.strip() + "\n", names, frozenset(), frozenset(), "import")
                )
                present.add(imp.strip())


def _fresh(name: str, taken: set[str]) -> str:
    k = 2
    while f"{name}_{k}" in taken:
        k += 1
    return f"{name}_{k}"


class _Renamer(ast.NodeTransformer):
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


def _rename(text: str, names: Mapping[str, str], keys: Mapping[str, str]) -> str:
    tree = _Renamer(names, keys).visit(ast.parse(text))
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


# ------------------------------------------------------------------------------------------
# Span edits inside one statement (the rest of its text, comments included, stays as is)


def _offsets(text: str) -> list[int]:
    starts, pos = [], 0
    for line in text.splitlines(keepends=True):
        starts.append(pos)
        pos += len(line)
    starts.append(pos)
    return starts


def _char_pos(text: str, starts: list[int], line: int, col_bytes: int) -> int:
    line_text = text[starts[line - 1] : starts[line]]
    return starts[line - 1] + len(line_text.encode("utf-8")[:col_bytes].decode("utf-8", "ignore"))


def _replace_span(text: str, node: ast.AST, new: str) -> str:
    starts = _offsets(text)
    a = _char_pos(text, starts, node.lineno, node.col_offset)  # type: ignore[attr-defined]
    b = _char_pos(text, starts, node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]
    return text[:a] + new + text[b:]


def _parents(tree: ast.AST) -> dict[int, ast.AST]:
    return {id(c): p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}


def _in_function(node: ast.AST, parents: Mapping[int, ast.AST]) -> tuple[str | None, bool]:
    """(outermost enclosing function name, whether ``params`` is in scope there)."""
    name, has_params = None, False
    cur = parents.get(id(node))
    while cur is not None:
        if isinstance(cur, (ast.FunctionDef, ast.Lambda)):
            args = cur.args
            if any(a.arg == "params" for a in args.posonlyargs + args.args + args.kwonlyargs):
                has_params = True
            if isinstance(cur, ast.FunctionDef):
                name = cur.name
        cur = parents.get(id(cur))
    return name, has_params


_STRUCTURAL = {0, 1, -1}


def _numeric_constants(text: str) -> list[tuple[ast.Constant, str | None, bool]]:
    """Tunable-looking numbers: not bools, not 0/1/-1, not indexes."""
    tree = ast.parse(text)
    parents = _parents(tree)
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or isinstance(node.value, bool):
            continue
        if not isinstance(node.value, (int, float)) or node.value in _STRUCTURAL:
            continue
        if not math.isfinite(node.value):
            continue
        parent = parents.get(id(node))
        if isinstance(parent, ast.Subscript) and parent.slice is node:
            continue
        fn, has_params = _in_function(node, parents)
        out.append((node, fn, has_params))
    return out


def _format_number(value: float, like_int: bool) -> str:
    if like_int:
        return str(int(value))
    return repr(float(f"{value:.4g}"))


def _scaled(value: float, rng: random.Random, like_int: bool) -> float:
    factor = math.exp(max(-1.4, min(1.4, rng.gauss(0.0, 0.5))))
    new = value * factor
    if like_int:
        new = float(round(new))
        if new == value:
            new = value + (1 if rng.random() < 0.5 or value <= 2 else -1) * max(1, abs(value) // 8)
    return new


def _range_around(value: float, like_int: bool) -> dict[str, Any]:
    if value > 0:
        low, high = value / 4, value * 4
        if like_int:
            low, high = max(1, math.floor(low)), max(math.ceil(high), int(value) + 1)
        return ing.tunable_spec("int" if like_int else "float", low, high, value, log=True)
    low, high = value * 4, value / 4
    if like_int:
        low, high = math.floor(low), min(-1, math.ceil(high))
        if high <= low or not low <= value <= high:
            high = int(value) + 1
    return ing.tunable_spec("int" if like_int else "float", low, high, value)


# ------------------------------------------------------------------------------------------
# SLO targets from the request (defaults when it has none)


def _slo_targets(objective: Objective) -> tuple[float, float]:
    """(TTFT, TPOT) targets in seconds, for the SLO-aware pieces' tunable defaults."""

    def target(name: str, default: float) -> float:
        value = objective.slo.get(name)
        usable = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if usable and math.isfinite(value) and value > 0 else default

    return target("ttft_s", ing.DEFAULT_TTFT_S), target("tpot_s", ing.DEFAULT_TPOT_S)


# ------------------------------------------------------------------------------------------
# The proposer


@functools.lru_cache(maxsize=1)
def _baseline_doc() -> _Doc:
    return _Doc.parse(read_policy_file(baseline_path(FALLBACK_BASELINE)).code)


def _normalized(code: str) -> str:
    try:
        return ast.dump(ast.parse(code))
    except SyntaxError:
        return code


def _piece_stmts(piece: ing.Ingredient) -> list[str]:
    return _split_statements(piece.code)


def _split_statements(code: str) -> list[str]:
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


@dataclass
class _Context:
    rng: random.Random
    ttft_s: float
    tpot_s: float
    inspirations: tuple[ParentInfo, ...]
    parent: ParentInfo | None = None
    _docs: dict[int, _Doc] = field(default_factory=dict)

    def parsed(self, info: ParentInfo) -> _Doc:
        """An inspiration as a document with its tuned values baked in (a fresh copy)."""
        key = id(info)
        if key not in self._docs:
            doc = _Doc.parse(info.code)
            _bake(doc, info.params)
            self._docs[key] = doc
        return self._docs[key].copy()


class OfflineProposer:
    """Mutation and recombination over the archive; ``propose`` never raises on bad input."""

    name = "offline"

    def __init__(
        self,
        seed: int = 0,
        max_attempts: int = MAX_ATTEMPTS,
        operations: Iterable[str] | None = None,
    ):
        """``operations`` restricts the proposer to some of OPERATIONS (ablations, tests);
        None uses them all, with the early bias to the strong combinations."""
        self.seed = seed
        self.max_attempts = max_attempts
        self.operations = tuple(operations) if operations is not None else None
        unknown = set(self.operations or ()) - set(OPERATIONS)
        if unknown or self.operations == ():
            raise ValueError(
                f"unknown or no operations {sorted(unknown)}; known: {', '.join(OPERATIONS)}"
            )
        self._count = 0
        self._lock = threading.Lock()
        self._seen: set[str] = set()

    # -- the protocol ---------------------------------------------------------------------

    def propose(self, request: ProposalRequest, check: CheckFn) -> Proposal:
        with self._lock:
            index = self._count
            self._count += 1
        parent = request.parent
        digest = hashlib.sha256(parent.code.encode("utf-8", "replace")).hexdigest()[:16]
        rng = random.Random(f"{self.seed}:{index}:{digest}")
        ttft_s, tpot_s = _slo_targets(request.objective)
        ctx = _Context(rng, ttft_s, tpot_s, tuple(request.inspirations), parent)
        try:
            base = _Doc.parse(parent.code)
        except Exception as exc:  # a parent that does not parse: nothing to mutate
            return self._failed(f"parent cannot be parsed: {type(exc).__name__}: {exc}", 0)
        _bake(base, parent.params)
        parent_norm = _normalized(parent.code)
        baked_norm = _normalized(base.render())
        refusals: list[str] = []
        checked: list[str] = []
        repeats = 0
        # ``max_attempts`` bounds the candidates sent to the check; operations that do not
        # apply to this parent (nothing to perturb, no inspiration) cost a try, not an attempt.
        for tries in range(self.max_attempts * 4):
            if len(checked) >= self.max_attempts:
                break
            try:
                op = self._choose(index, tries, ctx)
            except _NoMutation as exc:
                refusals.append(str(exc))
                break
            try:
                doc, note = self._apply(op, base, ctx, index, tries)
            except _NoMutation as exc:
                refusals.append(f"{op}: {exc}")
                continue
            except Exception as exc:  # odd parent code: try something else
                refusals.append(f"{op}: {type(exc).__name__}: {exc}")
                continue
            doc.notes.append(note)
            code = doc.render()
            norm = _normalized(code)
            if norm in (parent_norm, baked_norm):
                refusals.append(f"{note}: no change")
                continue
            with self._lock:
                duplicate = norm in self._seen
            if duplicate and repeats < self.max_attempts // 2:
                # Something new is worth a few more tries; past that, a repeat beats nothing
                # (the parent may have little left to vary under the allowed operations).
                repeats += 1
                refusals.append(f"{note}: already proposed")
                continue
            try:
                problems = list(check(code))
            except Exception as exc:
                problems = [f"the check raised {type(exc).__name__}: {exc}"]
            checked.append(note)
            if problems:
                refusals.append(f"{note}: check: {problems[0]}")
                continue
            with self._lock:
                self._seen.add(norm)
            return Proposal(
                code=code,
                ok=True,
                reason="",
                raw_replies=(note,),
                attempts=len(checked),
                model="offline",
            )
        tail = "; ".join(refusals[-3:]) or "no operation applies"
        return self._failed(
            f"no usable mutation ({len(checked)} refused by the check, "
            f"{len(refusals) - len(checked)} not applicable or repeats): {tail}",
            len(checked),
        )

    @staticmethod
    def _failed(reason: str, attempts: int) -> Proposal:
        return Proposal(code=None, ok=False, reason=reason, attempts=attempts, model="offline")

    # -- choosing and applying an operation -----------------------------------------------

    def _choose(self, index: int, tries: int, ctx: _Context) -> str:
        allowed = self.operations or OPERATIONS
        # Early phase: the strong combinations in rank order, the first two back to back, then
        # every other proposal (the others explore).
        if "strong" in allowed and tries == 0 and _strong_rank(index) is not None:
            return "strong"
        weights = {op: w for op, w in OPERATION_WEIGHTS.items() if op in allowed}
        if "strong" in allowed and self.operations is not None:
            weights["strong"] = 1.0
        if not ctx.inspirations:
            weights["recombine"] = 0.0
        ops = [op for op in weights if weights[op] > 0]
        if not ops:
            raise _NoMutation("none of the allowed operations applies (no inspirations?)")
        return ctx.rng.choices(ops, weights=[weights[o] for o in ops])[0]

    def _apply(
        self, op: str, base: _Doc, ctx: _Context, index: int, tries: int
    ) -> tuple[_Doc, str]:
        doc = base.copy()
        if op == "strong":
            k = _strong_rank(index)
            if k is None or tries:
                k = ctx.rng.randrange(len(ing.STRONG_COMBINATIONS))
            order, budget, route = ing.STRONG_COMBINATIONS[k]
            doc = _insert_combination(doc, order, budget, route, ctx)
            doc.docstring = _describe(doc)
            doc.notes = []
            return doc, f"insert the strong combination {order} + {budget} + {route}"
        handler: Callable[[_Doc, _Context], str] = getattr(self, f"_op_{op}")
        note = handler(doc, ctx)
        if doc.docstring.startswith(ing.COMPOSED_TITLE):
            doc.docstring = _describe(doc)
        return doc, note

    def _op_insert(self, doc: _Doc, ctx: _Context) -> str:
        weights = _slot_weights(ctx.parent)
        slot = ctx.rng.choices(list(weights), weights=list(weights.values()))[0]
        pieces = ing.slot_pieces(slot)
        # Stronger pieces more often, every piece sometimes.
        weights = [1.0 / (1 + p.rank / 10) for p in pieces]
        current = _current_piece(doc, slot)
        choices = [(p, w) for p, w in zip(pieces, weights, strict=True) if p.name != current]
        piece = ctx.rng.choices([p for p, _ in choices], weights=[w for _, w in choices])[0]
        _insert_piece(doc, piece, ctx)
        return f"insert {slot} piece {piece.name}"

    def _op_recombine(self, doc: _Doc, ctx: _Context) -> str:
        donor_info = ctx.rng.choice(ctx.inspirations)
        donor = ctx.parsed(donor_info)
        shared = [
            n
            for n in donor.function_names()
            if n not in DECISION_POINTS
            and doc.defines(n)
            and _text_of(doc, n) != _text_of(donor, n)
        ]
        names = [n for n in DECISION_POINTS if _text_of(doc, n) != _text_of(donor, n)]
        candidates = names * 3 + shared
        if not candidates:
            raise _NoMutation("the inspiration's functions equal the parent's")
        name = ctx.rng.choice(candidates)
        if not donor.defines(name):
            donor = _materialize(donor, name)
        transplant(donor, doc, name)
        return f"take {name} from {donor_info.candidate_id}"

    def _op_wrap(self, doc: _Doc, ctx: _Context) -> str:
        if ctx.rng.random() < 0.5:
            piece = ctx.rng.choices(
                [o for o in ing.ORDERS if o.name != "fcfs_order"],
                weights=[1.0 / (1 + o.rank / 10) for o in ing.ORDERS if o.name != "fcfs_order"],
            )[0]
            if doc.defines("_order"):
                raise _NoMutation("the partition already has an order piece")
            _wrap(doc, "partition", ing.ORDER_WRAPPER, piece, ctx)
            return f"re-order the partition's chunks with {piece.name}"
        piece = ctx.rng.choice(ing.ROUTE_WRAPPERS)
        _wrap(doc, "route", piece.code, piece, ctx, wrapper_piece=True)
        return f"wrap the router with {piece.name}"

    def _op_constant(self, doc: _Doc, ctx: _Context) -> str:
        found = [
            (i, node, fn)
            for i, s in enumerate(doc.body)
            for node, fn, _ in _numeric_constants(s.text)
        ]
        if not found:
            raise _NoMutation("no numeric constant in the code")
        i, node, fn = ctx.rng.choice(found)
        like_int = isinstance(node.value, int)
        new = _scaled(float(node.value), ctx.rng, like_int)
        text = _replace_span(doc.body[i].text, node, _format_number(new, like_int))
        doc.body[i] = _Stmt.of(text)
        return f"constant {node.value!r} -> {_format_number(new, like_int)} in {fn or 'module'}"

    def _op_promote(self, doc: _Doc, ctx: _Context) -> str:
        found = [
            (i, node, fn)
            for i, s in enumerate(doc.body)
            for node, fn, ok in _numeric_constants(s.text)
            if ok and fn
        ]
        if not found:
            raise _NoMutation("no constant where params is in scope")
        i, node, fn = ctx.rng.choice(found)
        like_int = isinstance(node.value, int)
        base = re.sub(r"[^a-z0-9_]", "", (fn or "k").lower().lstrip("_")) or "k"
        taken = set(doc.tunables) | {x for s in doc.body for x in s.strings}
        name = _fresh(f"{base}_const", taken) if f"{base}_const" in taken else f"{base}_const"
        spec = _range_around(float(node.value), like_int)
        spec["default"] = int(node.value) if like_int else float(node.value)
        text = _replace_span(doc.body[i].text, node, f'params["{name}"]')
        doc.body[i] = _Stmt.of(text)
        doc.tunables[name] = spec
        return f"declare {node.value!r} in {fn} as tunable {name}"

    def _op_tunable(self, doc: _Doc, ctx: _Context) -> str:
        if not doc.tunables:
            raise _NoMutation("no tunables")
        name = ctx.rng.choice(sorted(doc.tunables))
        spec = doc.tunables[name]
        low, high, default = spec["low"], spec["high"], spec["default"]
        is_int = spec.get("type") == "int"
        log = bool(spec.get("log"))
        # Optuna moves defaults anyway; widening a range gives it room it did not have.
        if ctx.rng.random() < 0.4:
            if log and default > 0:
                new = default * math.exp(ctx.rng.gauss(0.0, 0.6))
            else:
                new = default + ctx.rng.gauss(0.0, 0.25) * (high - low)
            new = min(max(new, low), high)
            new = int(round(new)) if is_int else float(f"{new:.4g}")
            if new == default:
                raise _NoMutation(f"{name}: the default did not move")
            spec["default"] = new
            return f"default of {name} {default!r} -> {new!r}"
        if ctx.rng.random() < 0.5:
            new_low = low / 2 if (log or low > 0) else low - 0.5 * (high - low)
            if is_int:
                new_low = math.floor(new_low)
                if log:
                    new_low = max(1, new_low)
            if new_low == low or abs(new_low) > 1e12:
                raise _NoMutation(f"{name}: low cannot widen")
            spec["low"] = new_low
            return f"widen {name} down to {new_low!r}"
        new_high = high * 2 if high > 0 else high + 0.5 * (high - low)
        if is_int:
            new_high = math.ceil(new_high)
        if new_high == high or abs(new_high) > 1e12:
            raise _NoMutation(f"{name}: high cannot widen")
        spec["high"] = new_high
        return f"widen {name} up to {new_high!r}"

    def _op_compare(self, doc: _Doc, ctx: _Context) -> str:
        found = []
        for i, s in enumerate(doc.body):
            tree = ast.parse(s.text)
            for node in ast.walk(tree):
                if not isinstance(node, ast.Compare) or len(node.ops) != 1:
                    continue
                if not isinstance(node.ops[0], (ast.Lt, ast.LtE, ast.Gt, ast.GtE)):
                    continue
                sides = (node.left, node.comparators[0])
                if any(isinstance(x, ast.Constant) and x.value in (0, None) for x in sides):
                    continue  # guards such as "take <= 0"
                found.append((i, node))
        if not found:
            raise _NoMutation("no comparison to flip")
        i, node = ctx.rng.choice(found)
        old = ast.unparse(node)
        flip_strict = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt}
        flip_dir = {ast.Lt: ast.Gt, ast.Gt: ast.Lt, ast.LtE: ast.GtE, ast.GtE: ast.LtE}
        table = flip_strict if ctx.rng.random() < 0.6 else flip_dir
        node.ops = [table[type(node.ops[0])]()]
        new = ast.unparse(node)
        doc.body[i] = _Stmt.of(_replace_span(doc.body[i].text, node, new))
        return f"comparison {old} -> {new}"


# ------------------------------------------------------------------------------------------
# Operations on documents (module level so tests and scripts can use them)


# Scenarios where routing (prefix affinity, load balance of very long prompts) is what pays;
# elsewhere the queue order does (see ingredients' module docstring).
_ROUTING_BOUND = ("multiturn", "mixed", "mooncake", "conv")


def _slot_weights(parent: ParentInfo | None) -> dict[str, float]:
    """Which slot an insertion targets: repair what failed, then shore up the weak workloads.

    A failure that names a decision point (the simulator's reasons start with "partition(" or
    "route(") makes that slot likelier; so does a per-workload gain (``workload_gains``)
    that lags on the workloads the slot matters most for.
    """
    weights = {"order": 3.0, "route": 3.0, "budget": 1.5}
    if parent is None:
        return weights
    failures = " ".join(parent.failures)
    if "route(" in failures:
        weights["route"] *= 3
    if "partition(" in failures:
        weights["order"] *= 3
        weights["budget"] *= 3
    gains = {k: v for k, v in parent.workload_gains.items() if isinstance(v, (int, float))}
    routing = [v for k, v in gains.items() if any(w in k.lower() for w in _ROUTING_BOUND)]
    queueing = [v for k, v in gains.items() if not any(w in k.lower() for w in _ROUTING_BOUND)]
    if routing and queueing:
        if min(routing) < min(queueing):
            weights["route"] *= 2
        else:
            weights["order"] *= 2
    return weights


def _strong_rank(index: int) -> int | None:
    """Which strong combination the ``index``-th proposal inserts: 0, 1, 2, -, 3, -, 4, ..."""
    k = index if index < 2 else (index // 2 + 1 if index % 2 == 0 else None)
    return k if k is not None and k < len(ing.STRONG_COMBINATIONS) else None


def _bake(doc: _Doc, params: Mapping[str, Any]) -> None:
    """Tuned values become defaults (where they are numbers inside the declared range)."""
    for name, value in (params or {}).items():
        spec = doc.tunables.get(name)
        if spec is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value) or not spec["low"] <= value <= spec["high"]:
            continue
        spec["default"] = int(round(value)) if spec.get("type") == "int" else float(value)


def _text_of(doc: _Doc, name: str) -> str | None:
    i = doc.index_of(name)
    return None if i is None else doc.body[i].text


def _materialize(doc: _Doc, point: str) -> _Doc:
    """A document that defines ``point``, taking the baseline's function where it had none."""
    if doc.defines(point):
        return doc
    transplant(_baseline_doc().copy(), doc, point)
    return doc


def transplant(donor: _Doc, doc: _Doc, name: str) -> None:
    """Replace ``name`` in ``doc`` with the donor's, plus what it needs from the donor."""
    at = doc.remove(name)
    if name in DECISION_POINTS:
        doc.prune()  # the replaced function's helpers go with it
    needed = donor.closure([name])
    stmts = [donor.body[i].text for i in needed]
    used = {x for i in needed for x in donor.body[i].strings}
    tunables = {k: v for k, v in donor.tunables.items() if k in used}
    loads = {n for i in needed for n in donor.body[i].loads}
    imports = [s.text for s in donor.imports if s.binds & loads]
    doc.graft(stmts, tunables, imports, at)
    doc.prune()


def _slo_tunables(piece: ing.Ingredient, ctx: _Context) -> dict[str, Any]:
    return {
        k: ing.with_slo_defaults(v, k, ctx.ttft_s, ctx.tpot_s) for k, v in piece.tunables.items()
    }


def _current_piece(doc: _Doc, slot: str) -> str | None:
    text = _text_of(doc, ing.SLOT_FUNCTION[slot])
    if text is None:
        return None
    for piece in ing.slot_pieces(slot):
        if _Stmt.of(_split_statements(piece.code)[-1]).text == text:
            return piece.name
    return None


def _describe(doc: _Doc) -> str:
    """The docstring of a file the offline proposer composed: which piece fills each slot."""
    lines = [ing.COMPOSED_TITLE, ""]
    for slot in ing.SLOTS:
        fname = ing.SLOT_FUNCTION[slot]
        if not doc.defines(fname):
            continue
        name = _current_piece(doc, slot)
        piece = ing.get(name) if name else None
        wrapped = slot == "route" and doc.defines("_base_route")
        if piece is not None:
            text = f"{slot}: {piece.name}: {piece.summary}."
        elif wrapped:
            text = f"{slot}: a wrapper over the router _base_route."
        else:
            text = f"{slot}: {fname}, changed from a library piece by the edits below."
        lines += textwrap.wrap(text, 96, initial_indent="- ", subsequent_indent="  ")
    return "\n".join(lines)


def _insert_piece(doc: _Doc, piece: ing.Ingredient, ctx: _Context) -> None:
    if piece.slot in ("budget", "order") and not doc.is_template():
        _to_template(doc, piece, ctx)
        return
    fname = ing.SLOT_FUNCTION[piece.slot]
    at = doc.remove(fname)
    doc.prune()
    doc.graft(_piece_stmts(piece), _slo_tunables(piece, ctx), piece.imports, at)
    doc.prune()


def _to_template(doc: _Doc, piece: ing.Ingredient, ctx: _Context) -> None:
    """Rewrite the partition into budget/order form with ``piece`` in its slot."""
    other_slot = "order" if piece.slot == "budget" else "budget"
    other = ing.get("fcfs_order" if other_slot == "order" else "fixed_budget")
    at = doc.remove("partition")
    doc.prune()
    budget, order = (piece, other) if piece.slot == "budget" else (other, piece)
    stmts = _piece_stmts(budget) + _piece_stmts(order) + [ing.PARTITION_TEMPLATE]
    tunables = {**_slo_tunables(budget, ctx), **_slo_tunables(order, ctx)}
    doc.graft(stmts, tunables, budget.imports + order.imports, at)
    doc.prune()


def _insert_combination(doc: _Doc, order: str, budget: str, route: str, ctx: _Context) -> _Doc:
    o, b, r = ing.get(order), ing.get(budget), ing.get(route)
    at = doc.remove("partition")
    doc.prune()
    stmts = _piece_stmts(b) + _piece_stmts(o) + [ing.PARTITION_TEMPLATE]
    doc.graft(stmts, {**_slo_tunables(b, ctx), **_slo_tunables(o, ctx)}, b.imports + o.imports, at)
    at = doc.remove("route")
    doc.prune()
    doc.graft(_piece_stmts(r), _slo_tunables(r, ctx), r.imports, at)
    doc.prune()
    return doc


def _wrap(
    doc: _Doc,
    point: str,
    wrapper_code: str,
    piece: ing.Ingredient,
    ctx: _Context,
    wrapper_piece: bool = False,
) -> None:
    """Rename ``point`` to ``_base_<point>`` and put ``wrapper_code`` (calling it) in front."""
    _materialize(doc, point)
    base_name = f"_base_{point}"
    taken = doc.module_names()
    new_base = base_name if base_name not in taken else _fresh(base_name, taken)
    i = doc.index_of(point)
    assert i is not None
    doc.body[i] = _Stmt.of(doc.body[i].text.replace(f"def {point}(", f"def {new_base}(", 1))
    wrapper = (
        wrapper_code if new_base == base_name else _rename(wrapper_code, {base_name: new_base}, {})
    )
    stmts = [] if wrapper_piece else _piece_stmts(piece)
    doc.graft(stmts + [wrapper], _slo_tunables(piece, ctx), piece.imports, i + 1)
    doc.prune()
