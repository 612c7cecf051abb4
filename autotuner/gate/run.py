"""The gate's measurement: capacities of the candidate, the tuned baseline, the tuned references
and the promoted policy on the held-out instances (through the evaluator, so each is measured
once and cached), the candidate's run at its own claim, and the verdict (``run_gate``)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autotuner.archive import canonical
from autotuner.config import CampaignConfig
from autotuner.gate.conditions import (
    Condition,
    capacity_condition,
    claim_conditions,
    regression_condition,
)
from autotuner.gate.statistics import Comparison, compare, family_gains
from autotuner.scoring import Evaluator, Instance, Job, capacity_jobs, extended, run_lengths


class GateInputError(ValueError):
    """The gate cannot judge on these inputs (the baseline fails, or has no capacity to compare
    with); the message says which instance and why."""


@dataclass
class GateResult:
    candidate: str
    passed: bool
    reasons: list[str]  # the failed conditions' figures
    comparisons: list[Comparison]  # [baseline, best reference (if any), promoted (if any)]
    conditions: list[Condition]
    instances: list[dict[str, Any]]
    confidence: float
    bootstrap: int
    seed: int
    seconds: float = 0.0
    per_family: dict[str, float] = field(default_factory=dict)  # gain over the baseline
    reference: str | None = None  # the best tuned reference policy's stem
    references: dict[str, dict[str, Any]] = field(default_factory=dict)  # stem -> its figures
    per_family_reference: dict[str, float] = field(default_factory=dict)
    at_claim: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> fairness rows

    def to_dict(self) -> dict[str, Any]:
        return json.loads(canonical(asdict(self)))

    @property
    def baseline(self) -> Comparison:
        return self.comparisons[0]

    def comparison(self, prefix: str) -> Comparison | None:
        return next((c for c in self.comparisons if c.reference.startswith(prefix)), None)

    def failed(self) -> list[str]:
        return [c.name for c in self.conditions if not c.passed]


@dataclass(frozen=True)
class PolicyRef:
    """A policy as the gate measures it: its code and its tuned parameters."""

    name: str
    code: str
    params: Mapping[str, Any]


# The run metrics kept per instance in a gate result (what a reader checks a claim against).
AT_CLAIM_FIELDS = ("rate", "requests", "attainment", "sustainable", "backlog_growth",
                   "max_wait_over_deadline", "longest_wait_s", "unfinished", "starved",
                   "priority_inversions", "late_finish_share", "ttft_over_deadline_p99",
                   "goodput_rps", "goodput_tok_s", "throughput_tok_s", "jain_slowdown",
                   "starved_ids", "inversion_ids")


def measure_capacities(evaluator: Evaluator, policy: PolicyRef, instances: Sequence[Instance],
                       cfg: CampaignConfig, hints: Mapping[str, float] | None,
                       candidate_id: str | None, lengths: Mapping[str, int] | None = None
                       ) -> tuple[dict[str, float], dict[str, Any], str | None]:
    """Capacity per instance (label -> req/s), the raw results, and the first error.
    ``lengths``: the run lengths the baseline's capacities were found on (``run_lengths``),
    where each search starts, so both sides of a comparison are judged on runs as long."""
    jobs = capacity_jobs(policy.code, policy.params, instances, cfg, hints, name=policy.name,
                         lengths=lengths)
    results = evaluator.evaluate(jobs, candidate_id)
    caps, raw, error = {}, {}, None
    for inst, res in zip(instances, results, strict=True):
        raw[inst.label] = res
        if res.get("error") and error is None:
            error = f"{inst.label}: {res['error']}"
        caps[inst.label] = float(res.get("capacity") or 0.0)
    return caps, raw, error


def zero_capacity(caps: Mapping[str, float], minimum: float) -> list[str]:
    """Instances on which a capacity is (near) zero: below ``minimum`` req/s."""
    return [k for k, v in caps.items() if not v >= minimum]


def refusal_line(label: str, capacity: float, who: str, cfg: CampaignConfig) -> str:
    """Why a workload with a (near) zero baseline capacity cannot be judged, in one line."""
    return (f"workload {label} refused: the capacity of the {who} there is {capacity:.3g} req/s "
            f"(below gate.min_baseline_capacity {cfg.gate.min_baseline_capacity:g}): fewer than "
            f"{cfg.slo.share:.0%} of its requests meet the SLO at any sustainable rate, so no "
            f"capacity ratio is defined; drop it from the workloads or change the [slo] targets")


def _fairness(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: metrics.get(k) for k in AT_CLAIM_FIELDS if k in metrics}


def measure_references(evaluator: Evaluator, cfg: CampaignConfig, references: Sequence[PolicyRef],
                       instances: Sequence[Instance], base_caps: Mapping[str, float],
                       base_lengths: Mapping[str, int] | None = None
                       ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
    """Held-out capacities of the tuned references (cached after the first gate), and a table
    of each one's figures against the tuned baseline."""
    caps_of: dict[str, dict[str, float]] = {}
    table: dict[str, dict[str, Any]] = {}
    for k, ref in enumerate(references):
        stem = Path(ref.name).stem
        caps, _, err = measure_capacities(evaluator, ref, instances, cfg, base_caps,
                                          f"reference-{stem}", base_lengths)
        comp = compare(caps, base_caps, "baseline", cfg.gate, cfg.seed + 11 + k)
        table[stem] = {"params": dict(ref.params), "mean_gain": comp.mean_gain,
                       "lower_bound": comp.lower_bound, "error": err}
        if not err:
            caps_of[stem] = caps
    return caps_of, table


