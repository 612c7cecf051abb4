"""Phase 4: the best tuned candidates (finalists) are scored on the validation split, re-ranked
by it, and gated on the held-out split against the tuned baseline (and the tuned reference
policies); one that passes is promoted: its policy file and promotion record are written and the
archive names it. Then the campaign's summary.

Only a gain on validation earns a gate; the best finalist is always gated, the others when
validation says they might beat the promoted one. The wall-time budget never skips a gate: the
search stopped early enough to leave the predicted time for all of them (``campaign.reserve``),
so a slow machine makes fewer proposals, not an unfinished gate; where the prediction was short
(or ``min_proposals`` kept the search going), the campaign runs over its budget by that much.
"""

from __future__ import annotations

from pathlib import Path

from autotuner import archive as A
from autotuner.archive import Candidate
from autotuner.campaign.diagnostics import explanation_of
from autotuner.campaign.errors import CampaignError
from autotuner.campaign.progress import fmt_duration, fmt_gain
from autotuner.campaign.references import tuned_reference_policies
from autotuner.campaign.state import Baseline, CampaignState
from autotuner.gate import GateInputError, GateResult, PolicyRef, run_gate, write_promotion
from autotuner.scoring import ladder_scores
from autotuner.yardstick import YardstickError, capacities


def finalize_phase(state: CampaignState) -> None:
    assert state.archive is not None
    start = state.elapsed()
    _finalize(state)
    kept = state.archive.get_meta("finalize_reserve_s")
    state.progress.log(f"finalisation took {fmt_duration(state.elapsed() - start)}"
                       + (f" (the search kept back {fmt_duration(kept)})"
                          if kept is not None else ""))


def _finalize(state: CampaignState) -> None:
    assert state.archive is not None
    baseline = _baseline_on_validation(state)
    finalists = _finalists(state)
    if not finalists:
        state.progress.log("no candidate beat the tuned baseline on training: nothing to gate")
        return
    for cand in finalists:
        if cand.validation_score is None:
            _validate(state, baseline, cand)
    finalists = sorted((state.archive.get(c.id) for c in finalists),
                       key=lambda c: -(c.validation_score or -1.0))
    _gate_finalists(state, baseline, finalists)


def _baseline_on_validation(state: CampaignState) -> Baseline:
    """The baseline's capacities and ladder goodput on the validation split (measured once,
    kept in the archive's meta)."""
    assert state.archive is not None and state.baseline is not None
    b = state.baseline
    if "validation" in b.reference:
        return b
    state.tick("validation: baseline ladder")
    caps = b.caps.get("validation")
    if caps is None:  # a campaign started before the baseline was measured on it
        try:
            caps = capacities(state.evaluator, state.cfg, PolicyRef(b.name, b.code, b.params),
                              state.instances["validation"], "baseline", who="tuned baseline")
        except YardstickError as exc:
            raise CampaignError(str(exc)) from None
    ref = state.reference(state.ladder(b.code, b.params, "validation", caps, "baseline",
                                       b.name), "validation")
    state.baseline = b.with_split("validation", caps, ref)
    state.archive.set_meta("baseline", state.baseline.to_dict())
    return state.baseline


def _finalists(state: CampaignState) -> list[Candidate]:
    """The best proposals that gained on training, best first (``CampaignState.finalists``),
    saying why any better-ranked one is not among them."""
    picked, notes = state.finalists()
    for note in notes:
        state.progress.log(note)
    return picked


def _validate(state: CampaignState, baseline: Baseline, cand: Candidate) -> None:
    assert state.archive is not None
    state.tick(f"validating {cand.id}")
    res = state.ladder(cand.code or "", cand.params, "validation", baseline.caps["validation"],
                       cand.id, f"{cand.id}.py")
    score = ladder_scores(res, state.instances["validation"], baseline.reference["validation"],
                          state.cfg)
    value = -1.0 if score.error else score.objective
    state.archive.set_scores(cand.id, "validation", {
        k: (v, score.detail[k]) for k, v in score.per_instance.items()})
    state.archive.update(cand.id, status=A.FINALIST, validation_score=value,
                         failure=score.error or "")
    state.progress.log(f"finalist {cand.id}: training {fmt_gain(cand.train_score)}, "
                       f"validation {fmt_gain(value)}")


