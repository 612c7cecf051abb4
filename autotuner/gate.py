"""The promotion gate: a candidate is judged at its own claimed capacity, then compared with the
tuned baseline, the best tuned reference policy and the promoted policy; and what a promotion
writes so that anyone can check the claim with one command.

Why these conditions: a search loop optimises whatever the yardstick rewards, and the cheapest way
to raise a share-of-requests capacity is to starve the requests that cost most (defer long
prompts, never start them, serve newest first). Such a policy claims a rate at which some of its
requests wait without bound. So the claim itself is checked, at the rate claimed, on every
held-out instance:

- ``share``: the share of window requests meeting the SLO reaches ``slo.share``;
- ``sustainable``: the backlog does not grow over the window;
- ``max_wait``: no request waits longer than ``gate.max_wait_multiple`` times its TTFT deadline;
- ``finished``: every request finishes before the drain cut-off;
- ``inversions``: no more requests are overtaken while overdue (a later arrival on the same
  replica gets its first token after this request's deadline passed and before this request
  does) than under the tuned baseline at its capacity (``gate.inversion_tolerance``). FCFS and
  earliest-deadline-first make none; every reordering cheat in ``tests/gaming`` makes some;
- ``tail``: the p99 of TTFT over deadline is no worse than the tuned baseline's at the baseline's
  own capacity (``gate.tail_tolerance``).

Across instances (paired on the same requests):

- ``capacity``: the geometric mean of the capacity ratios over the tuned baseline; its one-sided
  bootstrap lower bound (resampling instances, seeded) must reach ``gate.margin``. A geometric
  mean, so one workload with a tiny baseline cannot carry the rest;
- ``regression``: no workload family's geometric-mean ratio falls below
  ``1 - gate.regression_tolerance``;
- ``reference``: the same bound against the best tuned reference policy of ``gate.references``
  (tuned on the same budget as the baseline) must reach ``gate.reference_margin``;
- ``promoted``: against the policy promoted before, if any, by ``gate.margin``.

A held-out instance on which the tuned baseline's capacity is (near) zero has no ratio: the gate
refuses to judge on it (``GateInputError``), as the campaign refuses such a workload at its start.
"""

from __future__ import annotations

import ast
import json
import math
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotuner.archive import canonical, sha256
from autotuner.config import CampaignConfig, GateConfig, to_dict
from autotuner.scoring import Evaluator, Instance, Job, capacity_jobs

# A candidate with no capacity on an instance has ratio 0; its log is clamped here so that the
# geometric mean stays defined (and far below any margin).
MIN_RATIO = 1e-3
# The conditions in the order they are printed; test and report code refer to these names.
CLAIM_CONDITIONS = ("share", "sustainable", "max_wait", "finished", "inversions", "tail")


class GateInputError(ValueError):
    """The gate cannot judge on these inputs (the baseline fails, or has no capacity to compare
    with); the message says which instance and why."""


def bootstrap_bound(gains: Sequence[float], *, confidence: float, samples: int, seed: int
                    ) -> tuple[float, float]:
    """Mean of ``gains`` and the one-sided lower bound of the mean at ``confidence``
    (percentile bootstrap over the paired instances)."""
    x = np.asarray(gains, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), -math.inf  # one pair cannot bound anything
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(samples, x.size))
    means = x[idx].mean(axis=1)
    return float(x.mean()), float(np.quantile(means, 1.0 - confidence))


def geometric_gain(ratios: Sequence[float]) -> float:
    """Geometric mean of capacity ratios, minus one (NaN for none)."""
    if not ratios:
        return math.nan
    return math.exp(float(np.mean([math.log(max(r, MIN_RATIO)) for r in ratios]))) - 1.0


@dataclass
class Comparison:
    """A paired capacity comparison against one reference: the geometric mean of the
    per-instance ratios (minus one) and its bootstrap lower bound, against ``margin``."""

    reference: str  # "baseline", "reference:<stem>", or the promoted candidate's id
    capacities: dict[str, tuple[float, float]]  # instance -> (candidate, reference)
    gains: dict[str, float]  # instance -> ratio - 1 (instances with a reference capacity > 0)
    mean_gain: float
    lower_bound: float
    margin: float
    passed: bool
    excluded: list[str] = field(default_factory=list)  # reference capacity 0: no ratio


