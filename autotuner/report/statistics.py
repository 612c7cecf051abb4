"""The report's figures from measured capacities: gains with intervals, the fairness table, the
reference comparison and the headroom shares.

Every interval is the gate's statistic (``gate.geometric_interval``: the geometric mean of the
capacity ratios and its bootstrap, the same draws for the same seed), so the "all instances"
interval's lower end is the gate's own bound; there is no second bootstrap here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from autotuner.config import CampaignConfig
from autotuner.gate import Comparison, compare, geometric_interval
from autotuner.report.records import (
    FairnessRow,
    FamilyGain,
    Gains,
    Headroom,
    HeadroomBar,
    HeadroomRow,
    InstanceGain,
    Policy,
    ReferenceRow,
)
from autotuner.report.roofline import RooflineBound
from autotuner.report.text import params_text
from autotuner.review import named_requests
from autotuner.scoring import Instance

# Fairness figures at a policy's own capacity: averaged over instances, or summed (counts).
FAIRNESS_MEANS = ("goodput_tok_s", "longest_wait_s", "max_wait_over_deadline",
                  "late_finish_share", "jain_slowdown")
FAIRNESS_COUNTS = ("starved", "priority_inversions", "unfinished")


def gain_interval(gains: Sequence[float], confidence: float, samples: int, seed: int
                  ) -> tuple[float, float, float]:
    """The gate's statistic for capacity gains (ratios minus one; non-finite ones, where the
    reference has no capacity, left out): the geometric mean and its bootstrap interval."""
    return geometric_interval([1.0 + g for g in gains if math.isfinite(g)],
                              confidence=confidence, samples=samples, seed=seed)


def gain(a: float, b: float) -> float:
    return a / b - 1.0 if b > 0 else (0.0 if a <= 0 else math.inf)


def mean_of(values: Sequence[Any]) -> float | None:
    """Mean of the numbers in ``values`` (None when there are none: not measured)."""
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)]
    return float(np.mean(nums)) if nums else None


def _by_family(insts: Sequence[Instance]) -> dict[str, list[Instance]]:
    out: dict[str, list[Instance]] = {}
    for inst in insts:
        out.setdefault(inst.family, []).append(inst)
    return out


# ------------------------------------------------------------------------------- gains
def gains(subject: Policy, baseline: Policy, insts: Sequence[Instance], cfg: CampaignConfig
          ) -> tuple[Gains, Comparison]:
    """Per workload family and over all instances, the subject's held-out capacity gain over
    the tuned baseline; and the gate's comparison it restates."""
    g = cfg.gate
    comp = compare(subject.caps, baseline.caps, "baseline", g, cfg.seed)
    mean, lo, hi = gain_interval(list(comp.gains.values()), g.confidence, g.bootstrap, cfg.seed)
    families = []
    for k, (fam, members) in enumerate(_by_family(insts).items()):
        rows = []
        for i in members:
            cap_s, cap_b = subject.caps.get(i.label, 0.0), baseline.caps.get(i.label, 0.0)
            rows.append(InstanceGain(i.label, cap_s, cap_b, gain(cap_s, cap_b)))
        m, flo, fhi = gain_interval([r.gain for r in rows], g.confidence, g.bootstrap,
                                    cfg.seed + 7 + k)
        families.append(FamilyGain(fam, m, flo, fhi, tuple(rows),
                                   float(np.mean([r.subject for r in rows])),
                                   float(np.mean([r.baseline for r in rows]))))
    return Gains(mean=comp.mean_gain, lower_bound=comp.lower_bound, lo=lo, hi=hi,
                 interval_mean=mean, margin=g.margin, passed=comp.passed,
                 families=tuple(families), instances=len(insts),
                 per_instance=tuple(comp.gains.values())), comp


def same_capacities(comp: Comparison, recorded: Mapping[str, Any]) -> bool:
    """Whether the re-measured capacities are the gate's recorded ones (to rounding)."""
    return all(abs(comp.capacities[k][0] - v[0]) <= 1e-9 * max(1.0, v[0])
               and abs(comp.capacities[k][1] - v[1]) <= 1e-9 * max(1.0, v[1])
               for k, v in recorded["capacities"].items() if k in comp.capacities)


# ------------------------------------------------------------------------------- fairness
def fairness_rows(insts: Sequence[Instance], policies: Sequence[Policy],
                  saturation: Mapping[str, Mapping[str, Mapping[str, Any]]]
                  ) -> tuple[FairnessRow, ...]:
    """Per workload family and policy, beside capacity: the fairness figures at the policy's
    own capacity (means over instances; counts summed) and output tokens/s at saturation
    (``saturation``: policy key -> instance -> run metrics), with the starved requests and
    priority inversions named."""
    rows = []
    for fam, members in _by_family(insts).items():
        for p in policies:
            at = [p.at_capacity.get(i.label) or {} for i in members]
            sat = [saturation[p.key][i.label] for i in members if i.label in saturation[p.key]]
            rows.append(FairnessRow(
                family=fam, key=p.key, label=p.label,
                capacity=mean_of([p.caps.get(i.label) for i in members]),
                **{k: mean_of([m.get(k) for m in at]) for k in FAIRNESS_MEANS},
                **{k: int(sum(m.get(k) or 0 for m in at)) for k in FAIRNESS_COUNTS},
                saturation_tok_s=mean_of([r.get("throughput_tok_s") for r in sat]),
                named="; ".join(f"{i.label}: {n}" for i, m in zip(members, at, strict=True)
                                if (n := named_requests(m)))))
    return tuple(rows)


