"""The report's typed records: what measuring and the statistics hand to the figures and the
templates. Each is frozen, so a number cannot change between the table that shows it and the
plot that draws it; the templates read these fields by name, and nothing is parsed back out of
rendered text.

Capacities are in requests/s and keyed by held-out instance label (``multiturn@1001``); gains are
ratios minus one; shares are fractions of 1. ``None`` means "not measured / not applicable" (the
templates say "-").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from autotuner.config import GateConfig, SLOConfig


# ------------------------------------------------------------------------------- the search
@dataclass(frozen=True)
class Progress:
    """Best training objective against proposals made (proposal order), and each tuned
    proposal's own score (``px``, ``py``, hover ``labels``); ``seeds``: (id, score)."""

    x: tuple[int, ...]
    best: tuple[float, ...]
    px: tuple[int, ...]
    py: tuple[float, ...]
    labels: tuple[str, ...]
    seeds: tuple[tuple[str, float], ...]
    made: int


@dataclass(frozen=True)
class Failures:
    counts: Mapping[str, int]  # reason category -> candidates
    examples: Mapping[str, tuple[str, ...]]  # reason category -> up to two "id: failure"


@dataclass(frozen=True)
class Spend:
    prompt_tokens: int
    completion_tokens: int
    tokens: int
    cost_usd: float
    elapsed_s: float
    evaluations: int
    simulation_s: float
    trials: int | None  # Optuna trials in the journal (None: unreadable)
    candidates: int
    proposals: int
    statuses: Mapping[str, int]


@dataclass(frozen=True)
class Search:
    """What the archive alone says about the search."""

    progress: Progress
    failures: Failures
    spend: Spend


# ------------------------------------------------------------------------------- policies
@dataclass(frozen=True)
class Policy:
    """A policy as the report measures it (code + tuned parameters) and what it found there.

    key: "baseline", "subject" or "ref:<stem>"; caps: held-out capacity per instance;
    at_capacity: the run metrics at that capacity; error: the first instance's failure."""

    key: str
    label: str
    code: str
    params: Mapping[str, Any]
    note: str = ""
    caps: Mapping[str, float] = field(default_factory=dict)
    at_capacity: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    error: str | None = None
    lengths: Mapping[str, int] = field(default_factory=dict)  # run length each was found on

    def measured(self, results: Mapping[str, Mapping[str, Any]]) -> Policy:
        """This policy with capacity job results (instance label -> result) taken in."""
        errors = [f"{k}: {r['error']}" for k, r in results.items() if r.get("error")]
        return replace(self,
                       caps={k: float(r.get("capacity") or 0.0) for k, r in results.items()},
                       at_capacity={k: dict(r.get("at_capacity") or {})
                                    for k, r in results.items()},
                       error=errors[0] if errors else None,
                       lengths={k: int(r.get("requests_multiple") or 1)
                                for k, r in results.items()})


@dataclass(frozen=True)
class BaselineInfo:
    name: str
    params: Mapping[str, Any]
    params_text: str


@dataclass(frozen=True)
class SubjectInfo:
    """The policy the report is about: the promoted one, else the best candidate."""

    id: str
    label: str
    params_text: str
    train: float | None
    validation: float | None
    lineage: tuple[str, ...]
    status: str
    why: tuple[str, ...] = ()  # its explanation's lines (autotuner.diagnose), when it was gated


@dataclass(frozen=True)
class PolicySummary:
    label: str
    caps: Mapping[str, float]
    error: str | None


# ------------------------------------------------------------------------------- gains
@dataclass(frozen=True)
class InstanceGain:
    label: str
    subject: float  # capacity
    baseline: float
    gain: float


@dataclass(frozen=True)
class FamilyGain:
    family: str
    mean: float
    lo: float
    hi: float
    rows: tuple[InstanceGain, ...]
    cap_subject: float  # mean capacity over the family's instances
    cap_baseline: float


@dataclass(frozen=True)
class Gains:
    """Held-out capacity of the subject over the tuned baseline, as the gate computes it.

    mean, lower_bound: the gate's comparison; lo, hi: the interval of the same bootstrap draws
    (lo is the gate's bound); interval_mean: the interval's centre (the gate's mean, through
    the per-instance gains); per_instance: those gains (the plot's dots)."""

    mean: float
    lower_bound: float
    lo: float
    hi: float
    interval_mean: float
    margin: float
    passed: bool
    families: tuple[FamilyGain, ...]
    instances: int
    per_instance: tuple[float, ...]


@dataclass(frozen=True)
class FairnessRow:
    """Per workload family and policy, at the policy's own capacity: means over instances,
    counts summed; ``saturation_tok_s`` at SATURATION_FACTOR x the baseline's capacity."""

    family: str
    key: str
    label: str
    capacity: float | None
    goodput_tok_s: float | None
    longest_wait_s: float | None
    max_wait_over_deadline: float | None
    late_finish_share: float | None
    jain_slowdown: float | None
    starved: int
    priority_inversions: int
    unfinished: int
    saturation_tok_s: float | None
    named: str  # the starved and overtaken requests, by instance


