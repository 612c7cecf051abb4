"""Edits to numbers and comparisons inside one statement, by source span.

Only the span of the changed node is rewritten, so the rest of the statement's text, comments
included, stays exactly as it was.
"""

from __future__ import annotations

import ast
import math
import random
from collections.abc import Mapping
from typing import Any

from autotuner.proposers import ingredients as ing


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


def replace_span(text: str, node: ast.AST, new: str) -> str:
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


def numeric_constants(text: str) -> list[tuple[ast.Constant, str | None, bool]]:
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


def format_number(value: float, like_int: bool) -> str:
    if like_int:
        return str(int(value))
    return repr(float(f"{value:.4g}"))


def scaled(value: float, rng: random.Random, like_int: bool) -> float:
    factor = math.exp(max(-1.4, min(1.4, rng.gauss(0.0, 0.5))))
    new = value * factor
    if like_int:
        new = float(round(new))
        if new == value:
            new = value + (1 if rng.random() < 0.5 or value <= 2 else -1) * max(1, abs(value) // 8)
    return new


def range_around(value: float, like_int: bool) -> dict[str, Any]:
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
