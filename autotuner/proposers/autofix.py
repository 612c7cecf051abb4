"""Mistakes the tool repairs itself, before paying for another model call.

Measured with Qwen2.5-Coder-1.5B: told "line 12: the name 'floor' is used but is not defined:
import it from math", the model sent the same file back, or fixed that line and broke another;
the repair loop recovered 2 of 12 proposals. Some refusals have exactly one fix that changes
nothing the policy means, and the tool writes it in:

- a function from an allowed module called without its import (``floor``, ``ceil``, ``sqrt``):
  the import is added at the top;
- a tunable used as a bare name in partition or route (``chunk_size``): read as
  ``params["chunk_size"]``;
- a tunable read as a field of a view (``replica.chunk_size``): read as ``params[...]``;
- a field that the API spells otherwise (``r.index`` for ``r.replica``) or a misspelt field with
  exactly one close match on that view and no other view that has it;
- a ``params`` key that TUNABLES does not declare, with exactly one close declared name and no
  field of that name anywhere in the API;
- a TUNABLES entry with a key the format does not have (Optuna's ``"step"``): the key is
  dropped, which leaves the policy's code as it was and the search space a continuous range.

Anything with a choice in it (a local of another function, a bound that reads a runtime value,
a field that lives on another view) is left to the model. The result goes through the same check
and dry run as any reply; each fix is one line, reported in the log and the proposal's record.
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass

from autotuner.api_views import where_field
from autotuner.check import BUILTIN_NAMES, tunable_names, tunables_node_ids
from autotuner.check_scopes import scopes_for
from autotuner.check_views import view_issues
from autotuner.policy import ALLOWED_MODULES, PARSE_LOCK, TUNABLE_KEYS

_PARAMS_POSITION = {"partition": 1, "route": 2}  # params' place in each decision's signature
_ROUNDS = 3  # a fix can uncover another (an import once a tunable is read from params)


@dataclass(frozen=True)
class _Splice:
    """Replace columns [col, end) of one line (1-based line, UTF-8 byte columns as ast gives)."""

    line: int
    col: int
    end: int
    text: str
    note: str  # what was done, for the record ("line 12: ...")


def mechanical_repair(code: str) -> tuple[str, tuple[str, ...]]:
    """The file with every mechanical fix written in, and one line per fix (none: the file as
    it was). Never raises: a file that does not parse is returned unchanged."""
    notes: list[str] = []
    for _ in range(_ROUNDS):
        try:
            with PARSE_LOCK:
                tree = ast.parse(code)
            splices, imports = _plan(tree)
        except Exception:  # a repair is optional; the check says what is wrong with the file
            break
        if not splices and not imports:
            break
        code = _add_imports(_apply(code, splices), tree, imports)
        notes += [s.note for s in splices]
        notes += [f"added 'from {module} import {', '.join(names)}'"
                  for module, names in imports.items()]
    return code, tuple(notes)


def _plan(tree: ast.Module) -> tuple[list[_Splice], dict[str, list[str]]]:
    parents = {id(c): p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    scopes = scopes_for(tree, parents)
    tunables = tunable_names(tree)
    in_tunables = tunables_node_ids(tree)
    params_of = _params_names(tree)
    splices: list[_Splice | None] = []
    imports: dict[str, list[str]] = {}

    def decision(node: ast.AST) -> ast.FunctionDef | None:
        """The partition/route function (with a params argument) a node sits in."""
        cur = parents.get(id(node))
        while cur is not None and not (isinstance(cur, ast.FunctionDef)
                                       and parents.get(id(cur)) is tree):
            cur = parents.get(id(cur))
        return cur if isinstance(cur, ast.FunctionDef) and cur.name in params_of else None

    for node in ast.walk(tree):
        if id(node) in in_tunables:
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            name = node.id
            if scopes.resolve(node, name) is not None or name in BUILTIN_NAMES:
                continue
            func = decision(node)
            homes = [m for m, members in ALLOWED_MODULES.items() if name in members]
            if name in tunables and not homes and func is not None:
                params = params_of[func.name]
                splices.append(_splice(node, f'{params}["{name}"]',
                                       f'line {node.lineno}: the tunable {name} read as '
                                       f'{params}["{name}"]'))
            elif homes and name not in tunables and _called(node, parents):
                module = "math" if "math" in homes else homes[0]
                if name not in imports.setdefault(module, []):
                    imports[module].append(name)
        elif isinstance(node, ast.Subscript):
            func = decision(node)
            key = node.slice
            if (func is None or not isinstance(node.value, ast.Name)
                    or node.value.id != params_of[func.name] or not isinstance(key, ast.Constant)
                    or not isinstance(key.value, str) or key.value in tunables
                    or where_field(key.value)):
                continue
            close = difflib.get_close_matches(key.value, sorted(tunables), n=2, cutoff=0.6)
            if len(close) == 1:
                splices.append(_splice(key, repr(close[0]).replace("'", '"'),
                                       f'line {key.lineno}: params key "{key.value}" read as '
                                       f'"{close[0]}", the tunable TUNABLES declares'))
    for issue in view_issues(tree, parents):
        node = issue.node
        if not isinstance(node, ast.Attribute) or node.end_lineno != node.lineno:
            continue
        func = decision(node)
        if issue.field:
            end = node.end_col_offset or 0
            splices.append(_Splice(node.lineno, end - len(node.attr.encode()), end, issue.field,
                                   f"line {node.lineno}: .{node.attr} written as "
                                   f".{issue.field}"))
        elif node.attr in tunables and func is not None and issue.construct == "api-field":
            params = params_of[func.name]
            splices.append(_splice(node, f'{params}["{node.attr}"]',
                                   f"line {node.lineno}: {ast.unparse(node)} (a tunable) read "
                                   f'as {params}["{node.attr}"]'))
    splices += _unknown_tunable_keys(tree)
    for names in imports.values():
        names.sort()
    return _disjoint([s for s in splices if s is not None]), {m: n for m, n in imports.items()
                                                               if n}


def _unknown_tunable_keys(tree: ast.Module) -> list[_Splice]:
    """A splice that drops each ``"key": value`` pair of a TUNABLES entry that the format does
    not know, with the comma beside it (a pair that shares its line with another)."""
    out = []
    for stmt in tree.body:
        if not (isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Dict)
                and any(isinstance(t, ast.Name) and t.id == "TUNABLES" for t in stmt.targets)):
            continue
        for entry, spec in zip(stmt.value.keys, stmt.value.values, strict=True):
            if not isinstance(spec, ast.Dict) or not isinstance(entry, ast.Constant):
                continue
            pairs = list(zip(spec.keys, spec.values, strict=True))
            for i, (key, value) in enumerate(pairs):
                if (not isinstance(key, ast.Constant) or key.value in TUNABLE_KEYS
                        or key.lineno != value.end_lineno):
                    continue
                after = pairs[i + 1][0] if i + 1 < len(pairs) else None
                before = pairs[i - 1][1] if i else None
                if after is not None and after.lineno == key.lineno:
                    span = (key.col_offset, after.col_offset)  # the pair and its comma
                elif before is not None and before.end_lineno == key.lineno:
                    span = (before.end_col_offset or 0, value.end_col_offset or 0)
                else:
                    continue  # alone on its line: left to the model
                out.append(_Splice(key.lineno, *span, "",
                                   f"line {key.lineno}: TUNABLES[{entry.value!r}] key "
                                   f"{key.value!r} dropped (not a TUNABLES key)"))
    return out


def _called(node: ast.Name, parents: dict[int, ast.AST]) -> bool:
    """Whether the name is called (``floor(x)``): a bare ``e`` or ``inf`` is more likely a
    variable the model forgot to define than math's constant."""
    call = parents.get(id(node))
    return isinstance(call, ast.Call) and call.func is node