def compare(candidate_caps: Mapping[str, float], reference_caps: Mapping[str, float],
            reference: str, gate: GateConfig, seed: int, margin: float | None = None
            ) -> Comparison:
    """Pure: pair the capacities by instance and bound the geometric-mean gain."""
    margin = gate.margin if margin is None else margin
    labels = [k for k in candidate_caps if k in reference_caps]
    caps = {k: (float(candidate_caps[k]), float(reference_caps[k])) for k in labels}
    ratios = {k: c / r for k, (c, r) in caps.items() if r > 0}
    logs = [math.log(max(x, MIN_RATIO)) for x in ratios.values()]
    mean_log, lower_log = bootstrap_bound(logs, confidence=gate.confidence,
                                          samples=gate.bootstrap, seed=seed)
    mean = math.exp(mean_log) - 1.0 if ratios else math.nan
    lower = math.exp(lower_log) - 1.0 if ratios else math.nan
    passed = bool(ratios) and lower >= margin
    return Comparison(reference, caps, {k: x - 1.0 for k, x in ratios.items()}, mean, lower,
                      margin, passed, [k for k in labels if k not in ratios])


@dataclass(frozen=True)
class Condition:
    """One thing the gate requires, whether it held, and the figures that decided it."""

    name: str
    passed: bool
    figures: str  # one line a reader can check
    detail: Mapping[str, Any] = field(default_factory=dict)  # per instance or per family

    def line(self) -> str:
        return f"{'pass' if self.passed else 'FAIL'}  {self.name:<12} {self.figures}"


def _worst(values: Mapping[str, float], high_is_bad: bool = True) -> tuple[str, float]:
    key = max(values, key=values.__getitem__) if high_is_bad else min(values,
                                                                      key=values.__getitem__)
    return key, values[key]