# ------------------------------------------------------------------------------- references
def reference_rows(subject: Policy | None, refs: Sequence[Policy], baseline: Policy,
                   ref_insts: Sequence[Instance], cfg: CampaignConfig
                   ) -> tuple[ReferenceRow, ...]:
    """The subject (first) and every tuned reference against the tuned baseline on the
    reference instances; for each reference, the subject's gain over it."""
    g = cfg.gate
    labels = [i.label for i in ref_insts]
    rows = []
    for k, p in enumerate(([subject] if subject else []) + list(refs)):
        gains_ = [gain(p.caps.get(x, 0.0), baseline.caps.get(x, 0.0)) for x in labels]
        m, lo, hi = gain_interval(gains_, g.confidence, g.bootstrap, cfg.seed + 101 + k)
        over: dict[str, float] = {}
        if subject is not None and p.key != subject.key:
            sg = [gain(subject.caps.get(x, 0.0), p.caps.get(x, 0.0)) for x in labels]
            sm, slo, shi = gain_interval(sg, g.confidence, g.bootstrap, cfg.seed + 201 + k)
            over = {"subject_gain": sm, "subject_lo": slo, "subject_hi": shi}
        rows.append(ReferenceRow(
            label=p.label, key=p.key, params=params_text(p.params), note=p.note,
            mean_cap=float(np.mean([p.caps.get(x, 0.0) for x in labels]))
            if labels else math.nan, gain=m, lo=lo, hi=hi, error=p.error,
            per_instance=tuple(gains_), **over))
    return tuple(rows)


# ------------------------------------------------------------------------------- headroom
def _share_of(p: Policy, labels: Sequence[str], bounds: Mapping[str, RooflineBound],
              which: str = "rate") -> float:
    vals = [p.caps.get(x, 0.0) / getattr(bounds[x], which) for x in labels
            if math.isfinite(getattr(bounds[x], which)) and getattr(bounds[x], which) > 0]
    return float(np.mean(vals)) if vals else math.nan


def _headroom_row(fam: str, labs: Sequence[str], bounds: Mapping[str, RooflineBound],
                  baseline: Policy, subject: Policy | None) -> HeadroomRow:
    def avg(values: Sequence[float]) -> float:
        return float(np.mean(values))

    extra = {} if subject is None else {
        "subject": avg([subject.caps.get(x, 0.0) for x in labs]),
        "subject_share": _share_of(subject, labs, bounds),
        "subject_steady": _share_of(subject, labs, bounds, "steady_rate")}
    return HeadroomRow(
        family=fam, bound=avg([bounds[x].rate for x in labs]),
        steady=avg([bounds[x].steady_rate for x in labs]),
        request_ms=1000 * avg([bounds[x].request_s for x in labs]),
        decode_share=avg([bounds[x].decode_share for x in labs]),
        prefix_hit_share=avg([bounds[x].prefix_hit_share for x in labs]),
        baseline=avg([baseline.caps.get(x, 0.0) for x in labs]),
        baseline_share=_share_of(baseline, labs, bounds),
        baseline_steady=_share_of(baseline, labs, bounds, "steady_rate"), **extra)


def headroom(insts: Sequence[Instance], ref_insts: Sequence[Instance],
             bounds: Mapping[str, RooflineBound], baseline: Policy, refs: Sequence[Policy],
             subject: Policy | None, ideal_tokens: int) -> Headroom:
    """Measured capacity as a share of the roofline upper bound (and of the sustained
    roofline rate), per family and over all held-out instances."""
    rows = tuple(_headroom_row(fam, [i.label for i in members], bounds, baseline, subject)
                 for fam, members in _by_family(insts).items())
    bars = []
    for p in [baseline, *refs] + ([subject] if subject else []):
        labs = [x.label for x in (ref_insts if p.key.startswith("ref:") else insts)
                if x.label in p.caps]
        shares = [p.caps[x] / bounds[x].rate for x in labs if math.isfinite(bounds[x].rate)]
        if shares:
            bars.append(HeadroomBar(p.key, p.label, float(np.mean(shares)), tuple(shares)))
    labels = [i.label for i in insts]
    sustained = [bounds[x].steady_rate / bounds[x].rate for x in labels
                 if math.isfinite(bounds[x].rate)]
    over = tuple(r.family for r in rows if max(
        r.baseline_steady, r.subject_steady if r.subject_steady is not None else 0.0) > 1.0)
    return Headroom(
        rows=rows, ideal_tokens=ideal_tokens,
        baseline_share=_share_of(baseline, labels, bounds),
        baseline_steady=_share_of(baseline, labels, bounds, "steady_rate"),
        subject_share=None if subject is None else _share_of(subject, labels, bounds),
        subject_steady=None if subject is None else _share_of(subject, labels, bounds,
                                                              "steady_rate"),
        over_steady=over, bars=tuple(bars),
        sustained=float(np.mean(sustained)) if sustained else None)
