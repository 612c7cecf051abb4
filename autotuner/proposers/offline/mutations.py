"""The offline proposer's mutation operators: each edits a copy of the parent in place.

An operator returns one line saying what it changed (it ends up in the file's docstring and in
the archive) or raises ``NoMutation`` when it does not apply to this file; the proposer then
tries another. Every random choice comes from the context's generator, so a proposal is a pure
function of the seed, the request and the proposal's index.
"""

from __future__ import annotations

import ast
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from autotuner.policy import DECISION_POINTS
from autotuner.proposers import ingredients as ing
from autotuner.proposers.base import ParentInfo
from autotuner.proposers.offline.literal_edits import (
    format_number,
    numeric_constants,
    range_around,
    replace_span,
    scaled,
)
from autotuner.proposers.offline.policy_doc import PolicyDoc, Statement, fresh_name
from autotuner.proposers.offline.recombination import (
    SloTargets,
    current_piece,
    insert_piece,
    materialize,
    transplant,
    wrap_function,
)


class NoMutation(Exception):
    """This operation does not apply to this file (nothing to perturb, no inspiration...)."""


@dataclass
class MutationContext:
    """What one proposal's operators share: its random stream, the SLO targets, the archive
    members it may borrow from, and those members parsed (once each)."""

    rng: random.Random
    slo: SloTargets
    inspirations: tuple[ParentInfo, ...]
    parent: ParentInfo | None = None
    _docs: dict[int, PolicyDoc] = field(default_factory=dict)

    def parsed(self, info: ParentInfo) -> PolicyDoc:
        """An inspiration as a document with its tuned values baked in (a fresh copy)."""
        key = id(info)
        if key not in self._docs:
            doc = PolicyDoc.parse(info.code)
            doc.bake(info.params)
            self._docs[key] = doc
        return self._docs[key].copy()


# Scenarios where routing (prefix affinity, load balance of very long prompts) is what pays;
# elsewhere the queue order does (see ingredients' module docstring).
ROUTING_BOUND = ("multiturn", "mixed", "mooncake", "conv")


def slot_weights(parent: ParentInfo | None) -> dict[str, float]:
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
    routing = [v for k, v in gains.items() if any(w in k.lower() for w in ROUTING_BOUND)]
    queueing = [v for k, v in gains.items() if not any(w in k.lower() for w in ROUTING_BOUND)]
    if routing and queueing:
        if min(routing) < min(queueing):
            weights["route"] *= 2
        else:
            weights["order"] *= 2
    return weights


def insert(doc: PolicyDoc, ctx: MutationContext) -> str:
    weights = slot_weights(ctx.parent)
    slot = ctx.rng.choices(list(weights), weights=list(weights.values()))[0]
    pieces = ing.slot_pieces(slot)
    # Stronger pieces more often, every piece sometimes.
    weights = [1.0 / (1 + p.rank / 10) for p in pieces]
    current = current_piece(doc, slot)
    choices = [(p, w) for p, w in zip(pieces, weights, strict=True) if p.name != current]
    piece = ctx.rng.choices([p for p, _ in choices], weights=[w for _, w in choices])[0]
    insert_piece(doc, piece, ctx.slo)
    return f"insert {slot} piece {piece.name}"


def recombine(doc: PolicyDoc, ctx: MutationContext) -> str:
    donor_info = ctx.rng.choice(ctx.inspirations)
    donor = ctx.parsed(donor_info)
    shared = [
        n
        for n in donor.function_names()
        if n not in DECISION_POINTS and doc.defines(n) and doc.text_of(n) != donor.text_of(n)
    ]
    names = [n for n in DECISION_POINTS if doc.text_of(n) != donor.text_of(n)]
    candidates = names * 3 + shared
    if not candidates:
        raise NoMutation("the inspiration's functions equal the parent's")
    name = ctx.rng.choice(candidates)
    if not donor.defines(name):
        donor = materialize(donor, name)
    transplant(donor, doc, name)
    return f"take {name} from {donor_info.candidate_id}"