def _number(row: Mapping[str, Any], key: str) -> float | None:
    value = row.get(key)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def claim_conditions(claimed: Mapping[str, float], at_claim: Mapping[str, Mapping[str, Any]],
                     baseline_at_capacity: Mapping[str, Mapping[str, Any]], share: float,
                     gate: GateConfig, no_claim: Sequence[str] = ()) -> list[Condition]:
    """Pure: the conditions on the candidate's own run at its claimed capacity, per instance.

    ``claimed``: instance -> the rate judged (req/s); ``at_claim``: instance -> the run metrics
    at that rate; ``baseline_at_capacity``: the same for the tuned baseline at its capacity.
    ``no_claim``: instances where the candidate has no capacity, judged instead at the rate
    given in ``claimed`` (the baseline's capacity) so the figures say what went wrong there.
    A rate of 0 is not judged (left to the capacity conditions). A figure the run did not report
    fails its condition: what was not measured cannot be vouched for.
    """
    labels = [k for k, c in claimed.items() if c > 0]
    none = "no claim: the candidate has no capacity on any instance"
    rows = {k: at_claim.get(k) or {} for k in labels}
    note = (f" [no claim on {', '.join(no_claim[:3])}{' ...' if len(no_claim) > 3 else ''}: "
            "judged at the baseline's capacity]") if no_claim else ""

    def missing(key: str) -> list[str]:
        return [k for k in labels if _number(rows[k], key) is None]

    def unmeasured(name: str, key: str, lost: list[str]) -> Condition:
        return Condition(name, False, f"{key} not measured at the claimed capacity on "
                         f"{', '.join(lost[:3])}{' ...' if len(lost) > 3 else ''}")

    out: list[Condition] = []
    if not labels:
        return [Condition(name, False, none) for name in CLAIM_CONDITIONS]
    # share
    if lost := missing("attainment"):
        out.append(unmeasured("share", "attainment", lost))
    else:
        att = {k: float(rows[k]["attainment"]) for k in labels}
        k, v = _worst(att, high_is_bad=False)
        out.append(Condition("share", v >= share, f"SLO attainment at the claimed capacity, "
                             f"worst {v:.3f} on {k} at {claimed[k]:.3g} req/s "
                             f"({'>=' if v >= share else '<'} {share:g})", att))
    # sustainable
    if lost := [k for k in labels if not isinstance(rows[k].get("sustainable"), bool)]:
        out.append(unmeasured("sustainable", "sustainable", lost))
    else:
        growth = {k: _number(rows[k], "backlog_growth") for k in labels}
        bad = [k for k in labels if not rows[k]["sustainable"]]
        out.append(Condition("sustainable", not bad, (
            f"backlog grows over the window on {len(bad)} of {len(labels)} instances: "
            + ", ".join(f"{k} (growth {growth[k]:.3g})" if growth[k] is not None else k
                        for k in bad[:3])) if bad else
            f"backlog steady over the window on all {len(labels)} instances",
            {k: {"sustainable": rows[k]["sustainable"], "backlog_growth": growth[k]}
             for k in labels}))
    # max_wait
    if lost := missing("max_wait_over_deadline"):
        out.append(unmeasured("max_wait", "max_wait_over_deadline", lost))
    else:
        waits = {k: float(rows[k]["max_wait_over_deadline"]) for k in labels}
        k, v = _worst(waits)
        starved = sum(int(_number(rows[j], "starved") or 0) for j in labels)
        longest = _number(rows[k], "longest_wait_s")
        ok = v <= gate.max_wait_multiple
        out.append(Condition("max_wait", ok, (
            f"longest wait {v:.3g} x its TTFT deadline on {k}"
            + (f" ({longest:.3g} s)" if longest is not None else "")
            + f" ({'<=' if ok else '>'} {gate.max_wait_multiple:g} x); "
              f"{starved} starved request(s) in all"), waits))
    # finished
    if lost := missing("unfinished"):
        out.append(unmeasured("finished", "unfinished", lost))
    else:
        left = {k: int(rows[k]["unfinished"]) for k in labels}
        total = sum(left.values())
        worst = sorted((k for k in labels if left[k]), key=lambda j: -left[j])
        out.append(Condition("finished", total == 0, (
            f"{total} request(s) unfinished at the drain cut-off: "
            + ", ".join(f"{j} {left[j]}" for j in worst[:3])) if total else
            f"every request finished on all {len(labels)} instances", left))
    base_rows = {k: baseline_at_capacity.get(k) or {} for k in labels}
    out.append(_inversions(labels, rows, base_rows, gate.inversion_tolerance))
    # tail
    lost = missing("ttft_over_deadline_p99") + [
        k for k in labels if _number(base_rows[k], "ttft_over_deadline_p99") is None]
    if lost:
        out.append(unmeasured("tail", "ttft_over_deadline_p99", sorted(set(lost))))
    else:
        pairs = {k: (float(rows[k]["ttft_over_deadline_p99"]),
                     float(base_rows[k]["ttft_over_deadline_p99"])) for k in labels}
        excess = {k: c / b - 1.0 if b > 0 else (0.0 if c <= 0 else math.inf)
                  for k, (c, b) in pairs.items()}
        k, v = _worst(excess)
        ok = v <= gate.tail_tolerance
        out.append(Condition("tail", ok, (
            f"p99 TTFT/deadline at the claimed capacity vs the tuned baseline's at its capacity:"
            f" worst {pairs[k][0]:.3g} vs {pairs[k][1]:.3g} on {k} ({v:+.0%}, tolerance "
            f"{gate.tail_tolerance:+.0%})"), {j: list(p) for j, p in pairs.items()}))
    return [Condition(c.name, c.passed, c.figures + note, c.detail) for c in out] if note \
        else out