def run_gate(
    evaluator: Evaluator,
    cfg: CampaignConfig,
    candidate_id: str,
    candidate: PolicyRef,
    baseline: PolicyRef,
    instances: Sequence[Instance],
    promoted: PolicyRef | None = None,
    promoted_id: str | None = None,
    references: Sequence[PolicyRef] = (),
) -> GateResult:
    """Measure and decide. Baseline, reference (and promoted) capacities come from the
    evaluation cache after their first measurement, so gating several finalists costs only the
    candidates. ``references`` are the tuned reference policies (``autotuner.references``);
    when ``gate.references`` names some and none is given, the reference condition fails."""
    t0 = time.perf_counter()
    gate = cfg.gate
    base_caps, base_raw, base_err = measure_capacities(evaluator, baseline, instances, cfg, None,
                                                       "baseline")
    if base_err:
        raise GateInputError(f"the tuned baseline fails on a held-out workload: {base_err}")
    if zero := zero_capacity(base_caps, gate.min_baseline_capacity):
        raise GateInputError(refusal_line(zero[0], base_caps[zero[0]], "tuned baseline", cfg))
    base_lengths = run_lengths(base_raw)
    cand_caps, cand_raw, cand_err = measure_capacities(evaluator, candidate, instances, cfg,
                                                       base_caps, candidate_id, base_lengths)
    families = {i.label: i.family for i in instances}
    conditions: list[Condition] = []
    if cand_err:
        conditions.append(Condition("evaluation", False, f"evaluation failed: {cand_err}"))
    judged, at_claim, no_claim = _claims(evaluator, cfg, candidate, candidate_id, instances,
                                         cand_caps, cand_raw, base_caps, base_lengths)
    conditions += claim_conditions(
        judged, at_claim, {k: v.get("at_capacity") or {} for k, v in base_raw.items()},
        cfg.slo.share, gate, no_claim)
    comparisons = [compare(cand_caps, base_caps, "baseline", gate, cfg.seed)]
    conditions.append(capacity_condition("capacity", comparisons[0], "the tuned baseline",
                                         gate.confidence))
    per_family = family_gains(comparisons[0], families)
    conditions.append(regression_condition(per_family, gate.regression_tolerance))
    ref_caps, ref_table = measure_references(evaluator, cfg, references, instances, base_caps,
                                             base_lengths)
    best_ref = max(ref_caps, key=lambda s: ref_table[s]["mean_gain"], default=None)
    ref_comp, ref_condition = _reference_condition(cfg, cand_caps, ref_caps, ref_table, best_ref)
    comparisons += [ref_comp] if ref_comp is not None else []
    conditions.append(ref_condition)
    if promoted is not None:
        prom_caps, _, prom_err = measure_capacities(evaluator, promoted, instances, cfg,
                                                    base_caps, promoted_id, base_lengths)
        if not prom_err:
            comp = compare(cand_caps, prom_caps, promoted_id or "promoted", gate, cfg.seed + 1)
            comparisons.append(comp)
            conditions.append(capacity_condition("promoted", comp, f"the promoted "
                                                 f"{promoted_id or 'policy'}", gate.confidence))
    reasons = [f"{c.name}: {c.figures}" for c in conditions if not c.passed]
    return GateResult(
        candidate=candidate_id, passed=not reasons, reasons=reasons, comparisons=comparisons,
        conditions=conditions, instances=[i.to_dict() | {"label": i.label} for i in instances],
        confidence=gate.confidence, bootstrap=gate.bootstrap, seed=cfg.seed,
        seconds=time.perf_counter() - t0, per_family=per_family, reference=best_ref,
        references=ref_table, per_family_reference=family_gains(ref_comp, families)
        if ref_comp is not None else {},
        at_claim={k: {"candidate": _fairness(at_claim.get(k) or {}),
                      "baseline": _fairness(base_raw[k].get("at_capacity") or {})}
                  for k in cand_raw},
    )


