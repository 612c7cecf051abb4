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

Layout: this module chooses the operation and vets its result (selection); ``mutations`` holds
the operators, ``recombination`` the moves of code between files and catalogue pieces,
``policy_doc`` the editable view of a file, ``literal_edits`` the in-place edits of numbers.
"""

from __future__ import annotations

import ast
import hashlib
import math
import random
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from autotuner.proposers import ingredients as ing
from autotuner.proposers.base import CheckFn, Objective, Proposal, ProposalRequest
from autotuner.proposers.offline.mutations import OPERATORS, MutationContext, NoMutation
from autotuner.proposers.offline.policy_doc import PolicyDoc
from autotuner.proposers.offline.recombination import SloTargets, describe, insert_combination

MAX_ATTEMPTS = 24

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
assert set(OPERATION_WEIGHTS) == set(OPERATORS)

OPERATIONS = ("strong", *OPERATION_WEIGHTS)


def slo_targets(objective: Objective) -> SloTargets:
    """The campaign's TTFT and TPOT targets; the library defaults where the SLO has none."""

    def target(name: str, default: float) -> float:
        value = objective.slo.get(name)
        usable = isinstance(value, (int, float)) and not isinstance(value, bool)
        return float(value) if usable and math.isfinite(value) and value > 0 else default

    return SloTargets(target("ttft_s", ing.DEFAULT_TTFT_S), target("tpot_s", ing.DEFAULT_TPOT_S))


def strong_rank(index: int) -> int | None:
    """Which strong combination the ``index``-th proposal inserts: 0, 1, 2, -, 3, -, 4, ..."""
    k = index if index < 2 else (index // 2 + 1 if index % 2 == 0 else None)
    return k if k is not None and k < len(ing.STRONG_COMBINATIONS) else None


def _normalized(code: str) -> str:
    """The code's AST dump, so a change of comments or layout alone is no change."""
    try:
        return ast.dump(ast.parse(code))
    except SyntaxError:
        return code


@dataclass
class _Search:
    """One proposal's search so far: why candidates were refused, which reached the check."""

    unchanged: frozenset[str]  # the parent as written and with its tuned values baked in
    refusals: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    repeats: int = 0


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
        slo = slo_targets(request.objective)
        ctx = MutationContext(rng, slo, tuple(request.inspirations), parent)
        try:
            base = PolicyDoc.parse(parent.code)
        except Exception as exc:  # a parent that does not parse: nothing to mutate
            return _failed(f"parent cannot be parsed: {type(exc).__name__}: {exc}", 0)
        base.bake(parent.params)
        search = _Search(frozenset({_normalized(parent.code), _normalized(base.render())}))
        # ``max_attempts`` bounds the candidates sent to the check; operations that do not
        # apply to this parent (nothing to perturb, no inspiration) cost a try, not an attempt.
        for tries in range(self.max_attempts * 4):
            if len(search.checked) >= self.max_attempts:
                break
            try:
                op = self._choose(index, tries, ctx)
            except NoMutation as exc:
                search.refusals.append(str(exc))
                break
            made = self._mutate(op, base, ctx, index, tries, search)
            if made is None:
                continue
            proposal = self._vet(*made, check, search)
            if proposal is not None:
                return proposal
        tail = "; ".join(search.refusals[-3:]) or "no operation applies"
        return _failed(
            f"no usable mutation ({len(search.checked)} refused by the check, "
            f"{len(search.refusals) - len(search.checked)} not applicable or repeats): {tail}",
            len(search.checked),
        )

    # -- choosing, applying and vetting an operation --------------------------------------

    def _choose(self, index: int, tries: int, ctx: MutationContext) -> str:
        allowed = self.operations or OPERATIONS
        # Early phase: the strong combinations in rank order, the first two back to back, then
        # every other proposal (the others explore).
        if "strong" in allowed and tries == 0 and strong_rank(index) is not None:
            return "strong"
        weights = {op: w for op, w in OPERATION_WEIGHTS.items() if op in allowed}
        if "strong" in allowed and self.operations is not None:
            weights["strong"] = 1.0
        if not ctx.inspirations:
            weights["recombine"] = 0.0
        ops = [op for op in weights if weights[op] > 0]
        if not ops:
            raise NoMutation("none of the allowed operations applies (no inspirations?)")
        return ctx.rng.choices(ops, weights=[weights[o] for o in ops])[0]

    def _mutate(
        self,
        op: str,
        base: PolicyDoc,
        ctx: MutationContext,
        index: int,
        tries: int,
        search: _Search,
    ) -> tuple[str, str, str] | None:
        """(code, its normalized form, the note) of ``op`` applied to a copy of ``base``; None
        when it does not apply or fails on this file (the reason is recorded)."""
        try:
            doc, note = self._apply(op, base, ctx, index, tries)
        except NoMutation as exc:
            search.refusals.append(f"{op}: {exc}")
            return None
        except Exception as exc:  # odd parent code: try something else
            search.refusals.append(f"{op}: {type(exc).__name__}: {exc}")
            return None
        doc.notes.append(note)
        code = doc.render()
        return code, _normalized(code), note

    def _apply(
        self, op: str, base: PolicyDoc, ctx: MutationContext, index: int, tries: int
    ) -> tuple[PolicyDoc, str]:
        doc = base.copy()
        if op == "strong":
            k = strong_rank(index)
            if k is None or tries:
                k = ctx.rng.randrange(len(ing.STRONG_COMBINATIONS))
            order, budget, route = ing.STRONG_COMBINATIONS[k]
            doc = insert_combination(doc, order, budget, route, ctx.slo)
            doc.docstring = describe(doc)
            doc.notes = []
            return doc, f"insert the strong combination {order} + {budget} + {route}"
        note = OPERATORS[op](doc, ctx)
        if doc.docstring.startswith(ing.COMPOSED_TITLE):
            doc.docstring = describe(doc)
        return doc, note

    def _vet(
        self, code: str, norm: str, note: str, check: CheckFn, search: _Search
    ) -> Proposal | None:
        """The proposal, if the candidate is new and passes the check; else None (and why)."""
        if norm in search.unchanged:
            search.refusals.append(f"{note}: no change")
            return None
        with self._lock:
            duplicate = norm in self._seen
        if duplicate and search.repeats < self.max_attempts // 2:
            # Something new is worth a few more tries; past that, a repeat beats nothing
            # (the parent may have little left to vary under the allowed operations).
            search.repeats += 1
            search.refusals.append(f"{note}: already proposed")
            return None
        try:
            problems = list(check(code))
        except Exception as exc:
            problems = [f"the check raised {type(exc).__name__}: {exc}"]
        search.checked.append(note)
        if problems:
            search.refusals.append(f"{note}: check: {problems[0]}")
            return None
        with self._lock:
            self._seen.add(norm)
        return Proposal(
            code=code,
            ok=True,
            reason="",
            raw_replies=(note,),
            attempts=len(search.checked),
            model="offline",
        )


def _failed(reason: str, attempts: int) -> Proposal:
    return Proposal(code=None, ok=False, reason=reason, attempts=attempts, model="offline")