def _inversions(labels: Sequence[str], rows: Mapping[str, Mapping[str, Any]],
                base_rows: Mapping[str, Mapping[str, Any]], tolerance: float) -> Condition:
    """Requests overtaken while overdue, as a share of requests, against the baseline's share
    at its capacity. First-come-first-served and earliest-deadline-first orders make none; a
    policy that serves later arrivals while earlier ones are already late is starving them."""
    lost = [k for k in labels for row in (rows[k], base_rows[k])
            if _number(row, "priority_inversions") is None or not _number(row, "requests")]
    if lost:
        return Condition("inversions", False, "priority_inversions not measured at the claimed "
                         f"capacity on {', '.join(sorted(set(lost))[:3])}")

    def share(row: Mapping[str, Any]) -> float:
        return float(row["priority_inversions"]) / float(row["requests"])

    excess = {k: share(rows[k]) - share(base_rows[k]) for k in labels}
    k, v = _worst(excess)
    ok = v <= tolerance
    ids = ", ".join(f"#{i}" for i in (rows[k].get("inversion_ids") or [])[:5])
    total = sum(int(rows[j]["priority_inversions"]) for j in labels)
    return Condition("inversions", ok, (
        f"{total} request(s) overtaken while overdue in all; worst {k}: "
        f"{int(rows[k]['priority_inversions'])} of {int(rows[k]['requests'])}"
        + (f" ({ids})" if ids else "") + f" vs the baseline's "
        f"{int(base_rows[k]['priority_inversions'])} at its capacity ({v:+.2%} of requests, "
        f"tolerance {tolerance:+.2%})"),
        {j: [int(rows[j]["priority_inversions"]), int(base_rows[j]["priority_inversions"])]
         for j in labels})


def capacity_condition(name: str, comp: Comparison, who: str, confidence: float) -> Condition:
    """Pure: a comparison's verdict as a condition."""
    if not comp.gains:
        return Condition(name, False, f"no instance with a capacity of {who} to compare with")
    return Condition(name, comp.passed, (
        f"capacity over {who}: geometric mean {comp.mean_gain:+.1%}, {confidence:.0%} lower "
        f"bound {comp.lower_bound:+.1%} ({'>=' if comp.passed else '<'} margin "
        f"{comp.margin:.0%}) over {len(comp.gains)} instances"),
        {"mean_gain": comp.mean_gain, "lower_bound": comp.lower_bound, "margin": comp.margin})


def family_gains(comp: Comparison, families: Mapping[str, str]) -> dict[str, float]:
    """Pure: the geometric-mean gain per workload family (instance label -> family)."""
    groups: dict[str, list[float]] = {}
    for label, gain in comp.gains.items():
        groups.setdefault(families.get(label, label), []).append(gain + 1.0)
    return {fam: geometric_gain(ratios) for fam, ratios in groups.items()}


def regression_condition(per_family: Mapping[str, float], tolerance: float) -> Condition:
    """Pure: no workload family may lose more than ``tolerance`` of the baseline's capacity."""
    if not per_family:
        return Condition("regression", False, "no workload family to compare")
    fam, worst = _worst(dict(per_family), high_is_bad=False)
    ok = worst >= -tolerance
    return Condition("regression", ok, (
        f"worst workload {fam} {worst:+.1%} ({'>=' if ok else '<'} {-tolerance:+.1%}); "
        + ", ".join(f"{f} {g:+.1%}" for f, g in per_family.items())), dict(per_family))


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
AT_CLAIM_FIELDS = ("rate", "attainment", "sustainable", "backlog_growth",
                   "max_wait_over_deadline", "longest_wait_s", "unfinished", "starved",
                   "priority_inversions", "late_finish_share", "ttft_over_deadline_p99",
                   "goodput_rps", "goodput_tok_s", "throughput_tok_s", "jain_slowdown",
                   "starved_ids", "inversion_ids")