def _params_names(tree: ast.Module) -> dict[str, str]:
    """partition/route -> the name of its params argument, for those that take one."""
    out = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef) and stmt.name in _PARAMS_POSITION:
            args = stmt.args.posonlyargs + stmt.args.args
            if len(args) > _PARAMS_POSITION[stmt.name]:
                out[stmt.name] = args[_PARAMS_POSITION[stmt.name]].arg
    return out


def _splice(node: ast.AST, text: str, note: str) -> _Splice | None:
    """Replace the node's text; None for a node written over several lines (left alone)."""
    line = getattr(node, "lineno", 0)
    if getattr(node, "end_lineno", None) != line:
        return None
    return _Splice(line, getattr(node, "col_offset", 0), getattr(node, "end_col_offset", 0) or 0,
                   text, note)


def _disjoint(splices: list[_Splice]) -> list[_Splice]:
    """Splices that do not overlap (the first of two that do wins), in order."""
    kept: list[_Splice] = []
    for s in sorted(splices, key=lambda s: (s.line, s.col)):
        if kept and kept[-1].line == s.line and s.col < kept[-1].end:
            continue
        kept.append(s)
    return kept


def _apply(code: str, splices: list[_Splice]) -> str:
    lines = code.splitlines(keepends=True)
    for s in sorted(splices, key=lambda s: (s.line, s.col), reverse=True):
        raw = lines[s.line - 1].encode()
        lines[s.line - 1] = (raw[: s.col] + s.text.encode() + raw[s.end:]).decode()
    return "".join(lines)


def _add_imports(code: str, tree: ast.Module, imports: dict[str, list[str]]) -> str:
    """The import lines after the file's last top-level import, else after its docstring."""
    if not imports:
        return code
    after = 0
    for i, stmt in enumerate(tree.body):
        docstring = (i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
                     and isinstance(stmt.value.value, str))
        if docstring or isinstance(stmt, (ast.Import, ast.ImportFrom)):
            after = stmt.end_lineno or after
    added = "".join(f"from {module} import {', '.join(names)}\n"
                    for module, names in imports.items())
    lines = code.splitlines(keepends=True)
    if after and after <= len(lines) and not lines[after - 1].endswith("\n"):
        lines[after - 1] += "\n"
    return "".join(lines[:after]) + added + "".join(lines[after:])
