"""The gate's reference policies (``gate.references``), tuned like the baseline and measured on
the held-out workloads once per campaign, before the search.

They do not depend on what the search finds, and measuring them first means the finalisation
the search keeps time back for is only what does depend on it (validation and each finalist's own
held-out capacities), whose cost the references' held-out searches, timed here, then predict
(``campaign.reserve``). The gate later finds every reference's tuning in the archive's meta and
its held-out capacities in the evaluation cache (the same jobs, by key), so nothing runs twice.
"""

from __future__ import annotations

import dataclasses

from autotuner.campaign.progress import fmt_gain
from autotuner.campaign.reserve import timed_gates
from autotuner.campaign.state import Baseline, CampaignState
from autotuner.gate import PolicyRef, measure_capacities, measure_references
from autotuner.scoring import run_lengths
from autotuner.yardstick import TunedPolicy, tuned_references


def tuned_reference_policies(state: CampaignState, b: Baseline) -> list[PolicyRef]:
    """The gate's reference policies, tuned like the baseline: a seed the campaign tuned
    keeps its tuned values; any other is tuned here once (kept in the archive's meta)."""
    archive = state.archive
    assert archive is not None and state.evaluator is not None

    def keep(tuned: TunedPolicy) -> None:
        stored = dict(archive.get_meta("references", {}) or {})
        archive.set_meta("references", stored | {tuned.stem: dataclasses.asdict(tuned)})
        state.progress.log(f"reference {tuned.stem} tuned like the baseline: "
                           f"{dict(tuned.params)} (training {fmt_gain(tuned.value)})")

    refs = tuned_references(
        state.evaluator, state.cfg, state.instances["train"],
        TunedPolicy(b.name, b.code, b.params, 0.0, "campaign"), b.caps["train"],
        b.reference["train"], state.storage, "this campaign", archive=archive,
        log=state.tick, on_tuned=keep)
    return [r.ref() for r in refs]


def measure_reference_policies(state: CampaignState) -> None:
    """Tune the references and measure their held-out capacities now (cached for the gate)."""
    assert state.evaluator is not None and state.baseline is not None
    if not state.cfg.gate.references:
        return
    b = state.baseline
    refs = tuned_reference_policies(state, b)
    state.tick(f"references: capacity on {len(state.instances['heldout'])} held-out instances")
    # the run lengths the baseline's held-out capacities were found on (its searches are in
    # the evaluation cache): the gate's reference jobs start there, so these are the same jobs
    _, base_raw, _ = measure_capacities(state.evaluator, PolicyRef(b.name, b.code, b.params),
                                        state.instances["heldout"], state.cfg, None, "baseline")
    lengths = run_lengths(base_raw)
    timed_gates(state, "references", refs, lambda ref: measure_references(
        state.evaluator, state.cfg, [ref], state.instances["heldout"], b.caps["heldout"],
        lengths))
