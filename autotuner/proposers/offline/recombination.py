"""Moving code between files: catalogue pieces into slots, functions from other archive members.

Every operation here edits a ``PolicyDoc`` in place through ``graft`` and ``prune``: what is
brought in comes with the helpers, state, imports and tunables it needs, renamed where it would
clash, and what is replaced leaves with whatever only it used.
"""

from __future__ import annotations

import functools
import textwrap
from dataclasses import dataclass
from typing import Any

from autotuner.policy import DECISION_POINTS, FALLBACK_BASELINE, read_policy_file
from autotuner.proposers import ingredients as ing
from autotuner.proposers.offline.policy_doc import (
    PolicyDoc,
    Statement,
    fresh_name,
    renamed,
    split_statements,
)
from autotuner.resources import baseline_path


@dataclass(frozen=True)
class SloTargets:
    """The campaign's latency targets (seconds): the SLO-aware pieces' tunable defaults."""

    ttft_s: float = ing.DEFAULT_TTFT_S
    tpot_s: float = ing.DEFAULT_TPOT_S


@functools.lru_cache(maxsize=1)
def baseline_doc() -> PolicyDoc:
    """The fallback baseline, parsed once: the donor of a decision function a file lacks."""
    return PolicyDoc.parse(read_policy_file(baseline_path(FALLBACK_BASELINE)).code)


def piece_statements(piece: ing.Ingredient) -> list[str]:
    return split_statements(piece.code)


def materialize(doc: PolicyDoc, point: str) -> PolicyDoc:
    """A document that defines ``point``, taking the baseline's function where it had none."""
    if doc.defines(point):
        return doc
    transplant(baseline_doc().copy(), doc, point)
    return doc


def transplant(donor: PolicyDoc, doc: PolicyDoc, name: str) -> None:
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


def slo_tunables(piece: ing.Ingredient, slo: SloTargets) -> dict[str, Any]:
    """The piece's tunables, the SLO-aware ones defaulting to the campaign's targets."""
    return {
        k: ing.with_slo_defaults(v, k, slo.ttft_s, slo.tpot_s) for k, v in piece.tunables.items()
    }


def current_piece(doc: PolicyDoc, slot: str) -> str | None:
    """The name of the catalogue piece that fills ``slot`` unchanged; None if none does."""
    text = doc.text_of(ing.SLOT_FUNCTION[slot])
    if text is None:
        return None
    for piece in ing.slot_pieces(slot):
        if Statement.of(split_statements(piece.code)[-1]).text == text:
            return piece.name
    return None


def describe(doc: PolicyDoc) -> str:
    """The docstring of a file the offline proposer composed: which piece fills each slot."""
    lines = [ing.COMPOSED_TITLE, ""]
    for slot in ing.SLOTS:
        fname = ing.SLOT_FUNCTION[slot]
        if not doc.defines(fname):
            continue
        name = current_piece(doc, slot)
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


def insert_piece(doc: PolicyDoc, piece: ing.Ingredient, slo: SloTargets) -> None:
    """Put ``piece`` in its slot, replacing what filled it (and what only that needed)."""
    if piece.slot in ("budget", "order") and not doc.is_template():
        to_template(doc, piece, slo)
        return
    fname = ing.SLOT_FUNCTION[piece.slot]
    at = doc.remove(fname)
    doc.prune()
    doc.graft(piece_statements(piece), slo_tunables(piece, slo), piece.imports, at)
    doc.prune()


def to_template(doc: PolicyDoc, piece: ing.Ingredient, slo: SloTargets) -> None:
    """Rewrite the partition into budget/order form with ``piece`` in its slot."""
    other_slot = "order" if piece.slot == "budget" else "budget"
    other = ing.get("fcfs_order" if other_slot == "order" else "fixed_budget")
    at = doc.remove("partition")
    doc.prune()
    budget, order = (piece, other) if piece.slot == "budget" else (other, piece)
    stmts = piece_statements(budget) + piece_statements(order) + [ing.PARTITION_TEMPLATE]
    tunables = {**slo_tunables(budget, slo), **slo_tunables(order, slo)}
    doc.graft(stmts, tunables, budget.imports + order.imports, at)
    doc.prune()


def insert_combination(
    doc: PolicyDoc, order: str, budget: str, route: str, slo: SloTargets
) -> PolicyDoc:
    """Fill all three slots with the named pieces (the early, research-biased proposals)."""
    o, b, r = ing.get(order), ing.get(budget), ing.get(route)
    at = doc.remove("partition")
    doc.prune()
    stmts = piece_statements(b) + piece_statements(o) + [ing.PARTITION_TEMPLATE]
    doc.graft(stmts, {**slo_tunables(b, slo), **slo_tunables(o, slo)}, b.imports + o.imports, at)
    at = doc.remove("route")
    doc.prune()
    doc.graft(piece_statements(r), slo_tunables(r, slo), r.imports, at)
    doc.prune()
    return doc


def wrap_function(
    doc: PolicyDoc,
    point: str,
    wrapper_code: str,
    piece: ing.Ingredient,
    slo: SloTargets,
    wrapper_piece: bool = False,
) -> None:
    """Rename ``point`` to ``_base_<point>`` and put ``wrapper_code`` (calling it) in front."""
    materialize(doc, point)
    base_name = f"_base_{point}"
    taken = doc.module_names()
    new_base = base_name if base_name not in taken else fresh_name(base_name, taken)
    i = doc.index_of(point)
    assert i is not None
    doc.body[i] = Statement.of(doc.body[i].text.replace(f"def {point}(", f"def {new_base}(", 1))
    wrapper = (
        wrapper_code if new_base == base_name else renamed(wrapper_code, {base_name: new_base}, {})
    )
    stmts = [] if wrapper_piece else piece_statements(piece)
    doc.graft(stmts + [wrapper], slo_tunables(piece, slo), piece.imports, i + 1)
    doc.prune()
