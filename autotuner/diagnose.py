"""Where a policy loses or wins against the tuned baseline, and why a winner wins: measured
figures as typed records, never prose read back.

A score says *how much* a policy gains; a model asked to improve it, and a reader asked to
believe it, need to know *where*. The same runs that give the score (the ladder's, at the same
rates for the policy and the tuned baseline, replayed and measured by the trusted side) carry
what a latency is made of: the TTFT tail, the inter-token tail (symptoms: what the SLO judges)
and replica imbalance, KV pressure (preemptions) and prefix-cache hits (causes: what a policy's
decisions move). ``diagnose`` pairs them per workload (``Diagnosis``); the prompt shows the
parent's as a table; ``explain`` turns a finalist's into an ``Explanation``: which decisions its
code changed, which measured cause moved most where it gains, what it cost. Every figure an
explanation cites is one of its diagnosis's, so a test (or a reader) can check each claim.

Pure: this module reads result dicts (``RunMetrics.to_dict()``) and imports nothing that runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# A change counts when it is at least this share of the baseline's figure and at least the
# axis's floor in absolute terms (below either, a ladder of a few hundred requests cannot tell
# it from noise).
MATERIAL = 0.10
# A workload counts as a gain (or a loss) for the explanation beyond this score.
GAIN_THRESHOLD = 0.02


@dataclass(frozen=True)
class Axis:
    """One diagnostic: how to read it from a run, and which way is worse."""

    name: str
    label: str  # in an explanation
    column: str  # as a column of the prompt's table, with the unit and scale it shows there
    prompt_unit: str  # (a small model's prompt pays a token per digit: "54" ms, not 0.054 s)
    prompt_scale: float
    unit: str  # "s", "%" (a share shown in percent) or "" (a plain number)
    kind: str  # "symptom" (what the SLO judges) or "cause" (what decisions move)
    higher_is_worse: bool
    floor: float  # the smallest absolute change that counts
    read: Callable[[Mapping[str, Any]], float | None]

    def show(self, value: float, digits: int = 3) -> str:
        if self.unit == "%":
            return f"{value:.0%}"
        if self.unit == "s":
            return f"{value:.{digits}g} s"
        return f"{value:.{min(digits, 2)}g}"


def _field(name: str) -> Callable[[Mapping[str, Any]], float | None]:
    def read(run: Mapping[str, Any]) -> float | None:
        value = run.get(name)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
    return read


def _per_request_preemptions(run: Mapping[str, Any]) -> float | None:
    count, requests = run.get("preemptions"), run.get("requests")
    if not isinstance(count, int) or not isinstance(requests, int) or requests <= 0:
        return None
    return count / requests


AXES: tuple[Axis, ...] = (
    Axis("ttft_tail", "TTFT p99", "ttft_p99", "s", 1.0, "s", "symptom", True, 0.01,
         _field("ttft_p99")),
    Axis("tbt_tail", "inter-token gap p99", "gap_p99", "ms", 1000.0, "s", "symptom", True,
         0.005, _field("tbt_p99")),
    Axis("imbalance", "replica imbalance", "imbalance", "pct", 100.0, "", "cause", True, 0.01,
         _field("replica_imbalance")),
    Axis("preemptions", "preemptions per request", "preempt", "per_100_req", 100.0, "",
         "cause", True, 0.01, _per_request_preemptions),
    Axis("cache_hits", "prefix-cache hits", "cache_hit", "pct", 100.0, "%", "cause", False,
         0.01, _field("prefix_hit_rate")),
)
AXIS = {a.name: a for a in AXES}


@dataclass(frozen=True)
class Figure:
    """One axis on one workload: the policy's value and the tuned baseline's, each the mean
    over the ladder's rungs (the same rates for both)."""

    axis: str
    policy: float
    baseline: float

    @property
    def loss(self) -> float:
        """Relative change in the worse direction: +0.5 is 50 % worse than the baseline, -0.5
        50 % better."""
        a = AXIS[self.axis]
        worse = self.policy - self.baseline if a.higher_is_worse else self.baseline - self.policy
        return worse / max(abs(self.baseline), a.floor)

    @property
    def material(self) -> bool:
        return (abs(self.policy - self.baseline) >= AXIS[self.axis].floor
                and abs(self.loss) >= MATERIAL)

    def text(self) -> str:
        a = AXIS[self.axis]
        return f"{a.label} {a.show(self.baseline)} -> {a.show(self.policy)}"