def measure_capacities(evaluator: Evaluator, policy: PolicyRef, instances: Sequence[Instance],
                       cfg: CampaignConfig, hints: Mapping[str, float] | None,
                       candidate_id: str | None
                       ) -> tuple[dict[str, float], dict[str, Any], str | None]:
    """Capacity per instance (label -> req/s), the raw results, and the first error."""
    jobs = capacity_jobs(policy.code, policy.params, instances, cfg, hints, name=policy.name)
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
                       instances: Sequence[Instance], base_caps: Mapping[str, float]
                       ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
    """Held-out capacities of the tuned references (cached after the first gate), and a table
    of each one's figures against the tuned baseline."""
    caps_of: dict[str, dict[str, float]] = {}
    table: dict[str, dict[str, Any]] = {}
    for k, ref in enumerate(references):
        stem = Path(ref.name).stem
        caps, _, err = measure_capacities(evaluator, ref, instances, cfg, base_caps,
                                          f"reference-{stem}")
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
    cand_caps, cand_raw, cand_err = measure_capacities(evaluator, candidate, instances, cfg,
                                                       base_caps, candidate_id)
    families = {i.label: i.family for i in instances}
    conditions: list[Condition] = []
    if cand_err:
        conditions.append(Condition("evaluation", False, f"evaluation failed: {cand_err}"))
    judged, at_claim, no_claim = _claims(evaluator, cfg, candidate, candidate_id, instances,
                                         cand_caps, cand_raw, base_caps)
    conditions += claim_conditions(
        judged, at_claim, {k: v.get("at_capacity") or {} for k, v in base_raw.items()},
        cfg.slo.share, gate, no_claim)
    comparisons = [compare(cand_caps, base_caps, "baseline", gate, cfg.seed)]
    conditions.append(capacity_condition("capacity", comparisons[0], "the tuned baseline",
                                         gate.confidence))
    per_family = family_gains(comparisons[0], families)
    conditions.append(regression_condition(per_family, gate.regression_tolerance))

    ref_caps, ref_table = measure_references(evaluator, cfg, references, instances, base_caps)
    best_ref = max(ref_caps, key=lambda s: ref_table[s]["mean_gain"], default=None)
    per_family_ref: dict[str, float] = {}
    if best_ref is not None:
        comp = compare(cand_caps, ref_caps[best_ref], f"reference:{best_ref}", gate,
                       cfg.seed + 2, margin=gate.reference_margin)
        comparisons.append(comp)
        per_family_ref = family_gains(comp, families)
        conditions.append(capacity_condition(
            "reference", comp, f"the best tuned reference {best_ref} (itself "
            f"{ref_table[best_ref]['mean_gain']:+.1%} over the baseline)", gate.confidence))
    elif gate.references:
        why = "; ".join(f"{s}: {r['error']}" for s, r in ref_table.items()) or \
            "no tuned reference policy was given to the gate"
        conditions.append(Condition("reference", False, f"no reference measured ({why})"))
    else:
        conditions.append(Condition("reference", True,
                                    "not required: gate.references is empty"))
    if promoted is not None:
        prom_caps, _, prom_err = measure_capacities(evaluator, promoted, instances, cfg,
                                                    base_caps, promoted_id)
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
        references=ref_table, per_family_reference=per_family_ref,
        at_claim={k: {"candidate": _fairness(at_claim.get(k) or {}),
                      "baseline": _fairness(base_raw[k].get("at_capacity") or {})}
                  for k in cand_raw},
    )


def _claims(evaluator: Evaluator, cfg: CampaignConfig, candidate: PolicyRef, candidate_id: str,
            instances: Sequence[Instance], cand_caps: Mapping[str, float],
            cand_raw: Mapping[str, Any], base_caps: Mapping[str, float]
            ) -> tuple[dict[str, float], dict[str, dict[str, Any]], list[str]]:
    """The rate each instance is judged at, the run there, and the instances without a claim.

    The candidate's own capacity and its capacity search's run at that rate; where it has no
    capacity (and did not fail), one run at the tuned baseline's capacity shows why."""
    judged = dict(cand_caps)
    at_claim = {k: dict(v.get("at_capacity") or {}) for k, v in cand_raw.items()}
    lost = [i for i in instances if cand_caps[i.label] <= 0 and not cand_raw[i.label].get("error")]
    runs = [Job(candidate.code, dict(candidate.params), i, "run", base_caps[i.label], cfg.cluster,
                cfg.slo, cfg.sandbox, name=candidate.name) for i in lost]
    for inst, res in zip(lost, evaluator.evaluate(runs, candidate_id) if runs else [],
                         strict=True):
        judged[inst.label], at_claim[inst.label] = base_caps[inst.label], res
    return judged, at_claim, [i.label for i in lost]