# ------------------------------------------------------------------------------- one instance
@dataclass(frozen=True)
class Focus:
    """The held-out instance the curve and the CDFs are drawn on, at ``rate`` (the tuned
    baseline's capacity there); ``bound``/``steady``: its roofline rates."""

    label: str
    rate: float
    bound: float
    steady: float


@dataclass(frozen=True)
class CurvePoint:
    goodput_rps: float | None
    attainment: float | None
    ttft_p90: float | None
    tpot_p90: float | None
    error: str | None


@dataclass(frozen=True)
class Curve:
    rates: tuple[float, ...]
    results: Mapping[str, tuple[CurvePoint, ...]]  # policy key -> one point per rate


@dataclass(frozen=True)
class Distribution:
    """One run's latency distributions: SLO shares, percentiles (s), and the CDF points
    (``cdf``: metric -> (x, y)) the figures draw. All None but ``error`` if the run failed."""

    error: str | None
    attainment: float | None = None
    ttft_ok: float | None = None
    tpot_ok: float | None = None
    tbt_ok: float | None = None
    first_token_share: float | None = None
    ttft_p50: float | None = None
    ttft_p90: float | None = None
    ttft_p99: float | None = None
    tbt_p50: float | None = None
    tbt_p90: float | None = None
    tbt_p99: float | None = None
    cdf: Mapping[str, tuple[list[float], list[float]]] = field(default_factory=dict)


# ------------------------------------------------------------------------------- references
@dataclass(frozen=True)
class ReferenceRow:
    """A policy against the tuned baseline on the reference instances (the subject first);
    ``subject_*``: the subject's gain over this reference (None for the subject itself)."""

    label: str
    key: str
    params: str
    note: str
    mean_cap: float
    gain: float
    lo: float
    hi: float
    error: str | None
    per_instance: tuple[float, ...]
    subject_gain: float | None = None
    subject_lo: float | None = None
    subject_hi: float | None = None


# ------------------------------------------------------------------------------- headroom
@dataclass(frozen=True)
class HeadroomRow:
    family: str
    bound: float
    steady: float
    request_ms: float
    decode_share: float
    prefix_hit_share: float
    baseline: float
    baseline_share: float
    baseline_steady: float
    subject: float | None = None
    subject_share: float | None = None
    subject_steady: float | None = None


@dataclass(frozen=True)
class HeadroomBar:
    key: str
    label: str
    mean: float
    shares: tuple[float, ...]  # capacity / upper bound, per instance


@dataclass(frozen=True)
class Headroom:
    rows: tuple[HeadroomRow, ...]
    ideal_tokens: int
    baseline_share: float
    baseline_steady: float
    subject_share: float | None
    subject_steady: float | None
    over_steady: tuple[str, ...]  # families measured above the sustained roofline rate
    bars: tuple[HeadroomBar, ...]
    sustained: float | None  # mean sustained/upper-bound ratio over the instances


# ------------------------------------------------------------------------------- the report
@dataclass(frozen=True)
class Compute:
    seconds: float
    simulations: int  # run for this report
    cached: int  # taken from the campaign's or the report's cache


@dataclass(frozen=True)
class Report:
    """Everything the page and the summary show. ``state``: "promoted", "candidate" (nothing
    promoted: the best candidate is shown), "nothing" (no candidate scored) or "no-baseline"."""

    campaign: str
    folder: str
    generated: str
    phase: str
    cluster: str
    slo: SLOConfig
    share: float
    gate: GateConfig
    workloads: str
    dashboard: str
    dashboard_package: str
    search: Search
    state: str
    notes: tuple[str, ...]
    plots: Mapping[str, str]  # plot name -> inline SVG
    compute: Compute
    how: str = ""
    baseline: BaselineInfo | None = None
    subject: SubjectInfo | None = None
    claim: str | None = None
    record: str | None = None  # the promotion record's path
    diff: str | None = None
    reproduced: bool | None = None
    gains: Gains | None = None
    fairness: tuple[FairnessRow, ...] = ()
    focus: Focus | None = None
    curve: Curve | None = None
    distributions: Mapping[str, Distribution] = field(default_factory=dict)  # policy key ->
    references: tuple[ReferenceRow, ...] | None = None
    reference_instances: tuple[str, ...] = ()
    headroom: Headroom | None = None
    policies: Mapping[str, PolicySummary] = field(default_factory=dict)

    @property
    def progress(self) -> Progress:
        return self.search.progress

    @property
    def failures(self) -> Failures:
        return self.search.failures

    @property
    def spend(self) -> Spend:
        return self.search.spend
