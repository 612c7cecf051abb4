"""How much of the wall-time budget the search leaves for the finalisation: validating the
finalists and gating each one, predicted from what this campaign measured evaluations to cost.

Everything is counted in training ladder runs and converted to seconds at the speed the search
measured over its latest evaluations (``Evaluator.recent_wall_per_sim``: this machine, this
parallelism, this load, now), so the prediction follows a machine that gets busier or quieter.

- validation: one ladder (rungs x validation instances) per finalist, and the tuned baseline's
  once; a validation run is the size of a training run.
- a gate: the finalist's capacity search on every held-out instance (the tuned baseline's and the
  references' are measured before the search, ``campaign.references``, and cached). What one such
  search costs, in training runs, is what the references' held-out searches (the same jobs:
  bracketed by the baseline's capacity, on the same instances) cost against the references' own
  training runs, both measured in this campaign. Without measured references (none configured,
  or a campaign started before they were measured first) the tuned baseline's held-out searches
  stand in: unbracketed, so they overestimate.

Why: the default campaign on a busy 2-core machine kept back ~5:20 (simulations counted at the
search's average speed, whatever their size, and every reference tuned in the finalisation)
where its finalisation took 2:39, leaving room for about eight more proposals unused.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from autotuner.config import CampaignConfig
from autotuner.scoring import Instance


class CampaignState(Protocol):
    """What the estimate reads of ``campaign.state.CampaignState`` (which calls it, so this
    module does not import it)."""

    cfg: CampaignConfig
    archive: Any
    evaluator: Any
    baseline: Any
    instances: Mapping[str, Sequence[Instance]]

    def finalists(self) -> tuple[list[Any], list[str]]: ...

SAFETY = 1.2  # a batch of a few long capacity searches waits for its slowest (two processes)
REFERENCE_PREFIX = "reference-"  # the references' evaluations (``gate.run.measure_references``)
BASELINE_ID = "baseline"
SEED_PREFIX = "seed-"  # a reference that is also a seed was tuned as the seed


def predicted_finalisation(wall_per_run: float, validation_runs: int, gates: int,
                           runs_per_gate: float) -> float:
    """Seconds the finalisation takes: its validation runs and ``gates`` gates of
    ``runs_per_gate`` training-run equivalents each, at ``wall_per_run``, with the margin."""
    return SAFETY * wall_per_run * (validation_runs + gates * runs_per_gate)


def runs_per_gate(costs: Iterable[tuple[str, str, bool, float]], heldout: Sequence[str],
                  train: Sequence[str]) -> float | None:
    """What one finalist's held-out capacity searches cost, in training runs, from measured
    ``costs`` (candidate id, workload label, capacity search?, seconds): per held-out instance,
    the mean seconds of the measured capacity searches there, summed, over the mean seconds of
    one training ladder run of the same policies. None when some held-out instance or the
    training runs were not measured."""
    searches: dict[str, list[float]] = defaultdict(list)
    runs: list[float] = []
    for _cand, label, capacity, seconds in costs:
        if capacity and label in heldout:
            searches[label].append(seconds)
        elif not capacity and label in train:
            runs.append(seconds)
    if not runs or any(not searches[label] for label in heldout):
        return None
    per_run = sum(runs) / len(runs)
    if per_run <= 0:
        return None
    return sum(sum(s) / len(s) for s in (searches[label] for label in heldout)) / per_run


def gate_cost_in_runs(state: CampaignState) -> float:
    """``runs_per_gate`` from the references' measured costs, else the tuned baseline's, else
    the old rule of thumb (nine training-run-sized probes per held-out instance). Costs are the
    trusted side's CPU seconds where this session measured them (``Evaluator.cpu_costs``): the
    references' training runs and held-out searches ran minutes apart, and wall seconds on a
    shared machine moved 2-3x between the two (a busy default campaign predicted 46 training
    runs per gate from wall seconds, where its gates took about 190 at the search's speed);
    else the archive's wall seconds (a resumed campaign)."""
    assert state.archive is not None
    heldout = [i.label for i in state.instances["heldout"]]
    train = [i.label for i in state.instances["train"]]
    cpu_costs = getattr(state.evaluator, "cpu_costs", None)
    if cpu_costs is not None:
        measured = runs_per_gate(cpu_costs(REFERENCE_PREFIX), heldout, train)
        if measured is None:  # references that were seeds: tuned as the seed
            measured = runs_per_gate([*cpu_costs(REFERENCE_PREFIX), *cpu_costs(SEED_PREFIX)],
                                     heldout, train)
        if measured is not None:
            return measured
    references = state.archive.evaluation_costs(REFERENCE_PREFIX)
    measured = runs_per_gate(references, heldout, train)
    if measured is None and references:  # every reference was a seed: tuned as the seed
        seeds = [row for row in state.archive.evaluation_costs(SEED_PREFIX) if not row[2]]
        measured = runs_per_gate([*references, *seeds], heldout, train)
    if measured is None:
        measured = runs_per_gate(state.archive.evaluation_costs(BASELINE_ID), heldout, train)
    return measured if measured is not None else 9.0 * len(heldout)


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
    wall_per_run = state.evaluator.recent_wall_per_sim() or state.evaluator.wall_per_sim()
    return predicted_finalisation(wall_per_run, rungs * n_val * (unvalidated + baseline_left),
                                  len(finalists), gate_cost_in_runs(state))