# ------------------------------------------------------------------------------- promotion
def bake_params(code: str, params: Mapping[str, Any]) -> str:
    """The policy file with each tunable's ``default`` set to its tuned value, so the file alone
    runs as tuned (and stays a valid policy file, tunable by anyone again).

    A tunable the file inherits from the fallback baseline (a route-only file's chunk size) is
    declared in the file's own TUNABLES with its tuned default: the loader hands a declared value
    to the fallback decision point, so the baked file runs exactly as it was tuned.
    """
    from autotuner.policy import read_policy_source

    tree = ast.parse(code)
    edits: list[tuple[int, int, int, int, str]] = []
    declared: set[str] = set()
    target: ast.Dict | None = None
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "TUNABLES" for t in node.targets)):
            continue
        if not isinstance(node.value, ast.Dict):
            continue
        target = node.value
        for key, spec in zip(node.value.keys, node.value.values, strict=True):
            if isinstance(key, ast.Constant):
                declared.add(str(key.value))
            if not (isinstance(key, ast.Constant) and key.value in params
                    and isinstance(spec, ast.Dict)):
                continue
            for k2, v2 in zip(spec.keys, spec.values, strict=True):
                if isinstance(k2, ast.Constant) and k2.value == "default":
                    edits.append((v2.lineno, v2.col_offset, v2.end_lineno or v2.lineno,
                                  v2.end_col_offset or v2.col_offset, _literal(params[key.value])))
    missing = [t for t in read_policy_source(code).tunables
               if t.name in params and t.name not in declared]
    if missing and target is not None and target.end_lineno is not None:
        lines = code.splitlines(keepends=True)
        close_line, close_col = target.end_lineno, (target.end_col_offset or 1) - 1
        before = "".join(lines[:close_line - 1]) + lines[close_line - 1].encode()[
            :close_col].decode()
        comma = "" if not target.keys or before.rstrip().endswith((",", "{")) else ","
        entries = "".join(
            f'\n    "{t.name}": {{"type": "{t.type}", "low": {_literal(t.low, t.type)}, '
            f'"high": {_literal(t.high, t.type)}, "log": {t.log}, '
            f'"default": {_literal(params[t.name], t.type)}}},  # inherited, tuned'
            for t in missing)
        edits.append((close_line, close_col, close_line, close_col, comma + entries + "\n"))
    lines = code.splitlines(keepends=True)
    for lineno, col, end_lineno, end_col, text in sorted(edits, reverse=True):
        first, last = lines[lineno - 1], lines[end_lineno - 1]
        fb, lb = first.encode(), last.encode()  # ast offsets are in UTF-8 bytes
        lines[lineno - 1:end_lineno] = [fb[:col].decode() + text + lb[end_col:].decode()]
    return "".join(lines)


def _literal(value: Any, kind: str | None = None) -> str:
    if kind == "int" or (kind is None and isinstance(value, int) and not isinstance(value, bool)):
        return repr(int(round(value)))
    return repr(float(value))


def versions() -> dict[str, str]:
    import numpy
    import optuna

    from autotuner import __version__

    return {"autotuner": __version__, "python": sys.version.split()[0],
            "numpy": numpy.__version__, "optuna": optuna.__version__,
            "platform": platform.platform()}


