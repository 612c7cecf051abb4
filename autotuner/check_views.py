"""The check's knowledge of the policy API: which value is which view, and its fields.

A model that writes ``replica.running`` in ``partition`` (a field of the ``ReplicaLoad`` entries
``route`` sees, not of the ``ReplicaView`` that ``partition`` gets) writes a file Python accepts:
it fails only when the line runs, perhaps in one workload out of five, or never. So the check
infers, without running anything, which names hold which view (``replica``, ``req`` in ``for req
in replica.waiting``, ``best = min(cluster.replicas, key=...)``, a helper's parameter when every
call passes the same view) and refuses a field the view does not have, with the view's fields.

The inference is deliberately conservative: a name bound to different kinds of values anywhere
in its scope is "unknown" and never checked, so a policy that passes is never refused here by a
guess. Types come from ``autotuner.api_views``, i.e. from ``sim/api.py`` itself.

Which function scopes bind a name lives in ``autotuner.check_scopes``.
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass

from autotuner.api_views import View, argument_views, views, where_field
from autotuner.check_scopes import FUNCTIONS as _FUNCTIONS
from autotuner.check_scopes import Scopes as _Scopes

_TUPLE_METHODS = frozenset({"count", "index"})
_MAPPING_METHODS = frozenset({"get", "keys", "values", "items", "copy"})
_MAX_ROUNDS = 25


@dataclass(frozen=True)
class _T:
    """What a name or expression holds, as far as the check can tell.

    kind: "bottom" (nothing seen yet), "view" (one view), "seq" (a tuple/list of views),
    "enum" (enumerate over a seq), "none" (the constant None), "params" (the params mapping),
    "top" (unknown: anything else, or conflicting bindings).
    """

    kind: str
    view: str = ""


BOTTOM, TOP, NONE, PARAMS = _T("bottom"), _T("top"), _T("none"), _T("params")


def _join(a: _T, b: _T) -> _T:
    if a == b or b.kind == "bottom":
        return a
    if a.kind == "bottom":
        return b
    if a.kind == "none" and b.kind in ("view", "seq"):
        return b  # best = None, later best = r: an optional view
    if b.kind == "none" and a.kind in ("view", "seq"):
        return a
    return TOP


def _element(t: _T) -> _T:
    if t.kind == "seq":
        return _T("view", t.view)
    return BOTTOM if t.kind == "bottom" else TOP


@dataclass(frozen=True)
class FieldIssue:
    node: ast.AST
    construct: str
    text: str
    # The one field the reason names as meant (``.index`` -> "replica", a single close spelling);
    # "" when the reason leaves a choice. The proposer's mechanical repair writes it in.
    field: str = ""


class _Inference:
    """Flow-insensitive types of every name, per scope, to a fixed point."""

    def __init__(self, tree: ast.Module, scopes: _Scopes):
        self.tree = tree
        self.scopes = scopes
        self.env: dict[tuple[int, str], _T] = {}
        self.defs: dict[str, ast.FunctionDef] = {
            s.name: s for s in tree.body if isinstance(s, ast.FunctionDef)}
        self.nodes = list(ast.walk(tree))
        self.functions = [n for n in self.nodes if isinstance(n, _FUNCTIONS)]
        # every read of a top-level function's name, by name (its call sites and other uses)
        self.uses: dict[str, list[ast.Name]] = {}
        for node in self.nodes:
            if (isinstance(node, ast.Name) and node.id in self.defs
                    and isinstance(node.ctx, ast.Load)
                    and scopes.resolve(node, node.id) is tree):
                self.uses.setdefault(node.id, []).append(node)

    # -- expressions ------------------------------------------------------------------------

    def name_type(self, node: ast.AST, name: str) -> _T:
        scope = self.scopes.resolve(node, name)
        if scope is None or scope is self.tree:
            return TOP  # a built-in, a module-level value (may change anywhere), or nothing
        return self.env.get((id(scope), name), BOTTOM)

    def typeof(self, node: ast.AST | None) -> _T:
        if node is None:
            return TOP
        if isinstance(node, ast.Name):
            return self.name_type(node, node.id)
        if isinstance(node, ast.Constant):
            return NONE if node.value is None else TOP
        if isinstance(node, ast.NamedExpr):
            return self.typeof(node.value)
        if isinstance(node, ast.IfExp):
            return _join(self.typeof(node.body), self.typeof(node.orelse))
        if isinstance(node, ast.Attribute):
            return self._attribute_type(node)
        if isinstance(node, ast.Subscript):
            base = self.typeof(node.value)
            if base.kind == "seq":
                return base if isinstance(node.slice, ast.Slice) else _T("view", base.view)
            return BOTTOM if base.kind == "bottom" else TOP
        if isinstance(node, (ast.ListComp, ast.GeneratorExp)):
            elt = self.typeof(node.elt)
            if elt.kind == "view":
                return _T("seq", elt.view)
            return BOTTOM if elt.kind == "bottom" else TOP
        if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
            joined = BOTTOM
            for elt in node.elts:
                joined = _join(joined, self.typeof(elt))
            return _T("seq", joined.view) if joined.kind == "view" else TOP
        if isinstance(node, ast.Call):
            return self._call_type(node)
        return TOP

    def _attribute_type(self, node: ast.Attribute) -> _T:
        base = self.typeof(node.value)
        if base.kind != "view":
            return BOTTOM if base.kind == "bottom" else TOP
        field = views()[base.view].field(node.attr)
        if field is None:
            return TOP
        if field.view:
            return _T("view", field.view)
        if field.entries:
            return _T("seq", field.entries)
        return TOP

    def _iterable_arg(self, call: ast.Call) -> ast.AST | None:
        """The argument of a recognised call whose entries a ``key``/predicate receives."""
        func = call.func
        name = func.id if isinstance(func, ast.Name) else None
        if name in ("min", "max", "sorted") and len(call.args) == 1:
            return call.args[0]
        if name in ("filter", "map") and len(call.args) == 2:
            return call.args[1]
        if (isinstance(func, ast.Attribute) and func.attr in ("nsmallest", "nlargest")
                and len(call.args) >= 2):
            return call.args[1]
        return None

    def _call_type(self, call: ast.Call) -> _T:
        func = call.func
        name = func.id if isinstance(func, ast.Name) else None
        if name is not None and self.scopes.resolve(call, name) is not None:
            return TOP  # a function of the file's own, not the built-in
        args = call.args
        if any(isinstance(a, ast.Starred) for a in args):
            return TOP
        if name in ("min", "max"):
            if len(args) == 1:
                return _element(self.typeof(args[0]))
            joined = BOTTOM
            for arg in args:
                joined = _join(joined, self.typeof(arg))
            return joined if joined.kind in ("view", "bottom") else TOP
        if name in ("sorted", "list", "tuple", "reversed") and len(args) == 1:
            inner = self.typeof(args[0])
            return inner if inner.kind in ("seq", "bottom") else TOP
        if name == "filter" and len(args) == 2:
            inner = self.typeof(args[1])
            return inner if inner.kind in ("seq", "bottom") else TOP
        if name == "enumerate" and args:
            inner = self.typeof(args[0])
            return _T("enum", inner.view) if inner.kind == "seq" else (
                BOTTOM if inner.kind == "bottom" else TOP)
        if name == "next" and args:
            first = args[0]
            if isinstance(first, ast.Call) and isinstance(first.func, ast.Name) and (
                    first.func.id == "iter") and first.args:
                first = first.args[0]
            found = _element(self.typeof(first))
            return _join(found, self.typeof(args[1])) if len(args) > 1 else found
        if isinstance(func, ast.Attribute) and func.attr in ("nsmallest", "nlargest") and (
                len(args) >= 2):
            inner = self.typeof(args[1])
            return inner if inner.kind in ("seq", "bottom") else TOP
        return TOP

    # -- bindings ---------------------------------------------------------------------------

    def _bind(self, out: dict[tuple[int, str], _T], scope: ast.AST, name: str, t: _T) -> None:
        key = (id(scope), name)
        out[key] = _join(out.get(key, BOTTOM), t)

    def _bind_target(self, out: dict, target: ast.AST, t: _T) -> None:
        if isinstance(target, ast.Name):
            self._bind(out, self.scopes.enclosing(target), target.id, t)
        elif isinstance(target, (ast.Tuple, ast.List)):
            parts: list[_T]
            if t.kind == "enum" and len(target.elts) == 2:
                parts = [TOP, _T("view", t.view)]
            else:
                parts = [TOP] * len(target.elts)
            for elt, part in zip(target.elts, parts, strict=True):
                self._bind_target(out, elt.value if isinstance(elt, ast.Starred) else elt,
                                  part if not isinstance(elt, ast.Starred) else TOP)
        elif isinstance(target, ast.Starred):
            self._bind_target(out, target.value, TOP)

    def _assign(self, out: dict, target: ast.AST, value: ast.AST) -> None:
        if (isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List))
                and len(target.elts) == len(value.elts)
                and not any(isinstance(e, ast.Starred) for e in (*target.elts, *value.elts))):
            for t_elt, v_elt in zip(target.elts, value.elts, strict=True):
                self._assign(out, t_elt, v_elt)
            return
        self._bind_target(out, target, self.typeof(value))

    def _parameter_types(self, out: dict) -> None:
        """Decision points get their views; a helper gets, per parameter, what its calls pass."""
        for fn in self.functions:
            a = fn.args
            params = [*a.posonlyargs, *a.args]
            decision = (isinstance(fn, ast.FunctionDef) and self.defs.get(fn.name) is fn
                        and fn.name in ("partition", "route"))
            if decision:
                kinds = argument_views(fn.name)
                for i, p in enumerate(params):
                    view = kinds[i] if i < len(kinds) else None
                    t = _T("view", view) if view else (PARAMS if p.arg == "params" else TOP)
                    self._bind(out, fn, p.arg, t)
            for p in (*a.kwonlyargs, *([a.vararg] if a.vararg else []),
                      *([a.kwarg] if a.kwarg else [])):
                self._bind(out, fn, p.arg, TOP)
            n_defaults = len(a.defaults)
            for i, p in enumerate(params):
                if i >= len(params) - n_defaults:
                    self._bind(out, fn, p.arg, TOP)
            if not decision and isinstance(fn, ast.Lambda):
                self._bind_lambda(out, fn, params)
            elif not decision:
                self._bind_helper(out, fn, params)

    def _bind_lambda(self, out: dict, fn: ast.Lambda, params: list[ast.arg]) -> None:
        call = self.scopes.parents.get(id(fn))
        kw = call if isinstance(call, ast.keyword) else None
        if kw is not None:
            call = self.scopes.parents.get(id(kw))
        t = TOP
        if isinstance(call, ast.Call) and params:
            iterable = self._iterable_arg(call)
            used_as_key = kw is not None and kw.arg == "key"
            used_as_fn = kw is None and call.args and call.args[0] is fn and isinstance(
                call.func, ast.Name) and call.func.id in ("filter", "map")
            if iterable is not None and (used_as_key or used_as_fn):
                t = _element(self.typeof(iterable))
        for i, p in enumerate(params):
            self._bind(out, fn, p.arg, t if i == 0 else TOP)

    def _bind_helper(self, out: dict, fn: ast.AST, params: list[ast.arg]) -> None:
        name = getattr(fn, "name", None)
        if name is None or self.defs.get(name) is not fn:
            for p in params:  # a nested def: its callers are not tracked
                self._bind(out, fn, p.arg, TOP)
            return
        used = False
        for node in self.uses.get(name, ()):
            used = True
            parent = self.scopes.parents.get(id(node))
            if isinstance(parent, ast.Call) and parent.func is node:
                self._bind_call(out, fn, params, parent)
                continue
            kw = parent if isinstance(parent, ast.keyword) else None
            call = self.scopes.parents.get(id(kw)) if kw is not None else None
            iterable = self._iterable_arg(call) if isinstance(call, ast.Call) else None
            if kw is not None and kw.arg == "key" and iterable is not None and params:
                self._bind(out, fn, params[0].arg, _element(self.typeof(iterable)))
                for p in params[1:]:
                    self._bind(out, fn, p.arg, TOP)
            else:  # passed around: its callers are unknown
                for p in params:
                    self._bind(out, fn, p.arg, TOP)
        if not used:
            for p in params:
                self._bind(out, fn, p.arg, TOP)

    def _bind_call(self, out: dict, fn: ast.AST, params: list[ast.arg], call: ast.Call) -> None:
        if any(isinstance(a, ast.Starred) for a in call.args) or any(
                k.arg is None for k in call.keywords):
            for p in params:
                self._bind(out, fn, p.arg, TOP)
            return
        given = {p.arg: self.typeof(arg) for p, arg in zip(params, call.args, strict=False)}
        given.update({k.arg: self.typeof(k.value) for k in call.keywords if k.arg})
        for p in params:
            self._bind(out, fn, p.arg, given.get(p.arg, TOP))

    def _round(self) -> dict[tuple[int, str], _T]:
        out: dict[tuple[int, str], _T] = {}
        self._parameter_types(out)
        for node in self.nodes:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    self._assign(out, target, node.value)
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                self._assign(out, node.target, node.value)
            elif isinstance(node, ast.AugAssign):
                self._bind_target(out, node.target, TOP)
            elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
                it = self.typeof(node.iter)
                self._bind_target(out, node.target, it if it.kind == "enum" else _element(it))
            elif isinstance(node, ast.NamedExpr):
                self._bind(out, self.scopes.function_of(node), node.target.id,
                           self.typeof(node.value))
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    self._bind(out, self.scopes.enclosing(node),
                               alias.asname or alias.name.split(".")[0], TOP)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                self._bind(out, self.scopes.enclosing(node), node.name, TOP)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self._bind(out, self.scopes.enclosing(node), node.name, TOP)
            elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
                self._bind(out, self.scopes.enclosing(node), node.name, TOP)
            elif isinstance(node, ast.MatchMapping) and node.rest:
                self._bind(out, self.scopes.enclosing(node), node.rest, TOP)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Del):
                self._bind(out, self.scopes.enclosing(node), node.id, TOP)
        return out

    def solve(self) -> bool:
        """Iterate to a fixed point; False (nothing checked) if it does not settle."""
        for _ in range(_MAX_ROUNDS):
            new = self._round()
            if new == self.env:
                return True
            self.env = new
        return False


def _fields_text(view: View) -> str:
    return ", ".join(view.field_names)


# Names a model reaches for that the API spells otherwise, with what the field holds: a
# replica's index is its field `replica` (Qwen2.5-Coder-1.5B wrote `best.id` in 2 of 24 proposals
# and, told the fields of ReplicaLoad, wrote it again: told the field by name, a repair has
# something to do); the requests in decode are `decodes` on the partition's replica and `running`
# on route's entries (it wrote `r.decodes` in route, then sent the file back twice).
_INDEX = "its index"
_IN_DECODE = "the number of requests in decode"
_SPELLED_OTHERWISE = {
    ("ReplicaView", "id"): ("replica", _INDEX), ("ReplicaView", "index"): ("replica", _INDEX),
    ("ReplicaLoad", "id"): ("replica", _INDEX), ("ReplicaLoad", "index"): ("replica", _INDEX),
    ("ReplicaLoad", "idx"): ("replica", _INDEX), ("ReplicaLoad", "replica_id"): ("replica", _INDEX),
    ("ReplicaView", "replica_id"): ("replica", _INDEX),
    ("ReplicaLoad", "decodes"): ("running", _IN_DECODE),
    ("ReplicaView", "running"): ("decodes", _IN_DECODE),
}


def meant_field(attr: str, view: View) -> str:
    """The one field of ``view`` that ``attr`` stands for: a spelling the API writes otherwise,
    or the single close match when no other view has ``attr``; "" when there is no one answer."""
    spelled = _SPELLED_OTHERWISE.get((view.name, attr))
    if spelled is not None:
        return spelled[0]
    if any(v.name != view.name for v in where_field(attr)):
        return ""
    close = difflib.get_close_matches(attr, view.field_names, n=2, cutoff=0.6)
    return close[0] if len(close) == 1 else ""


def _elsewhere(attr: str, view: View) -> str:
    """Where a field of that name does exist, when it is on another view."""
    spelled = _SPELLED_OTHERWISE.get((view.name, attr))
    if spelled is not None:
        field, what = spelled
        return f" ({what} is the field .{field} here: write .{field} instead of .{attr})"
    others = [v for v in where_field(attr) if v.name != view.name]
    if not others:
        close = difflib.get_close_matches(attr, view.field_names, n=1, cutoff=0.6)
        return f" (did you mean .{close[0]}?)" if close else ""
    where = " and ".join(f"{v.name} ({v.origin})" for v in others)
    return f"; '{attr}' is a field of {where}, not of {view.name}"


def _issue_for(node: ast.Attribute, t: _T) -> FieldIssue | None:
    attr = node.attr
    if attr.startswith("_"):
        return None  # the private-attribute rule has its own reason
    shown = ast.unparse(node.value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    if t.kind == "view":
        view = views()[t.view]
        if view.field(attr) is not None:
            return None
        return FieldIssue(node, "api-field", (
            f"'{shown}.{attr}': {shown} is a {view.name} ({view.origin}), which has no field "
            f"'{attr}'{_elsewhere(attr, view)}. {view.name} fields: {_fields_text(view)}"),
            meant_field(attr, view))
    if t.kind == "seq" and attr not in _TUPLE_METHODS:
        view = views()[t.view]
        hint = f"; '{attr}' is a field of each entry" if view.field(attr) else ""
        return FieldIssue(node, "api-field", (
            f"'{shown}.{attr}': {shown} is a tuple of {view.name}, one per entry{hint}: loop "
            f"over it (for x in {shown}: ... x.field) or index it ({shown}[i].field). "
            f"{view.name} fields: {_fields_text(view)}"))
    if t.kind == "params" and attr not in _MAPPING_METHODS:
        return FieldIssue(node, "params-attribute", (
            f"'{shown}.{attr}': params is a read-only mapping from tunable names to values; "
            f"read a tunable as params[\"{attr}\"]"))
    return None


def view_issues(tree: ast.Module, parents: dict[int, ast.AST]) -> list[FieldIssue]:
    """Attribute reads that the policy API does not have, with the fields that it does."""
    scopes = _Scopes(tree, parents)
    inference = _Inference(tree, scopes)
    if not inference.solve():
        return []
    issues: list[FieldIssue] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            found = _issue_for(node, inference.typeof(node.value))
            if found is not None:
                issues.append(found)
        elif isinstance(node, ast.Subscript):
            t = inference.typeof(node.value)
            key = node.slice
            if t.kind == "view" and isinstance(key, ast.Constant) and isinstance(key.value, str):
                view = views()[t.view]
                shown = ast.unparse(node.value)
                issues.append(FieldIssue(node, "api-field", (
                    f"'{ast.unparse(node)}': a {view.name} is a named tuple, not a dict; read "
                    f"fields as {shown}.{view.field_names[0]}. {view.name} fields: "
                    f"{_fields_text(view)}")))
    return issues

