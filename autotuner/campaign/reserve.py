"""How much of the wall-time budget the search leaves for the finalisation: validating the
finalists and gating each one, predicted from what this campaign measured the same work to cost.

- a gate: the finalist's capacity search on every held-out instance, bracketed by the tuned
  baseline's capacity and started on the baseline's run lengths. Exactly these jobs ran once per
  reference before the search (``campaign.references``); where no reference is configured, the
  tuned baseline's own held-out searches stand in (started from its training capacity on the
  instances' own lengths: a little dearer). What one took, in wall seconds at this parallelism,
  is what a gate takes. It is not rescaled by the search's speed: a training run's wall seconds
  during the search mix in the proposals' own costlier policies and evaluations of two proposals
  in flight at once (a busy default campaign's search ran 0.30 s a run against the references'
  0.16, and scaling by that kept back 3:37 for a 1:41 finalisation whose gates each took what a
  reference's held-out searches had).
- validation: one ladder (rungs x validation instances) per finalist, and the tuned baseline's
  once, at the wall seconds of the latest training runs (a validation run is their size).

Why measured whole and in wall seconds: every conversion between kinds of work missed. Counted in
training runs at the search's speed, a busy default campaign kept back 5:20 where its
finalisation took 1:51 (capacity searches on runs up to four times longer, and the references'
training runs, which the conversion divided by, cost 2-3x a proposal's).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from autotuner.config import CampaignConfig
from autotuner.scoring import Instance

SAFETY = 1.2  # a batch of a few long capacity searches waits for its slowest (two processes)
GATE_COST_META = "gate_cost"  # archive meta: {"references" | "baseline": wall seconds}
RULE_OF_THUMB_RUNS = 9.0  # training-run-sized probes per held-out instance, when nothing measured

T = TypeVar("T")


class CampaignState(Protocol):
    """What the estimate reads of ``campaign.state.CampaignState`` (which calls it, so this
    module does not import it)."""

    cfg: CampaignConfig
    archive: Any
    evaluator: Any
    baseline: Any
    instances: Mapping[str, Sequence[Instance]]

    def finalists(self) -> tuple[list[Any], list[str]]: ...


def timed_gates(state: CampaignState, kind: str, policies: Sequence[T],
                measure: Callable[[T], None]) -> None:
    """``measure`` each policy's held-out capacities, and keep the mean wall seconds of those
    that ran (a resumed campaign finds some in the cache) as this campaign's ``kind`` of gate
    cost ("references" or "baseline")."""
    evaluator, archive = state.evaluator, state.archive
    seconds = []
    for policy in policies:
        ran0, t0 = evaluator.ran, time.perf_counter()
        measure(policy)
        if evaluator.ran > ran0:
            seconds.append(time.perf_counter() - t0)
    if seconds and archive is not None:
        stored = dict(archive.get_meta(GATE_COST_META, {}) or {})
        archive.set_meta(GATE_COST_META, stored | {kind: sum(seconds) / len(seconds)})


def gate_cost(state: CampaignState) -> float | None:
    """Wall seconds of one gate: the references' measured held-out searches, else the
    baseline's, else None."""
    stored = state.archive.get_meta(GATE_COST_META, {}) or {}
    for kind in ("references", "baseline"):
        if kind in stored:
            return float(stored[kind])
    return None


def predicted_finalisation(wall_per_run: float, validation_runs: int, gates: int,
                           gate_seconds: float) -> float:
    """Seconds the finalisation takes: its validation runs at ``wall_per_run`` and ``gates``
    gates of ``gate_seconds`` each, with the margin."""
    return SAFETY * (wall_per_run * validation_runs + gates * gate_seconds)


def finalize_estimate(state: CampaignState) -> float:
    """Seconds the finalisation needs if the search stopped now: validating and gating the
    finalists it would pick now (none yet: nothing to keep back beyond
    ``budget.finalize_reserve_s``)."""
    if state.evaluator is None or state.archive is None or state.baseline is None:
        return 0.0
    finalists, _ = state.finalists()
    if not finalists:
        return 0.0
    rungs = len(state.cfg.objective.ladder)
    n_val = len(state.instances["validation"])
    unvalidated = sum(1 for c in finalists if c.validation_score is None)
    baseline_left = 0 if "validation" in state.baseline.reference else 1
    speed = state.evaluator.recent_wall_per_sim() or state.evaluator.wall_per_sim()
    cost = gate_cost(state)
    per_gate = cost if cost is not None else \
        speed * RULE_OF_THUMB_RUNS * len(state.instances["heldout"])
    return predicted_finalisation(speed, rungs * n_val * (unvalidated + baseline_left),
                                  len(finalists), per_gate)