def write_promotion(
    campaign_dir: Path,
    cfg: CampaignConfig,
    candidate_id: str,
    candidate: PolicyRef,
    baseline: PolicyRef,
    baseline_name: str,
    result: GateResult,
    previous: str | None,
    reference: PolicyRef | None = None,
) -> tuple[Path, Path]:
    """Write ``promotions/<id>.py`` (tuned defaults baked in) and ``promotions/<id>.json``;
    beside them the tuned baseline and the best tuned reference (``reference.py``) the claim
    was measured against, so that the record alone reproduces the whole gate."""
    out = campaign_dir / "promotions"
    out.mkdir(parents=True, exist_ok=True)
    policy_path = out / f"{candidate_id}.py"
    baked = bake_params(candidate.code, candidate.params)
    _atomic_write(policy_path, baked)
    baseline_path = out / "baseline.py"
    _atomic_write(baseline_path, bake_params(baseline.code, baseline.params))
    record_path = out / f"{candidate_id}.json"
    ref_entry = None
    if reference is not None and result.reference is not None:
        _atomic_write(out / "reference.py", bake_params(reference.code, reference.params))
        ref_entry = {"name": result.reference, "file": "reference.py",
                     "params": dict(reference.params), "code_sha256": sha256(reference.code)}
    record = {
        "kind": "autotuner promotion",
        "campaign": cfg.name,
        "candidate": candidate_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "claim": claim_line(result, baseline_name),
        "claims": claims_by_workload(result),
        "reproduce": f"autotuner replay {record_path}",
        "policy_file": policy_path.name,
        "policy_sha256": sha256(baked),
        "code_sha256": sha256(candidate.code),
        "params": dict(candidate.params),
        "baseline": {"name": baseline_name, "file": baseline_path.name,
                     "params": dict(baseline.params), "code_sha256": sha256(baseline.code)},
        "reference": ref_entry,
        "previous_promoted": previous,
        "cluster": to_dict(cfg.cluster),
        "slo": to_dict(cfg.slo),
        "gate": to_dict(cfg.gate),
        "instances": result.instances,
        "statistics": result.to_dict(),
        "versions": versions(),
    }
    _atomic_write(record_path, json.dumps(json.loads(canonical(record)), indent=2) + "\n")
    return policy_path, record_path


def claim_line(result: GateResult, baseline_name: str) -> str:
    """The promotion's claim in one sentence, with the figures that back it."""
    comp = result.baseline
    text = (f"capacity under SLO, judged at its own claimed rate, on {len(result.instances)} "
            f"held-out workload instances: geometric mean {comp.mean_gain:+.1%} over the tuned "
            f"{baseline_name} baseline (one-sided {result.confidence:.0%} lower bound "
            f"{comp.lower_bound:+.1%}, margin {comp.margin:.0%})")
    ref = result.comparison("reference:")
    if ref is not None:
        text += (f", {ref.mean_gain:+.1%} over the best tuned reference {result.reference} "
                 f"(lower bound {ref.lower_bound:+.1%}, margin {ref.margin:.0%})")
    return text + "; per workload " + ", ".join(
        f"{fam} {g:+.1%}" for fam, g in result.per_family.items())


def claims_by_workload(result: GateResult) -> dict[str, dict[str, Any]]:
    """Per workload family: mean capacities (candidate, baseline, best reference) and the
    geometric-mean gains over the baseline and the best reference."""
    fam_of = {d["label"]: (d.get("trace") and Path(d["trace"]).name) or d["scenario"]
              for d in result.instances}
    base = result.baseline
    ref = result.comparison("reference:")
    out: dict[str, dict[str, Any]] = {}
    for fam in result.per_family:
        labels = [k for k, f in fam_of.items() if f == fam and k in base.capacities]
        row: dict[str, Any] = {
            "instances": labels,
            "capacity": float(np.mean([base.capacities[k][0] for k in labels])),
            "baseline_capacity": float(np.mean([base.capacities[k][1] for k in labels])),
            "gain_vs_baseline": result.per_family[fam]}
        if ref is not None:
            row |= {"reference": result.reference,
                    "reference_capacity": float(np.mean([ref.capacities[k][1] for k in labels
                                                         if k in ref.capacities])),
                    "gain_vs_reference": result.per_family_reference.get(fam)}
        out[fam] = row
    return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
