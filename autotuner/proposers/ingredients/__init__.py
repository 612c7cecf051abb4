"""Known-good heuristic pieces as policy-file code, for the offline proposer to insert and combine.

A partition here is always the same stall-free fill (``PARTITION_TEMPLATE``: decodes first, then
prefill chunks in some order until the budget or the free KV cache runs out) split into two
pluggable pieces, so that the proposer can recombine them independently:

- a **budget** piece defines ``_budget(replica, params)``: how many tokens this iteration runs;
- an **order** piece defines ``_order(replica, params)``: which waiting requests get them first.

A **route** piece defines ``route(request, cluster, params)`` itself.

Each piece is ordinary policy code (it passes ``autotuner.check``), declares its numeric knobs as
tunables with ranges wide enough for Optuna to matter, and keeps its helper and state names
prefixed by the piece so that any budget, order and route can live in one file. Tunable names are
unique across the whole library for the same reason (a test checks both).

Why these pieces (figures from ``scripts/explore_heuristics.py``: capacity under SLO, 4 replicas
of Llama-3-8B on H100, TTFT 2 s, TPOT 100 ms, 90 % of requests): routing by waiting prefill work
net of prefix-cache hits is worth +2..3 % on chat and summarization and +70..140 % on multiturn
and mixed traffic (a 100k-token prompt behind round robin stalls a replica for seconds, and every
turn of a session that lands elsewhere re-prefills its history); ordering the queue shortest
remaining prefill first, with requests that can no longer meet their TTFT target moved last,
was credited another +10..35 % by the old share-only yardstick, nearly all of it bought by
deferring the longest prompts; under the per-request, sustainable yardstick (``sim/metrics.py``)
such orders buy no sustainable rate and the gate refuses them for the inversions and the tail
they cause, so they stay in the library only as raw material; the budget shape matters little
once the chunk is large (per-token cost is flat above ~512 tokens and the 100 ms TPOT target
leaves room), so budgets are the weakest pieces and are here for diversity.

Layout: ``piece`` defines what a piece is; ``partition`` (budgets, orders, the fill that joins
them) and ``route`` (routers, router wrappers) are the catalogue, pure data; this module holds
the helpers that look pieces up and compose them into whole policy files.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

from autotuner.proposers.ingredients.partition import (
    BUDGETS,
    ORDER_WRAPPER,
    ORDERS,
    PARTITION_TEMPLATE,
)
from autotuner.proposers.ingredients.piece import (
    COMPOSED_TITLE,
    DEFAULT_TPOT_S,
    DEFAULT_TTFT_S,
    SLOT_FUNCTION,
    SLOTS,
    Ingredient,
    tunable_spec,
)
from autotuner.proposers.ingredients.route import ROUTE_WRAPPERS, ROUTES

ALL: tuple[Ingredient, ...] = BUDGETS + ORDERS + ROUTES
BY_NAME: dict[str, Ingredient] = {i.name: i for i in ALL + ROUTE_WRAPPERS}

# What the research found strongest, in order: the proposer's first proposals from a parent
# that lacks them. (order, budget, route)
STRONG_COMBINATIONS: tuple[tuple[str, str, str], ...] = (
    ("slack_srpf_order", "fixed_budget", "least_work_route"),  # the best overall
    ("srpf_aging_order", "fixed_budget", "least_work_route"),  # bounded wait, less starvation
    ("slack_srpf_order", "kv_guard_budget", "least_work_route"),  # best on multiturn
    ("srpf_order", "fixed_budget", "prefix_guard_route"),
    ("aged_srpf_order", "fixed_budget", "kv_guard_work_route"),
    ("slack_srpf_order", "fixed_budget", "least_outstanding_route"),  # best on mixed
    ("edf_slack_order", "tpot_budget", "least_work_route"),
    ("fcfs_order", "fixed_budget", "least_work_route"),  # routing alone: an ablation point
)


def get(name: str) -> Ingredient:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no ingredient {name!r}; known: {', '.join(sorted(BY_NAME))}") from None


def slot_pieces(slot: str) -> tuple[Ingredient, ...]:
    return {"budget": BUDGETS, "order": ORDERS, "route": ROUTES}[slot]


def with_slo_defaults(
    spec: Mapping[str, Any], name: str, ttft_s: float, tpot_s: float
) -> dict[str, Any]:
    """A tunable spec whose default follows the campaign's SLO, for the SLO-aware knobs."""
    out = dict(spec)
    target = ttft_s if name in ("slack_ttft_s", "edf_ttft_s") else None
    if name == "tpot_target_s":
        target = tpot_s
    if target is not None and out["low"] <= target <= out["high"]:
        out["default"] = float(target)
    return out


def render_tunables(tunables: Mapping[str, Mapping[str, Any]]) -> str:
    """``TUNABLES = {...}`` with one tunable per line, keys in a fixed order."""
    if not tunables:
        return "TUNABLES = {}\n"
    lines = ["TUNABLES = {"]
    for name, spec in tunables.items():
        keys = [k for k in ("type", "low", "high", "log", "default") if k in spec]
        body = ", ".join(f"{k!r}: {spec[k]!r}" for k in keys).replace("'", '"')
        lines.append(f'    "{name}": {{{body}}},')
    lines.append("}")
    return "\n".join(lines) + "\n"


def compose(
    order: str,
    budget: str,
    route: str,
    *,
    ttft_s: float = DEFAULT_TTFT_S,
    tpot_s: float = DEFAULT_TPOT_S,
    title: str = "",
) -> str:
    """A whole policy file from one budget, one order and one route piece."""
    pieces = [get(budget), get(order), get(route)]
    for piece, slot in zip(pieces, ("budget", "order", "route"), strict=True):
        if piece.slot != slot:
            raise ValueError(f"{piece.name} is a {piece.slot} piece, not a {slot} piece")
    imports = sorted({imp for p in pieces for imp in p.imports})
    tunables: dict[str, Any] = {}
    for p in pieces:
        for name, spec in p.tunables.items():
            tunables[name] = with_slo_defaults(spec, name, ttft_s, tpot_s)
    doc = [title or COMPOSED_TITLE, ""]
    for p in pieces:
        doc += textwrap.wrap(
            f"{p.slot}: {p.name}: {p.summary}.", 96, initial_indent="- ", subsequent_indent="  "
        )
    out = ['"""' + "\n".join(doc) + '\n"""\n']
    if imports:
        out.append("\n".join(imports) + "\n")
    out.append(render_tunables(tunables))
    for code in (pieces[0].code, pieces[1].code, PARTITION_TEMPLATE, pieces[2].code):
        out.append("\n" + code)
    return "\n".join(out)


__all__ = [
    "ALL",
    "BUDGETS",
    "BY_NAME",
    "COMPOSED_TITLE",
    "DEFAULT_TPOT_S",
    "DEFAULT_TTFT_S",
    "ORDERS",
    "ORDER_WRAPPER",
    "PARTITION_TEMPLATE",
    "ROUTES",
    "ROUTE_WRAPPERS",
    "SLOTS",
    "SLOT_FUNCTION",
    "STRONG_COMBINATIONS",
    "Ingredient",
    "compose",
    "get",
    "render_tunables",
    "slot_pieces",
    "tunable_spec",
    "with_slo_defaults",
]