@dataclass(frozen=True)
class WorkloadDiagnosis:
    """One workload instance: the score there and each axis's figure."""

    workload: str
    gain: float | None  # ladder goodput vs the tuned baseline (0.0 = equal)
    rates: tuple[float, ...]
    figures: tuple[Figure, ...]

    def figure(self, axis: str) -> Figure | None:
        return next((f for f in self.figures if f.axis == axis), None)

    def losses(self) -> tuple[Figure, ...]:
        """The material figures where the policy is worse, worst first."""
        return tuple(sorted((f for f in self.figures if f.material and f.loss > 0),
                            key=lambda f: -f.loss))

    def wins(self, kind: str | None = None) -> tuple[Figure, ...]:
        """The material figures where the policy is better (of one kind), best first."""
        return tuple(sorted((f for f in self.figures if f.material and f.loss < 0
                             and (kind is None or AXIS[f.axis].kind == kind)),
                            key=lambda f: f.loss))


@dataclass(frozen=True)
class Diagnosis:
    """A policy against the tuned baseline on one split, per workload."""

    policy: str
    baseline: str
    split: str
    workloads: tuple[WorkloadDiagnosis, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Diagnosis:
        return cls(d["policy"], d["baseline"], d["split"], tuple(
            WorkloadDiagnosis(w["workload"], w["gain"], tuple(w["rates"]),
                              tuple(Figure(**f) for f in w["figures"]))
            for w in d["workloads"]))


def _mean(values: Sequence[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return sum(got) / len(got) if got else None


def diagnose(policy: str, baseline: str, split: str,
             runs: Mapping[str, Sequence[Mapping[str, Any] | None]],
             baseline_runs: Mapping[str, Sequence[Mapping[str, Any] | None]],
             gains: Mapping[str, float | None]) -> Diagnosis:
    """Pair the policy's runs with the baseline's, rung by rung, per workload label.

    ``runs``/``baseline_runs``: label -> one result per ladder rung (None where there is none, as
    a run that failed or was never made). An axis is averaged over the rungs where both sides
    report it, so the two means are always over the same rates; an axis neither reports on any
    rung is left out."""
    out = []
    for label, mine in runs.items():
        theirs = baseline_runs.get(label) or ()
        pairs = [(a, b) for a, b in zip(mine, theirs, strict=False)
                 if a and b and not a.get("error") and not b.get("error")]
        figures = []
        for axis in AXES:
            both = [(axis.read(a), axis.read(b)) for a, b in pairs]
            both = [(x, y) for x, y in both if x is not None and y is not None]
            if both:
                figures.append(Figure(axis.name, _mean([x for x, _ in both]) or 0.0,
                                      _mean([y for _, y in both]) or 0.0))
        rates = tuple(float(a.get("rate") or 0.0) for a, _ in pairs)
        out.append(WorkloadDiagnosis(label, gains.get(label), rates, tuple(figures)))
    return Diagnosis(policy, baseline, split, tuple(out))


# ------------------------------------------------------------------------------- the prompt
@dataclass(frozen=True)
class Table:
    """The prompt's table: a column per axis that shows something, a row per workload."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    zero: tuple[str, ...]  # axes left out: zero for both sides on every workload


def diagnosis_table(diag: Diagnosis, same_as_baseline: bool) -> Table:
    """The parent against the baseline in as few tokens as a small model's prompt affords: each
    cell the relative change in percent in the worse direction (``+24``: the parent is 24 %
    worse there; ``0`` within noise); for the baseline itself, its own figures, the unit in
    the header."""
    shown, zero = [], []
    for axis in AXES:
        figs = [f for w in diag.workloads if (f := w.figure(axis.name)) is not None]
        if not figs:
            continue  # not measured (runs cached before the figure existed)
        if all(abs(f.policy) < axis.floor and abs(f.baseline) < axis.floor for f in figs):
            zero.append(axis.column)
        else:
            shown.append(axis)
    rows = []
    for w in diag.workloads:
        cells = [w.workload]
        for axis in shown:
            f = w.figure(axis.name)
            if f is None:
                cells.append("-")
            elif same_as_baseline:
                value = f.policy * axis.prompt_scale
                cells.append(f"{value:.0f}" if abs(value) >= 10 else f"{value:.2g}")
            else:
                cells.append(f"{100 * f.loss:+.0f}" if f.material else "0")
        rows.append(tuple(cells))
    columns = [f"{a.column}_{a.prompt_unit}" if same_as_baseline else a.column for a in shown]
    return Table(("workload", *columns), tuple(rows), tuple(zero))


# ------------------------------------------------------------------------------- why it wins
@dataclass(frozen=True)
class WorkloadCredit:
    """Where the candidate gains, and the figures that moved there."""

    workload: str
    gain: float
    causes: tuple[Figure, ...]  # material improvements of causes, best first
    symptoms: tuple[Figure, ...]  # material improvements of the SLO's terms, best first
    costs: tuple[Figure, ...]  # material losses, worst first


@dataclass(frozen=True)
class Explanation:
    """Why a finalist wins (or does not), from its code and measured figures only.

    changed: decision points whose code differs from the baseline's (``lineage.changed_points``);
    changed_from_parent: the same against its parent (empty when the parent is the baseline).
    carried_by: the cause axis that improved most, in mean relative terms, over the workloads
    where it gains (None: no cause moved beyond noise there); symptom: likewise among the SLO's
    terms. gains: each such workload's figures (what improved, what it cost). flat: workloads
    without a gain beyond ``GAIN_THRESHOLD``. diagnosis: the figures all of it is read from.
    """

    candidate: str
    baseline: str
    parent: str | None
    split: str
    changed: tuple[str, ...]
    changed_from_parent: tuple[str, ...]
    tunables_added: tuple[str, ...]
    tunables_removed: tuple[str, ...]
    carried_by: str | None
    symptom: str | None
    gains: tuple[WorkloadCredit, ...]
    flat: tuple[str, ...]
    diagnosis: Diagnosis | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["diagnosis"] = self.diagnosis.to_dict() if self.diagnosis is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Explanation:
        def figs(items: Sequence[Mapping[str, Any]]) -> tuple[Figure, ...]:
            return tuple(Figure(**f) for f in items)
        return cls(
            d["candidate"], d["baseline"], d.get("parent"), d["split"], tuple(d["changed"]),
            tuple(d["changed_from_parent"]), tuple(d["tunables_added"]),
            tuple(d["tunables_removed"]), d.get("carried_by"), d.get("symptom"),
            tuple(WorkloadCredit(g["workload"], g["gain"], figs(g["causes"]),
                                 figs(g["symptoms"]), figs(g["costs"])) for g in d["gains"]),
            tuple(d["flat"]), Diagnosis.from_dict(d["diagnosis"]) if d.get("diagnosis") else None)

    def lines(self) -> list[str]:
        """The explanation as a reader sees it (written from the fields, never stored)."""
        changed = ", ".join(self.changed) or "nothing"
        kept = [p for p in ("partition", "route") if p not in self.changed]
        head = f"changes {changed} against the {self.baseline} baseline"
        if kept:
            head += f" ({', '.join(kept)} as the baseline's)"
        if self.parent and self.changed_from_parent:
            head += f"; against its parent {self.parent}: {', '.join(self.changed_from_parent)}"
        tun = [f"+{t}" for t in self.tunables_added] + [f"-{t}" for t in self.tunables_removed]
        if tun:
            head += f"; tunables {' '.join(tun)}"
        out = [head]
        if self.carried_by:
            out.append(f"the gain comes with {AXIS[self.carried_by].label}"
                       + (f" (and {AXIS[self.symptom].label} on the SLO side)"
                          if self.symptom else "")
                       + f", measured at the same rates on the {self.split} split:")
        elif self.symptom:
            out.append(f"the gain shows in {AXIS[self.symptom].label}; no cause measured here "
                       f"moved beyond noise ({self.split} split):")
        elif self.gains:
            out.append(f"no diagnostic moved beyond noise where it gains ({self.split} split):")
        for g in self.gains:
            figs = "; ".join(f.text() for f in (*g.causes, *g.symptoms)) or "no figure moved"
            if g.costs:
                figs += "; at a cost: " + "; ".join(f.text() for f in g.costs)
            out.append(f"  {g.workload} {g.gain:+.1%}: {figs}")
        if self.flat:
            out.append(f"no gain on {', '.join(self.flat)}")
        return out


def explain(diag: Diagnosis, *, changed: Sequence[str], changed_from_parent: Sequence[str] = (),
            parent: str | None = None, tunables: Sequence[str] = (),
            baseline_tunables: Sequence[str] = ()) -> Explanation:
    """The explanation of a candidate's diagnosis: its gains' causes, ranked by mean relative
    improvement over the workloads where it gains (an axis missing on a workload counts 0)."""
    won = [w for w in diag.workloads if w.gain is not None and w.gain > GAIN_THRESHOLD]
    flat = tuple(w.workload for w in diag.workloads if w not in won)

    def best(kind: str) -> str | None:
        scores: dict[str, float] = {}
        for w in won:
            for f in w.wins(kind):
                scores[f.axis] = scores.get(f.axis, 0.0) + f.loss / len(won)
        return min(scores, key=lambda k: (scores[k], k)) if scores else None

    return Explanation(
        candidate=diag.policy, baseline=diag.baseline, parent=parent, split=diag.split,
        changed=tuple(changed), changed_from_parent=tuple(changed_from_parent),
        tunables_added=tuple(t for t in tunables if t not in baseline_tunables),
        tunables_removed=tuple(t for t in baseline_tunables if t not in tunables),
        carried_by=best("cause"), symptom=best("symptom"),
        gains=tuple(WorkloadCredit(w.workload, float(w.gain or 0.0), w.wins("cause"),
                                   w.wins("symptom"), w.losses()) for w in won),
        flat=flat, diagnosis=diag)