def _reference_condition(cfg: CampaignConfig, cand_caps: Mapping[str, float],
                         ref_caps: Mapping[str, Mapping[str, float]],
                         ref_table: Mapping[str, Mapping[str, Any]], best_ref: str | None
                         ) -> tuple[Comparison | None, Condition]:
    """The comparison with the best tuned reference (if one was measured) and its condition."""
    gate = cfg.gate
    if best_ref is not None:
        comp = compare(cand_caps, ref_caps[best_ref], f"reference:{best_ref}", gate,
                       cfg.seed + 2, margin=gate.reference_margin)
        return comp, capacity_condition(
            "reference", comp, f"the best tuned reference {best_ref} (itself "
            f"{ref_table[best_ref]['mean_gain']:+.1%} over the baseline)", gate.confidence)
    if gate.references:
        why = "; ".join(f"{s}: {r['error']}" for s, r in ref_table.items()) or \
            "no tuned reference policy was given to the gate"
        return None, Condition("reference", False, f"no reference measured ({why})")
    return None, Condition("reference", True, "not required: gate.references is empty")


def _claims(evaluator: Evaluator, cfg: CampaignConfig, candidate: PolicyRef, candidate_id: str,
            instances: Sequence[Instance], cand_caps: Mapping[str, float],
            cand_raw: Mapping[str, Any], base_caps: Mapping[str, float],
            base_lengths: Mapping[str, int]
            ) -> tuple[dict[str, float], dict[str, dict[str, Any]], list[str]]:
    """The rate each instance is judged at, the run there, and the instances without a claim.

    The candidate's own capacity and its capacity search's run at that rate; where it has no
    capacity (and did not fail), one run at the tuned baseline's capacity shows why."""
    judged = dict(cand_caps)
    at_claim = {k: dict(v.get("at_capacity") or {}) for k, v in cand_raw.items()}
    lost = [i for i in instances if cand_caps[i.label] <= 0 and not cand_raw[i.label].get("error")]
    runs = [Job(candidate.code, dict(candidate.params),
                extended(i, base_lengths.get(i.label, 1)) or i, "run", base_caps[i.label],
                cfg.cluster, cfg.slo, cfg.sandbox, name=candidate.name) for i in lost]
    for inst, res in zip(lost, evaluator.evaluate(runs, candidate_id) if runs else [],
                         strict=True):
        judged[inst.label], at_claim[inst.label] = base_caps[inst.label], res
    return judged, at_claim, [i.label for i in lost]