def _gate_finalists(state: CampaignState, baseline: Baseline, finalists: list[Candidate]
                    ) -> None:
    assert state.archive is not None
    references: list[PolicyRef] | None = None
    for cand in finalists:
        if cand.status != A.FINALIST:
            continue
        if (cand.validation_score or -1.0) <= 0:
            state.archive.update(cand.id, status=A.GATE_FAILED,
                                 failure="no gain over the tuned baseline on validation")
            continue
        promoted_id = state.archive.get_meta("promoted")
        promoted = state.archive.find(promoted_id) if promoted_id else None
        skip = _skip_reason(cand, promoted)
        if skip:
            state.archive.update(cand.id, failure=skip)
            state.progress.log(f"finalist {cand.id} {skip}")
            continue
        if references is None:
            references = tuned_reference_policies(state, baseline)
        state.tick(f"gate: {cand.id} on {len(state.instances['heldout'])} held-out instances")
        try:
            result = run_gate(
                state.evaluator, state.cfg, cand.id, _ref(cand), _baseline_ref(baseline),
                state.instances["heldout"], _ref(promoted) if promoted else None,
                promoted.id if promoted else None, references)
        except GateInputError as exc:
            state.progress.log(f"the gate cannot judge on these workloads: {exc}")
            return
        _record_verdict(state, baseline, cand, result, promoted_id, references)


def _skip_reason(cand: Candidate, promoted: Candidate | None) -> str:
    """Why a finalist after the first is not gated ("" when it is)."""
    if promoted is not None and (cand.validation_score or 0.0) <= (
            promoted.validation_score or 0.0):
        return (f"not gated: validation {fmt_gain(cand.validation_score)} is not above "
                f"the promoted {promoted.id}'s {fmt_gain(promoted.validation_score)}")
    return ""


def _ref(cand: Candidate) -> PolicyRef:
    return PolicyRef(f"{cand.id}.py", cand.code or "", cand.params)


def _baseline_ref(baseline: Baseline) -> PolicyRef:
    return PolicyRef(baseline.name, baseline.code, baseline.params)


def _record_verdict(state: CampaignState, baseline: Baseline, cand: Candidate,
                    result: GateResult, promoted_id: str | None,
                    references: list[PolicyRef]) -> None:
    """Promote a candidate that passed (its files written, the archive naming it), or record
    the gate's reasons; either way every condition's line is shown."""
    assert state.archive is not None
    cfg = state.cfg
    comp = result.baseline
    why = explanation_of(state, cand)
    explanation = why.to_dict() if why is not None else None
    if result.passed:
        best_ref = next((r for r in references if Path(r.name).stem == result.reference), None)
        policy_path, record_path = write_promotion(
            state.dir, cfg, cand.id, _ref(cand), _baseline_ref(baseline), baseline.name, result,
            promoted_id, best_ref, explanation)
        state.archive.update(cand.id, status=A.PROMOTED, gate=result.to_dict(),
                             explanation=explanation)
        promotions = state.archive.get_meta("promotions", [])
        state.archive.set_meta_many({"promoted": cand.id, "promotions": [*promotions, cand.id]})
        state.progress.log(
            f"PROMOTED {cand.id}: held-out capacity {comp.mean_gain:+.1%} over the tuned "
            f"baseline ({cfg.gate.confidence:.0%} lower bound {comp.lower_bound:+.1%}, "
            f"margin {cfg.gate.margin:.0%}); policy {policy_path}; record {record_path}")
    else:
        state.archive.update(cand.id, status=A.GATE_FAILED, gate=result.to_dict(),
                             failure="gate: " + "; ".join(result.reasons),
                             explanation=explanation)
        state.progress.log(f"gate refused {cand.id} ({', '.join(result.failed())}):")
    for condition in result.conditions:
        state.progress.log(f"  {condition.line()}")
    for line in why.lines() if why is not None else ():
        state.progress.log(f"  why: {line}")


def summary(state: CampaignState) -> None:
    """The campaign's closing lines: what it made, its best, failures, spend, promotion."""
    assert state.archive is not None
    state.progress.clear()
    ev = state.evaluator
    best = state.best(promotable_only=True)
    promoted = state.archive.get_meta("promoted")
    fails = state.archive.failures_by_reason()
    spend = state.archive.spend()
    lines = [
        f"campaign {state.cfg.name} finished in {fmt_duration(state.elapsed())}: "
        f"{state.archive.count(origin='proposal')} proposals; this session ran "
        f"{ev.ran if ev else 0} evaluations ({ev.sims if ev else 0} simulations) and took "
        f"{ev.cached if ev else 0} from the archive's cache",
        f"  proposer: {state.proposer_line}",
        f"  best on training: {best.id} {fmt_gain(best.train_score)}" if best else
        "  best on training: none",
        "  failures: " + (", ".join(f"{k} {v}" for k, v in sorted(fails.items())) or "none"),
    ]
    if spend["tokens"] or spend["cost_usd"]:
        lines.append(f"  spend: {spend['tokens']:,} tokens, ${spend['cost_usd']:.4f}")
    if promoted:
        comp = (state.archive.get(promoted).gate or {}).get("comparisons", [{}])[0]
        lines.append(
            f"  promoted: {promoted} (held-out capacity {fmt_gain(comp.get('mean_gain'))},"
            f" lower bound {fmt_gain(comp.get('lower_bound'))}); "
            f"see {state.dir / 'promotions'}")
    else:
        lines.append("  promoted: none")
    lines.append(f"  review: autotuner status {state.resume_arg()}")
    for line in lines:
        state.progress.log(line)
