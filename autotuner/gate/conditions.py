"""The gate's conditions, each a pure function of measured figures that returns one
``Condition``: whether it held and the one line of figures that decided it (why each exists:
``autotuner.gate``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autotuner.config import GateConfig
from autotuner.gate.statistics import Comparison

# The conditions in the order they are printed; test and report code refer to these names.
CLAIM_CONDITIONS = ("share", "sustainable", "max_wait", "finished", "inversions", "tail")

Rows = Mapping[str, Mapping[str, Any]]  # instance label -> run metrics


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


def _missing(labels: Sequence[str], rows: Rows, key: str) -> list[str]:
    return [k for k in labels if _number(rows[k], key) is None]


def _unmeasured(name: str, key: str, lost: Sequence[str]) -> Condition:
    """What was not measured cannot be vouched for: the condition fails, naming where."""
    return Condition(name, False, f"{key} not measured at the claimed capacity on "
                     f"{', '.join(lost[:3])}{' ...' if len(lost) > 3 else ''}")


def claim_conditions(claimed: Mapping[str, float], at_claim: Rows, baseline_at_capacity: Rows,
                     share: float, gate: GateConfig, no_claim: Sequence[str] = ()
                     ) -> list[Condition]:
    """Pure: the conditions on the candidate's own run at its claimed capacity, per instance.

    ``claimed``: instance -> the rate judged (req/s); ``at_claim``: instance -> the run metrics
    at that rate; ``baseline_at_capacity``: the same for the tuned baseline at its capacity.
    ``no_claim``: instances where the candidate has no capacity, judged instead at the rate
    given in ``claimed`` (the baseline's capacity) so the figures say what went wrong there.
    A rate of 0 is not judged (left to the capacity conditions). A figure the run did not report
    fails its condition: what was not measured cannot be vouched for.
    """
    labels = [k for k, c in claimed.items() if c > 0]
    if not labels:
        none = "no claim: the candidate has no capacity on any instance"
        return [Condition(name, False, none) for name in CLAIM_CONDITIONS]
    rows = {k: at_claim.get(k) or {} for k in labels}
    base_rows = {k: baseline_at_capacity.get(k) or {} for k in labels}
    out = [_share(labels, rows, claimed, share), _sustainable(labels, rows),
           _max_wait(labels, rows, gate.max_wait_multiple), _finished(labels, rows),
           _inversions(labels, rows, base_rows, gate.inversion_tolerance),
           _tail(labels, rows, base_rows, gate.tail_tolerance)]
    if not no_claim:
        return out
    note = (f" [no claim on {', '.join(no_claim[:3])}{' ...' if len(no_claim) > 3 else ''}: "
            "judged at the baseline's capacity]")
    return [Condition(c.name, c.passed, c.figures + note, c.detail) for c in out]


def _share(labels: Sequence[str], rows: Rows, claimed: Mapping[str, float], share: float
           ) -> Condition:
    if lost := _missing(labels, rows, "attainment"):
        return _unmeasured("share", "attainment", lost)
    att = {k: float(rows[k]["attainment"]) for k in labels}
    k, v = _worst(att, high_is_bad=False)
    return Condition("share", v >= share, f"SLO attainment at the claimed capacity, "
                     f"worst {v:.3f} on {k} at {claimed[k]:.3g} req/s "
                     f"({'>=' if v >= share else '<'} {share:g})", att)


def _sustainable(labels: Sequence[str], rows: Rows) -> Condition:
    if lost := [k for k in labels if not isinstance(rows[k].get("sustainable"), bool)]:
        return _unmeasured("sustainable", "sustainable", lost)
    growth = {k: _number(rows[k], "backlog_growth") for k in labels}
    bad = [k for k in labels if not rows[k]["sustainable"]]
    return Condition("sustainable", not bad, (
        f"backlog grows over the window on {len(bad)} of {len(labels)} instances: "
        + ", ".join(f"{k} (growth {growth[k]:.3g})" if growth[k] is not None else k
                    for k in bad[:3])) if bad else
        f"backlog steady over the window on all {len(labels)} instances",
        {k: {"sustainable": rows[k]["sustainable"], "backlog_growth": growth[k]}
         for k in labels})


def _max_wait(labels: Sequence[str], rows: Rows, multiple: float) -> Condition:
    if lost := _missing(labels, rows, "max_wait_over_deadline"):
        return _unmeasured("max_wait", "max_wait_over_deadline", lost)
    waits = {k: float(rows[k]["max_wait_over_deadline"]) for k in labels}
    k, v = _worst(waits)
    starved = sum(int(_number(rows[j], "starved") or 0) for j in labels)
    longest = _number(rows[k], "longest_wait_s")
    ok = v <= multiple
    return Condition("max_wait", ok, (
        f"longest wait {v:.3g} x its TTFT deadline on {k}"
        + (f" ({longest:.3g} s)" if longest is not None else "")
        + f" ({'<=' if ok else '>'} {multiple:g} x); "
          f"{starved} starved request(s) in all"), waits)


def _finished(labels: Sequence[str], rows: Rows) -> Condition:
    if lost := _missing(labels, rows, "unfinished"):
        return _unmeasured("finished", "unfinished", lost)
    left = {k: int(rows[k]["unfinished"]) for k in labels}
    total = sum(left.values())
    worst = sorted((k for k in labels if left[k]), key=lambda j: -left[j])
    return Condition("finished", total == 0, (
        f"{total} request(s) unfinished at the drain cut-off: "
        + ", ".join(f"{j} {left[j]}" for j in worst[:3])) if total else
        f"every request finished on all {len(labels)} instances", left)


def _inversions(labels: Sequence[str], rows: Rows, base_rows: Rows, tolerance: float
                ) -> Condition:
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


def _tail(labels: Sequence[str], rows: Rows, base_rows: Rows, tolerance: float) -> Condition:
    lost = _missing(labels, rows, "ttft_over_deadline_p99") + [
        k for k in labels if _number(base_rows[k], "ttft_over_deadline_p99") is None]
    if lost:
        return _unmeasured("tail", "ttft_over_deadline_p99", sorted(set(lost)))
    pairs = {k: (float(rows[k]["ttft_over_deadline_p99"]),
                 float(base_rows[k]["ttft_over_deadline_p99"])) for k in labels}
    excess = {k: c / b - 1.0 if b > 0 else (0.0 if c <= 0 else math.inf)
              for k, (c, b) in pairs.items()}
    k, v = _worst(excess)
    ok = v <= tolerance
    return Condition("tail", ok, (
        f"p99 TTFT/deadline at the claimed capacity vs the tuned baseline's at its capacity:"
        f" worst {pairs[k][0]:.3g} vs {pairs[k][1]:.3g} on {k} ({v:+.0%}, tolerance "
        f"{tolerance:+.0%})"), {j: list(p) for j, p in pairs.items()})


def capacity_condition(name: str, comp: Comparison, who: str, confidence: float) -> Condition:
    """Pure: a comparison's verdict as a condition."""
    if not comp.gains:
        return Condition(name, False, f"no instance with a capacity of {who} to compare with")
    return Condition(name, comp.passed, (
        f"capacity over {who}: geometric mean {comp.mean_gain:+.1%}, {confidence:.0%} lower "
        f"bound {comp.lower_bound:+.1%} ({'>=' if comp.passed else '<'} margin "
        f"{comp.margin:.0%}) over {len(comp.gains)} instances"),
        {"mean_gain": comp.mean_gain, "lower_bound": comp.lower_bound, "margin": comp.margin})


def regression_condition(per_family: Mapping[str, float], tolerance: float) -> Condition:
    """Pure: no workload family may lose more than ``tolerance`` of the baseline's capacity."""
    if not per_family:
        return Condition("regression", False, "no workload family to compare")
    fam, worst = _worst(dict(per_family), high_is_bad=False)
    ok = worst >= -tolerance
    return Condition("regression", ok, (
        f"worst workload {fam} {worst:+.1%} ({'>=' if ok else '<'} {-tolerance:+.1%}); "
        + ", ".join(f"{f} {g:+.1%}" for f, g in per_family.items())), dict(per_family))