def wrap(doc: PolicyDoc, ctx: MutationContext) -> str:
    if ctx.rng.random() < 0.5:
        piece = ctx.rng.choices(
            [o for o in ing.ORDERS if o.name != "fcfs_order"],
            weights=[1.0 / (1 + o.rank / 10) for o in ing.ORDERS if o.name != "fcfs_order"],
        )[0]
        if doc.defines("_order"):
            raise NoMutation("the partition already has an order piece")
        wrap_function(doc, "partition", ing.ORDER_WRAPPER, piece, ctx.slo)
        return f"re-order the partition's chunks with {piece.name}"
    piece = ctx.rng.choice(ing.ROUTE_WRAPPERS)
    wrap_function(doc, "route", piece.code, piece, ctx.slo, wrapper_piece=True)
    return f"wrap the router with {piece.name}"


def constant(doc: PolicyDoc, ctx: MutationContext) -> str:
    found = [
        (i, node, fn) for i, s in enumerate(doc.body) for node, fn, _ in numeric_constants(s.text)
    ]
    if not found:
        raise NoMutation("no numeric constant in the code")
    i, node, fn = ctx.rng.choice(found)
    like_int = isinstance(node.value, int)
    new = scaled(float(node.value), ctx.rng, like_int)
    text = replace_span(doc.body[i].text, node, format_number(new, like_int))
    doc.body[i] = Statement.of(text)
    return f"constant {node.value!r} -> {format_number(new, like_int)} in {fn or 'module'}"


def promote(doc: PolicyDoc, ctx: MutationContext) -> str:
    found = [
        (i, node, fn)
        for i, s in enumerate(doc.body)
        for node, fn, ok in numeric_constants(s.text)
        if ok and fn
    ]
    if not found:
        raise NoMutation("no constant where params is in scope")
    i, node, fn = ctx.rng.choice(found)
    like_int = isinstance(node.value, int)
    base = re.sub(r"[^a-z0-9_]", "", (fn or "k").lower().lstrip("_")) or "k"
    taken = set(doc.tunables) | {x for s in doc.body for x in s.strings}
    name = fresh_name(f"{base}_const", taken) if f"{base}_const" in taken else f"{base}_const"
    spec = range_around(float(node.value), like_int)
    spec["default"] = int(node.value) if like_int else float(node.value)
    text = replace_span(doc.body[i].text, node, f'params["{name}"]')
    doc.body[i] = Statement.of(text)
    doc.tunables[name] = spec
    return f"declare {node.value!r} in {fn} as tunable {name}"


def tunable(doc: PolicyDoc, ctx: MutationContext) -> str:
    if not doc.tunables:
        raise NoMutation("no tunables")
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
            raise NoMutation(f"{name}: the default did not move")
        spec["default"] = new
        return f"default of {name} {default!r} -> {new!r}"
    if ctx.rng.random() < 0.5:
        new_low = low / 2 if (log or low > 0) else low - 0.5 * (high - low)
        if is_int:
            new_low = math.floor(new_low)
            if log:
                new_low = max(1, new_low)
        if new_low == low or abs(new_low) > 1e12:
            raise NoMutation(f"{name}: low cannot widen")
        spec["low"] = new_low
        return f"widen {name} down to {new_low!r}"
    new_high = high * 2 if high > 0 else high + 0.5 * (high - low)
    if is_int:
        new_high = math.ceil(new_high)
    if new_high == high or abs(new_high) > 1e12:
        raise NoMutation(f"{name}: high cannot widen")
    spec["high"] = new_high
    return f"widen {name} up to {new_high!r}"


def compare(doc: PolicyDoc, ctx: MutationContext) -> str:
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
        raise NoMutation("no comparison to flip")
    i, node = ctx.rng.choice(found)
    old = ast.unparse(node)
    flip_strict = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt}
    flip_dir = {ast.Lt: ast.Gt, ast.Gt: ast.Lt, ast.LtE: ast.GtE, ast.GtE: ast.LtE}
    table = flip_strict if ctx.rng.random() < 0.6 else flip_dir
    node.ops = [table[type(node.ops[0])]()]
    new = ast.unparse(node)
    doc.body[i] = Statement.of(replace_span(doc.body[i].text, node, new))
    return f"comparison {old} -> {new}"


Operator = Callable[[PolicyDoc, MutationContext], str]

OPERATORS: dict[str, Operator] = {
    "insert": insert,
    "recombine": recombine,
    "wrap": wrap,
    "constant": constant,
    "promote": promote,
    "tunable": tunable,
    "compare": compare,
}
