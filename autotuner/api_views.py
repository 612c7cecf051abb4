"""The policy API as data: which views a policy receives, their fields, types and meanings.

``autotuner.sim.api`` is the one definition of what a policy can read. The static check (which
fields exist on which value) and the prompt (a one-line-per-field reference) both need that
definition as data, so it is derived here from the NamedTuples themselves (``_fields`` and their
type hints) and from the comments beside each field in ``api.py``: adding a field there reaches
the check and the prompt without an edit anywhere else.
"""

from __future__ import annotations

import ast
import functools
import io
import re
import tokenize
import typing
from dataclasses import dataclass
from pathlib import Path

from autotuner.sim import api

# What each decision point receives, by position: (parameter name, view class or None for a
# plain mapping). The names are the ones the file format prescribes.
DECISION_ARGS: dict[str, tuple[tuple[str, type | None], ...]] = {
    "partition": (("replica", api.ReplicaView), ("params", None)),
    "route": (("request", api.RequestView), ("cluster", api.ClusterView), ("params", None)),
}


@dataclass(frozen=True)
class Field:
    """One field of a view. ``view``: the view it holds (a nested view), ``entries``: the view of
    each entry when it is a tuple of views; both None for plain numbers."""

    name: str
    type_text: str  # as the model reads it: "int", "float", "tuple[WaitingView, ...]"
    note: str  # the comment beside the field in api.py ("" when there is none)
    view: str | None = None
    entries: str | None = None


@dataclass(frozen=True)
class View:
    """One view class: its name, fields in order, and where a policy gets one (``origin``)."""

    name: str
    doc: str  # first line of its docstring
    origin: str  # "the replica argument of partition", "an entry of replica.waiting"
    expr: str  # how a policy reaches one: "replica", "replica.waiting[i]"
    fields: tuple[Field, ...]

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)


def _type_text(hint: object) -> str:
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{_type_text(args[0])}, ...]"
        return "tuple"
    return getattr(hint, "__name__", str(hint))


def _is_view(hint: object) -> bool:
    return isinstance(hint, type) and issubclass(hint, tuple) and hasattr(hint, "_fields")


@functools.lru_cache(maxsize=1)
def _field_comments() -> dict[tuple[str, str], str]:
    """(class, field) -> the comment written beside the field in api.py, continuation lines
    (a comment-only line right below, indented like it) included."""
    path = Path(api.__file__)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:  # an installation without sources: the notes are only for the prompt
        return {}
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = text.splitlines()
    out: dict[tuple[str, str], str] = {}
    for cls in ast.parse(text).body:
        if not isinstance(cls, ast.ClassDef):
            continue
        for stmt in cls.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            parts = [comments.get(stmt.lineno, "")]
            row = stmt.lineno + 1
            while row <= len(lines) and lines[row - 1].strip().startswith("#"):
                parts.append(comments.get(row, ""))
                row += 1
            out[(cls.name, stmt.target.id)] = _plain(" ".join(p for p in parts if p))
    return out


def _plain(note: str) -> str:
    """A comment as a reader of the prompt needs it: no reST quotes, api.py's constants as
    their values (``MAX_WAITING_VIEW`` -> 256)."""
    note = note.replace("``", "")
    for word in set(re.findall(r"\b[A-Z][A-Z0-9_]{2,}\b", note)):
        value = getattr(api, word, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            note = re.sub(rf"\b{word}\b", str(value), note)
    return note


def _build_view(cls: type, origin: str, expr: str, found: dict[str, View]) -> None:
    hints = typing.get_type_hints(cls)
    notes = _field_comments()
    fields = []
    nested: list[tuple[type, str, str]] = []
    for name in cls._fields:  # type: ignore[attr-defined]
        hint = hints[name]
        view = entries = None
        if _is_view(hint):
            view = hint.__name__
            nested.append((hint, f"{expr}.{name}", f"{expr}.{name}"))
        elif typing.get_origin(hint) is tuple:
            args = typing.get_args(hint)
            if args and _is_view(args[0]):
                entries = args[0].__name__
                nested.append((args[0], f"an entry of {expr}.{name}", f"{expr}.{name}[i]"))
        fields.append(Field(name, _type_text(hint), notes.get((cls.__name__, name), ""),
                            view, entries))
    doc = (cls.__doc__ or "").strip().splitlines()
    found[cls.__name__] = View(cls.__name__, doc[0] if doc else "", origin, expr, tuple(fields))
    for sub, sub_origin, sub_expr in nested:
        if sub.__name__ not in found:
            _build_view(sub, sub_origin, sub_expr, found)


@functools.lru_cache(maxsize=1)
def views() -> dict[str, View]:
    """Every view a policy can reach, by class name, in the order a reader meets them."""
    found: dict[str, View] = {}
    for point, args in DECISION_ARGS.items():
        for arg, cls in args:
            if cls is not None and cls.__name__ not in found:
                _build_view(cls, f"the {arg} argument of {point}", arg, found)
    return found


def argument_views(point: str) -> tuple[str | None, ...]:
    """The view class name of each positional parameter of a decision point (None: not a view)."""
    return tuple(None if cls is None else cls.__name__ for _, cls in DECISION_ARGS[point])


def argument_names(point: str) -> tuple[str, ...]:
    return tuple(name for name, _ in DECISION_ARGS[point])


def where_field(name: str) -> list[View]:
    """The views that have a field called ``name`` (to say where a misplaced one lives)."""
    return [v for v in views().values() if v.field(name) is not None]


def point_views(point: str) -> list[View]:
    """The views a decision point can reach: its arguments' views, then their entries."""
    found: list[View] = []
    todo = [name for name in argument_views(point) if name]
    while todo:
        view = views()[todo.pop(0)]
        if view in found:
            continue
        found.append(view)
        todo.extend(f.view or f.entries for f in view.fields if f.view or f.entries)
    return found
