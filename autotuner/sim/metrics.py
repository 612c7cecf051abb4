"""What a run is worth: per-request SLOs, a run's metrics over its steady state, and capacity.

Written against the cheapest ways to look good without serving better:

- A request meets its SLO only if it *finished* before the cut-off, its TTFT is within a deadline
  that grows with its prompt, its mean TPOT is within target, and no gap between two of its tokens
  (a preemption's included) exceeds the tail target. A request never served is a miss, never a
  missing row.
- The share is taken over a steady-state window: the first ``warmup`` of the arrival span is
  excluded (an empty cluster flatters everyone), and the window ends at the last arrival; the
  drain is cut off once no request can still change its verdict (``probe_horizon``).
- A rate whose backlog grows over the window is not sustainable, whatever its share: a policy
  that defers long prompts keeps its share high above its sustainable rate while its backlog of
  never-started prompts grows without bound. Capacity is the highest rate that is both.
- Fairness is reported beside it: the longest wait, waits over deadline, requests starved or
  overtaken while overdue, and Jain's index of slowdown over prompt-length deciles.
- Over several runs of one workload (seeds), capacity pools them (``capacity_pooled``): at each
  probed rate the share is taken over every run's window requests together, and the backlog
  trend over every run's window together (``PooledRun``). The share is a long-run fraction of
  requests; independent runs pooled estimate the same fraction as one run as long as all of
  them, while each run's own capacity, averaged, does not: above its own capacity a run's share
  collapses (an overloaded queue), below it the share saturates near 1, so the mean of per-run
  crossings overstates the rate at which the pooled share is the target (Jensen). Measured
  (fixed_chunk, bursty, share 0.9): five 6,000-request seeds give 74.1-80.6 req/s each (mean
  76.5) but 75.6 pooled; the same five seeds at 40,000 requests pool to 71.2.

Why a single short run cannot settle some workloads, and what it takes (measured with
``autotuner bench --capacity-length``, 4 x Llama-3-8B on H100, fixed_chunk):

- bursty (gamma gaps, cv 4): near capacity the queue is close to critical load with arrivals 16x
  as variable as Poisson; its excursions last thousands of requests (a 40,000-request run at 76
  req/s has 2,000-request stretches at 27-100 % on time). A 6,000-request run that holds none
  reads high whatever the scoring, pooled over five seeds: 75.2 vs 70.8 at 40k, with a 50 %
  warm-up 74.1 vs 71.2, with arrival rates left unnormalised 76.1 vs 71.7 (4-6 % high each
  way). Only longer runs help,
  and only where needed: ``search_capacity_settled`` checks a capacity on a run twice as long
  and searches again on it when that run refuses it (up to a multiple; the gate's default 4).
  Five seeds each on its own, geometric mean: 73.5 req/s at 6k (two seeds grew to 12k and 24k)
  against 70.9 at 40k, 0.965.
- mixed: 91-93 % of its misses near capacity are requests queued behind a prompt above 32k
  tokens (up to 131k: long multi-turn histories) in prefill on the same replica. How many such
  prompts a sample holds sets its share, and they come in sessions, so even 40,000-request runs
  differ by seed (12.1, 13.3 and 16.1 req/s for seeds 1001-1003, measured when a longer run was
  a fresh sample). Since a longer run of a seed continues the shorter one (the workload's
  streams), five seeds each checked at twice its length read 13.07 at 6k against 12.81 at 40k,
  0.980; multiturn 3.26 against 3.24, 0.996.

``SLO(kind="legacy")`` keeps the previous yardstick (a fixed TTFT target, mean TPOT, the share over
every request, a generous drain, capacity by share alone) so the two can be compared in one
command.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from .engine import ClusterSpec, Policy, SimResult, simulate
from .rangemax import range_max
from .workload import Workload

SLO_KINDS = ("deadline", "legacy")


@dataclass(frozen=True)
class SLO:
    """Per-request latency targets, and the window and backlog rule a run is judged by.

    kind: ``"deadline"`` (this definition) or ``"legacy"`` (a fixed TTFT target and mean TPOT over
        every request, capacity by share alone; kept to compare against).
    ttft_s, ttft_s_per_token: a request's TTFT deadline is ``ttft_s + prompt * ttft_s_per_token``,
        so no request is hopeless by design. 2 s is MLPerf Inference's server-scenario TTFT target
        for 8B-70B chat models and the old fixed target here. The slope states a TTFT target as a
        multiple of the uncontended prefill time, as Splitwise states its SLOs (multiples of
        uncontended latency) and as DistServe's per-application targets grow with prompt length
        (chat vs. summarisation): 0.2 ms per token is about 7x the prefill time per token of
        Llama-3-8B on one H100 in this cost model (~27 us), so an 8k-token prompt gets 3.6 s.
    tpot_s: mean time per output token after the first (DistServe's chat TPOT targets are
        0.1-0.2 s; MLPerf's server scenario 0.1 s for an 8B model).
    tbt_s: the longest gap allowed between two consecutive tokens of one request. Sarathi-Serve
        and DistServe state the tail time between tokens beside the mean, because a stall is what
        a reader of streamed text notices; Sarathi-Serve's relaxed P99 TBT target is 25x a single
        request's decode iteration (about 0.17 s for this model and GPU). The per-request maximum
        is used rather than a per-request p99 because it is exact across fast-forwarded decode
        stretches, counts a preemption's recompute wait, and for the typical request (a few
        hundred tokens) a p99 is its maximum anyway.
    warmup: share of the arrival span, from the first arrival, whose requests are not scored.
    max_backlog_growth: a rate is sustainable when the waiting backlog (prefill work, prompt
        tokens net of prefix-cache hits, of requests waiting for a prefill or a recompute) grows
        over the window by at most this share of the prefill work that arrived in it (linear
        trend). Overloaded by a share x, the backlog grows by about x; starving a share of
        requests grows it by their share of the work.
    starve_multiple: a request is starved when it waited longer than this multiple of its
        deadline, or never finished.
    """

    kind: str = "deadline"
    ttft_s: float = 2.0
    ttft_s_per_token: float = 0.0002
    tpot_s: float = 0.1
    tbt_s: float = 0.2
    warmup: float = 0.1
    max_backlog_growth: float = 0.02
    starve_multiple: float = 10.0

    def __post_init__(self) -> None:
        if self.kind not in SLO_KINDS:
            raise ValueError(f"SLO kind must be one of {', '.join(SLO_KINDS)}, got {self.kind!r}")
        for name in ("ttft_s", "tpot_s", "tbt_s", "starve_multiple"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"SLO {name} must be a positive number of seconds, got {value!r}")
        if not (self.ttft_s_per_token >= 0 and self.max_backlog_growth >= 0):
            raise ValueError("SLO ttft_s_per_token and max_backlog_growth must be >= 0")
        if not 0 <= self.warmup < 1:
            raise ValueError("SLO warmup must be in [0, 1)")

    @property
    def legacy(self) -> bool:
        return self.kind == "legacy"

    def deadlines(self, prompt: np.ndarray) -> np.ndarray:
        """Each request's TTFT deadline, seconds (legacy: the fixed target)."""
        if self.legacy:
            return np.full(len(prompt), float(self.ttft_s))
        return self.ttft_s + np.asarray(prompt, dtype=np.float64) * self.ttft_s_per_token

    def describe(self) -> str:
        if self.legacy:
            return f"legacy: TTFT<={self.ttft_s:g}s, TPOT<={self.tpot_s:g}s"
        return (f"TTFT<={self.ttft_s:g}s+{self.ttft_s_per_token * 1000:g}ms/prompt token, "
                f"TPOT<={self.tpot_s:g}s, max gap<={self.tbt_s:g}s, finished")



# ------------------------------------------------------------------------------- per request
def per_request(workload: Workload, result: SimResult) -> dict[str, np.ndarray]:
    """TTFT, TPOT, end-to-end latency and queueing delay per request (NaN where not reached)."""
    arrival = workload.arrival
    out = workload.output
    ttft = result.first_token - arrival
    decode_time = result.finish - result.first_token
    tpot = np.where(out > 1, decode_time / np.maximum(out - 1, 1), 0.0)
    tpot = np.where(np.isnan(result.finish), np.nan, tpot)
    return {
        "ttft": ttft,
        "tpot": tpot,
        "e2e": result.finish - arrival,
        "queue": result.start - arrival,
    }


def _verdicts(workload: Workload, result: SimResult, slo: SLO) -> dict[str, np.ndarray]:
    """Per request: each SLO condition (bool) and whether all hold."""
    r = per_request(workload, result)
    finished = ~np.isnan(result.finish)
    with np.errstate(invalid="ignore"):
        ttft_ok = r["ttft"] <= slo.deadlines(workload.prompt)
        tpot_ok = r["tpot"] <= slo.tpot_s  # NaN (unfinished) is False
        tbt_ok = finished & (result.max_gap <= slo.tbt_s)
    met = ttft_ok & tpot_ok if slo.legacy else ttft_ok & tpot_ok & tbt_ok & finished
    return {"ttft_ok": ttft_ok, "tpot_ok": tpot_ok, "tbt_ok": tbt_ok, "met": met,
            "finished": finished}


def slo_met(workload: Workload, result: SimResult, slo: SLO) -> np.ndarray:
    """Per request: did it meet the SLO (by ``slo.kind``)."""
    return _verdicts(workload, result, slo)["met"]


def probe_horizon(wl: Workload, slo: SLO) -> float:
    """Where a run is cut off: past it, nothing can change a verdict, and an overloaded probe
    would only simulate a long drain for nothing.

    Deadline kind: the latest time any request could still finish within ``starve_multiple`` of
    its deadline at the target TPOT, so an unfinished request at the cut-off is starved by
    definition and every request that can meet its SLO has the time to. Legacy: the old generous
    drain (half the arrival span, at least a minute, past the last arrival).
    """
    if not len(wl):
        return 0.0
    if slo.legacy:
        span = float(wl.arrival[-1] - wl.arrival[0])
        return float(wl.arrival[-1]) + max(60.0, 0.5 * span) + 20 * slo.ttft_s
    wait = slo.starve_multiple * slo.deadlines(wl.prompt)
    return float((wl.arrival + wait + (wl.output - 1) * slo.tpot_s).max())


# ------------------------------------------------------------------------------- a run's metrics
@dataclass(frozen=True)
class RunMetrics:
    """One run's metrics over its steady-state window; the record every stage passes along.

    Counts (``requests``, ``finished``, ``unfinished``, ``starved``, ``priority_inversions``) and
    the waits (``longest_wait_s``, ``max_wait_over_deadline``) cover every request, the warm-up's
    too, so no request escapes by arriving early; shares, goodput, percentiles and fairness cover
    the window (``window_requests``, arrivals after the warm-up up to the last one, ``window_s``
    long). A request's *wait* is its TTFT if it finished, else the time from its arrival to the
    cut-off (``cutoff_s``); *over deadline* is that wait divided by its TTFT deadline.

    attainment: share of window requests meeting the SLO; ttft_ok, tpot_ok, tbt_ok: each condition
    alone (tpot and tbt only for finished requests). sustainable, backlog_growth, backlog_limit:
    see ``SLO.max_backlog_growth``; the limit applied is that plus the largest window request's
    share of the window's prefill work (the test's resolution: in a short run one long prompt
    waiting at the end or not moves the trend by that much; in a 6,000-request chat run it adds
    about 0.1 %).
    late_finish_share: share of all requests not finished by the last arrival. goodput_rps,
    goodput_tok_s: window requests meeting the SLO (and their output tokens) per second of
    window. throughput_tok_s: output tokens emitted inside the window, by any
    request, per second of window (the service rate; at saturation, the cluster's).
    jain_slowdown: Jain's fairness index (sum x)^2 / (n sum x^2) over the ten prompt-length
    deciles of window requests, x being a decile's mean wait over deadline (BLIS reports fairness
    as Jain's index); 1.0 is equal treatment, 0.1 one decile taking all the delay.
    priority_inversions: requests overtaken while overdue: a later arrival on the same replica got
    its first token after this request's deadline had passed and before this request got its
    own. Reordering within deadlines (shortest-first while everyone is on time) is not counted.
    starved: requests waiting past ``starve_multiple`` times their deadline, or never finishing.
    starved_ids, inversion_ids: up to ten of them, worst (longest over deadline) first.
    preemptions, prefix_hit_rate, replica_imbalance: what a run's latencies are made of, over
    every request (``autotuner.diagnose`` compares them with the baseline's): preemptions (KV
    pressure), the share of prompt tokens to prefill (every start, recomputes too) that the
    prefix cache served, and how unevenly the replicas worked (the busiest replica's busy time
    over the mean, minus one: 0 is even; None with one replica or none busy).
    """

    slo_kind: str
    requests: int
    window_requests: int
    rate: float
    window_s: float
    cutoff_s: float
    finished: int
    unfinished: int
    attainment: float
    ttft_ok: float
    tpot_ok: float
    tbt_ok: float
    sustainable: bool
    backlog_growth: float
    backlog_limit: float
    max_wait_over_deadline: float
    ttft_over_deadline_p99: float | None
    longest_wait_s: float
    late_finish_share: float
    goodput_rps: float
    goodput_tok_s: float
    throughput_tok_s: float
    jain_slowdown: float
    priority_inversions: int
    starved: int
    starved_ids: tuple[int, ...]
    inversion_ids: tuple[int, ...]
    ttft_p50: float | None
    ttft_p90: float | None
    ttft_p99: float | None
    tpot_p50: float | None
    tpot_p90: float | None
    tpot_p99: float | None
    tbt_p99: float | None
    preemptions: int
    error: str | None = None
    prefix_hit_rate: float | None = None
    replica_imbalance: float | None = None

    def meets(self, share: float) -> bool:
        """Whether this run's rate counts toward capacity: the share, and (unless legacy) a
        backlog that does not grow."""
        if self.error:
            return False
        return self.attainment >= share and (self.sustainable or self.slo_kind == "legacy")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["starved_ids"] = list(self.starved_ids)
        d["inversion_ids"] = list(self.inversion_ids)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunMetrics:
        """Read back ``to_dict()`` (extra keys such as ``seconds`` are ignored)."""
        values = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        for name in _INFINITE_WHEN_FAILED:  # JSON has no inf: the archive stores null
            if name in values and values[name] is None:
                values[name] = math.inf
        values["starved_ids"] = tuple(values.get("starved_ids") or ())
        values["inversion_ids"] = tuple(values.get("inversion_ids") or ())
        return cls(**values)

    @classmethod
    def failed(cls, workload: Workload, reason: str, slo_kind: str = "deadline") -> RunMetrics:
        """A run that produced no trustworthy result: nothing served, nothing sustainable."""
        n = len(workload)
        nothing = {f.name: None for f in fields(cls) if f.name.startswith(("ttft_p", "tpot_p"))}
        return cls(
            slo_kind=slo_kind, requests=n, window_requests=n,
            rate=float(workload.rate) if n else 0.0, window_s=0.0, cutoff_s=0.0, finished=0,
            unfinished=n, attainment=0.0, ttft_ok=0.0, tpot_ok=0.0, tbt_ok=0.0,
            sustainable=False, backlog_growth=math.inf, backlog_limit=0.0,
            max_wait_over_deadline=math.inf, ttft_over_deadline_p99=None,
            longest_wait_s=math.inf, late_finish_share=1.0, goodput_rps=0.0, goodput_tok_s=0.0,
            throughput_tok_s=0.0, jain_slowdown=0.0, priority_inversions=0, starved=n,
            starved_ids=(), inversion_ids=(), tbt_p99=None, preemptions=0, error=reason,
            **nothing)


# Figures a failed run reports as infinite (no wait ended, no backlog was served).
_INFINITE_WHEN_FAILED = ("backlog_growth", "max_wait_over_deadline", "longest_wait_s")


def _pct(values: np.ndarray, q: float) -> float | None:
    values = values[np.isfinite(values)]
    return float(np.percentile(values, q)) if values.size else None


def _worst(ids: np.ndarray, score: np.ndarray, k: int = 10) -> tuple[int, ...]:
    order = np.argsort(-score[ids], kind="stable")[:k]
    return tuple(int(i) for i in ids[order])


def jain_index(x: np.ndarray) -> float:
    """Jain's fairness index of non-negative values: 1 when equal, 1/n when one has it all."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0 or not np.any(x > 0):
        return 1.0
    return float(x.sum() ** 2 / (x.size * np.square(x).sum()))


def _decile_fairness(prompt: np.ndarray, over: np.ndarray) -> float:
    if prompt.size < 2:
        return 1.0
    order = np.argsort(prompt, kind="stable")
    groups = np.array_split(over[order], min(10, prompt.size))
    return jain_index(np.array([g.mean() for g in groups]))


def _inversions(wl: Workload, result: SimResult, wait_end: np.ndarray,
                deadline: np.ndarray) -> np.ndarray:
    """Per request: was it overtaken while overdue (see ``RunMetrics.priority_inversions``)?

    For request i, look at the requests of its replica whose first token came in
    (arrival_i + deadline_i, first token_i): if the latest arrival among them is after i's, one
    of them overtook it. One sorted pass and one batch of range-max queries per replica."""
    out = np.zeros(len(wl), dtype=bool)
    first = result.first_token
    for r in np.unique(result.replica[result.replica >= 0]):
        ids = np.flatnonzero(result.replica == r)
        served = ids[~np.isnan(first[ids])]
        if served.size == 0:
            continue
        order = served[np.argsort(first[served], kind="stable")]
        t_sorted = first[order]
        a_sorted = wl.arrival[order]
        lo = np.searchsorted(t_sorted, wl.arrival[ids] + deadline[ids], side="right")
        hi = np.searchsorted(t_sorted, wait_end[ids], side="left")
        latest = range_max(a_sorted, lo, hi)
        out[ids] = latest > wl.arrival[ids]
    return out & ~result.refused  # a prompt the server refused was never waiting


def _prefill_work(wl: Workload, result: SimResult) -> np.ndarray:
    """Prompt tokens each request needs computed: net of prefix-cache hits (per start), at
    least one. A multiturn turn whose history is cached waits with little work behind it."""
    hits = result.cached_tokens / (1.0 + result.preemptions)
    return np.maximum(wl.prompt - hits, 1.0)


def _backlog_growth(wl: Workload, result: SimResult, t_from: float, t_to: float
                    ) -> tuple[float, float]:
    """Linear trend of the waiting backlog over [t_from, t_to], as a share of the prefill work
    that arrived in that window, and the test's resolution: the largest single request's share
    of that work (one request waiting or not at the window's end moves the trend by about as
    much, so a short run cannot tell a smaller growth from noise). The backlog at t is the
    prefill work (``_prefill_work``) of requests arrived and without a first token, plus those
    preempted and not yet back; refused requests never wait."""
    w = _prefill_work(wl, result)
    in_window = w[(wl.arrival >= t_from) & (wl.arrival <= t_to)]
    window_work = float(in_window.sum())
    if t_to <= t_from or window_work <= 0:
        return 0.0, 0.0
    keep = ~result.refused
    pre_req, pre_at, pre_back = result.preempted
    times = np.concatenate([wl.arrival[keep], result.first_token[keep], pre_at, pre_back])
    weights = np.concatenate([w[keep], -w[keep], w[pre_req], -w[pre_req]])
    times = np.where(np.isnan(times), np.inf, times)
    order = np.argsort(times, kind="stable")
    level = np.cumsum(weights[order])
    ts = np.linspace(t_from, t_to, 256)
    idx = np.searchsorted(times[order], ts, side="right") - 1
    backlog = np.where(idx >= 0, level[np.maximum(idx, 0)], 0.0)
    slope = np.polyfit(ts - t_from, backlog, 1)[0]
    return float(slope * (t_to - t_from) / window_work), float(in_window.max() / window_work)


def _tokens_within(wl: Workload, result: SimResult, t_from: float, t_to: float) -> float:
    """Output tokens emitted in [t_from, t_to] by any request: its first token, then the rest
    spread evenly between the first token and its finish (decode pace is steady within a
    request). A request unfinished at the cut-off counts its first token only."""
    first, end = result.first_token, result.finish
    started = ~np.isnan(first)
    count = float(((first >= t_from) & (first <= t_to) & started).sum())
    rest = ~np.isnan(end) & (wl.output > 1) & (end > first)
    f, e = first[rest], end[rest]
    overlap = np.clip(np.minimum(e, t_to) - np.maximum(f, t_from), 0.0, None)
    return count + float(((wl.output[rest] - 1) * overlap / (e - f)).sum())


def run_metrics(workload: Workload, result: SimResult, slo: SLO) -> RunMetrics:
    """The metrics of one run (see ``RunMetrics``), written once for every caller."""
    wl, n = workload, len(workload)
    if n == 0:
        return RunMetrics.failed(wl, "empty workload", slo.kind)
    v = _verdicts(wl, result, slo)
    finished, met = v["finished"], v["met"]
    cutoff = result.horizon if math.isfinite(result.horizon) else result.end_time
    t_first, t_last = float(wl.arrival[0]), float(wl.arrival[-1])
    t_warm = t_first if slo.legacy else t_first + slo.warmup * (t_last - t_first)
    window = wl.arrival >= t_warm
    nw = int(window.sum())
    window_s = max(t_last - t_warm, 1e-9)
    deadline = slo.deadlines(wl.prompt)
    ttft = result.first_token - wl.arrival
    wait = np.where(finished, ttft, max(cutoff, result.end_time) - wl.arrival)
    over = wait / deadline
    starved_mask = ~finished | (over > slo.starve_multiple)
    wait_end = np.where(np.isnan(result.first_token), np.inf, result.first_token)
    inverted = _inversions(wl, result, wait_end, deadline)
    growth, resolution = _backlog_growth(wl, result, t_warm, t_last)
    limit = slo.max_backlog_growth + resolution
    out_w = wl.output[window]
    met_w = met[window]
    r = per_request(wl, result)
    return RunMetrics(
        slo_kind=slo.kind,
        requests=n,
        window_requests=nw,
        rate=float(wl.rate),
        window_s=float(window_s),
        cutoff_s=float(cutoff),
        finished=int(finished.sum()),
        unfinished=int(n - finished.sum()),
        attainment=float(met_w.mean()) if nw else 0.0,
        ttft_ok=float(v["ttft_ok"][window].mean()) if nw else 0.0,
        tpot_ok=float(v["tpot_ok"][window].mean()) if nw else 0.0,
        tbt_ok=float(v["tbt_ok"][window].mean()) if nw else 0.0,
        sustainable=bool(growth <= limit),
        backlog_growth=growth,
        backlog_limit=limit,
        max_wait_over_deadline=float(over.max()),
        ttft_over_deadline_p99=_pct(over[window], 99),
        longest_wait_s=float(wait.max()),
        late_finish_share=float((~finished | (result.finish > t_last)).mean()),
        goodput_rps=float(met_w.sum()) / window_s,
        goodput_tok_s=float(out_w[met_w].sum()) / window_s,
        throughput_tok_s=_tokens_within(wl, result, t_warm, t_last) / window_s,
        jain_slowdown=_decile_fairness(wl.prompt[window], over[window]),
        priority_inversions=int(inverted.sum()),
        starved=int(starved_mask.sum()),
        starved_ids=_worst(np.flatnonzero(starved_mask), over),
        inversion_ids=_worst(np.flatnonzero(inverted), over),
        ttft_p50=_pct(ttft[window], 50),
        ttft_p90=_pct(ttft[window], 90),
        ttft_p99=_pct(ttft[window], 99),
        tpot_p50=_pct(r["tpot"][window], 50),
        tpot_p90=_pct(r["tpot"][window], 90),
        tpot_p99=_pct(r["tpot"][window], 99),
        tbt_p99=_pct(np.where(finished, result.max_gap, np.nan)[window], 99),
        preemptions=int(result.preemptions.sum()),
        error=result.error,
        prefix_hit_rate=_prefix_hit_rate(wl, result),
        replica_imbalance=_imbalance(result.busy_time),
    )


def _prefix_hit_rate(wl: Workload, result: SimResult) -> float | None:
    """Share of the prompt tokens prefilled (each start of a request: recomputes count) that
    came from the prefix cache; None when nothing started."""
    started = ~np.isnan(result.start)
    demand = float((wl.prompt * (1.0 + result.preemptions))[started].sum())
    return min(1.0, float(result.cached_tokens.sum()) / demand) if demand > 0 else None


def _imbalance(busy: np.ndarray) -> float | None:
    """The busiest replica's busy time over the mean, minus one (0: even)."""
    busy = np.asarray(busy, dtype=np.float64)
    if busy.size < 2 or busy.mean() <= 0:
        return None
    return float(busy.max() / busy.mean() - 1.0)


# ------------------------------------------------------------------------------- simulate's view
def _stats(values: np.ndarray) -> dict[str, float | None]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"mean": float(values.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def _weighted_stats(values: np.ndarray, weights: np.ndarray) -> dict[str, float | None]:
    if values.size == 0 or weights.sum() == 0:
        return _stats(np.empty(0))
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order].astype(np.float64)
    cum = np.cumsum(w) / w.sum()
    pick = [float(v[min(np.searchsorted(cum, q), v.size - 1)]) for q in (0.5, 0.9, 0.99)]
    return {"mean": float((v * w).sum() / w.sum()), "p50": pick[0], "p90": pick[1], "p99": pick[2]}


def summarize(
    workload: Workload,
    result: SimResult,
    slo: SLO,
    *,
    num_gpus: int,
    gpu_hour_usd: float,
) -> dict[str, object]:
    """``run_metrics`` as a dict, plus the whole run's latency distributions and costs (what
    ``autotuner simulate`` prints). No NaN: an undefined figure is None."""
    run = run_metrics(workload, result, slo)
    r = per_request(workload, result)
    finished = ~np.isnan(result.finish)
    n = len(workload)
    out_tokens = int(workload.output[finished].sum())
    in_tokens = int(workload.prompt[finished].sum())
    t0 = float(workload.arrival[0]) if n else 0.0
    t_end = float(np.nanmax(result.finish)) if finished.any() else result.end_time
    if not finished.all():
        t_end = max(t_end, result.end_time)
    makespan = max(t_end - t0, 1e-9)
    gpu_hours = num_gpus * makespan / 3600.0
    tbt_d, tbt_n = result.tbt_samples
    return {
        **run.to_dict(),
        "duration_s": makespan,
        "ttft_s": _stats(r["ttft"]),
        "tpot_s": _stats(r["tpot"][finished]),
        "tbt_s": _weighted_stats(tbt_d, tbt_n),
        "max_gap_s": _stats(result.max_gap[finished]),
        "e2e_s": _stats(r["e2e"][finished]),
        "queue_s": _stats(r["queue"]),
        "run_throughput_tok_s": out_tokens / makespan,
        "total_throughput_tok_s": (out_tokens + in_tokens) / makespan,
        "request_throughput_rps": float(finished.sum()) / makespan,
        "cost_per_mtok_usd": (gpu_hours * gpu_hour_usd) / (out_tokens / 1e6)
        if out_tokens else None,
        "prefix_cached_tokens": int(result.cached_tokens.sum()),
        "iterations": result.iterations,
        "policy_calls": result.policy_calls,
        "slo": asdict(slo),
    }


# ------------------------------------------------------------------------------- capacity
Probe = tuple[float, float, bool]  # (rate, attainment, sustainable)


@dataclass(frozen=True)
class PooledRun:
    """Several independent runs at one rate, judged as one long run (see the module docstring
    for why pooling, not averaging capacities): the share over all their window requests
    together, and the backlog trend over all their windows together against one limit.

    The pooled trend weighs each run's growth (a share of its window's prefill work) by its
    window requests, a stand-in for its work (the runs are seeds of one workload), and the
    limit's resolution term is the largest request's share of all the runs' work, as in one
    run that long. Requiring every run to pass its own test instead would take the strictest
    of several noisy tests: short runs would be refused for one run's noise (measured: the
    long-prompt deferrer on bursty, 5 seeds, 6k/40k 1.049 that way).
    """

    runs: tuple[RunMetrics, ...]
    max_backlog_growth: float = SLO.max_backlog_growth  # the SLO's; rebuilds the pooled limit

    @property
    def window_requests(self) -> int:
        return sum(r.window_requests for r in self.runs)

    def _pooled(self, values: list[float]) -> float:
        n = self.window_requests
        return sum(v * r.window_requests for v, r in zip(values, self.runs, strict=True)) / n \
            if n else 0.0

    @property
    def attainment(self) -> float:
        return self._pooled([r.attainment for r in self.runs])

    @property
    def backlog_growth(self) -> float:
        """Each run's growth, a draining run counted as steady: one seed's queue emptying says
        nothing of another's filling (unclipped, the long-prompt deferrer on mixed at 6k had
        one seed growing at 2.2x the limit cancelled by another draining, and passed)."""
        return self._pooled([max(0.0, r.backlog_growth) for r in self.runs])

    @property
    def backlog_limit(self) -> float:
        n = self.window_requests
        worst = max(((r.backlog_limit - self.max_backlog_growth) * r.window_requests
                     for r in self.runs), default=0.0)
        return self.max_backlog_growth + (worst / n if n else 0.0)

    @property
    def sustainable(self) -> bool:
        return bool(self.runs) and self.backlog_growth <= self.backlog_limit

    @property
    def error(self) -> str | None:
        return next((r.error for r in self.runs if r.error), None)

    def meets(self, share: float) -> bool:
        if self.error or not self.runs:
            return False
        legacy = all(r.slo_kind == "legacy" for r in self.runs)
        return self.attainment >= share and (self.sustainable or legacy)


@dataclass(frozen=True)
class CapacityResult:
    """Highest rate (requests/s) that met the share and was sustainable, with every probe."""

    rate: float
    share: float
    probes: tuple[Probe, ...]  # in probe order (every run length's, length checks included)
    error: str | None = None
    at_capacity: RunMetrics | PooledRun | None = None
    # ``search_capacity_settled``: the run length the rate was found at, as a multiple of the
    # requested one; whether a run twice as long held it (None: not checked); the checks made,
    # as (multiple, rate, attainment, sustainable).
    multiple: int = 1
    settled: bool | None = None
    length_checks: tuple[tuple[int, float, float, bool], ...] = ()


def metrics_at(
    cluster: ClusterSpec,
    workload: Workload,
    policy_factory: Callable[[], Policy],
    slo: SLO,
    rate: float,
) -> RunMetrics:
    """The workload's own gaps rescaled to ``rate``, run to the cut-off and measured."""
    wl = workload.with_rate(rate)
    result = simulate(cluster, wl, policy_factory(), horizon=probe_horizon(wl, slo))
    return run_metrics(wl, result, slo)


def search_capacity(
    probe: Callable[[float], RunMetrics | PooledRun],
    start: float,
    share: float,
    rel_tol: float = 0.02,
    max_probes: int = 24,
    fails_at: float | None = None,
) -> CapacityResult:
    """Geometric bisection for the highest rate whose run ``meets(share)``.

    Rates are probed on one fixed geometric grid (ratio ``1 + rel_tol``), so where acceptance
    falls as the rate rises (any sane policy) the answer is the highest accepted grid rate
    whatever the start: two searches of one policy agree however they were hinted, and a
    policy identical to the baseline gains exactly 0. Starts from a bracket around ``start`` (a
    good hint, such as the baseline's capacity, saves probes); the probes are returned so a
    reader can see the curve. A probe that fails (an illegal decision) ends the search with
    capacity 0 and the reason. ``fails_at``: a grid rate already known to fail (a length
    check's): the search walks down from the grid rate below it in steps that double (1, 2, 4
    ... grid steps), since a longer run usually moves a capacity by a step or two, then bisects.
    """
    if not 0 <= share <= 1:  # 0: sustainability alone decides (the highest sustainable rate)
        raise ValueError(f"the capacity share must be in [0, 1], got {share!r}")
    probes: list[Probe] = []
    seen: dict[float, RunMetrics | PooledRun] = {}
    unit = math.log1p(rel_tol)

    def rate(k: int) -> float:
        return math.exp(k * unit)

    def ok(k: int) -> bool:
        r = rate(k)
        m = probe(r)
        seen[r] = m
        probes.append((r, m.attainment, m.sustainable))
        if m.error:
            raise _ProbeError(m.error)
        return m.meets(share)

    def done(k: int | None, error: str | None = None) -> CapacityResult:
        r = 0.0 if k is None else rate(k)
        return CapacityResult(r, share, tuple(probes), error, seen.get(r))

    step = max(1, round(math.log1p(max(4 * rel_tol, 0.1)) / unit))  # the first bracket
    double = max(1, round(math.log(2.0) / unit))
    floor_k = math.floor(math.log(1e-4) / unit)
    try:
        if fails_at is not None:
            hi = round(math.log(max(fails_at, 1e-4)) / unit)
            lo, down = hi - 1, 1
            while not ok(lo):
                hi, lo, down = lo, lo - down, 2 * down
                if lo < floor_k or len(probes) >= max_probes:
                    return done(None)
        elif ok(k0 := round(math.log(max(start, 1e-4)) / unit)):
            lo, hi = k0, k0 + step
            while ok(hi):
                lo, hi = hi, hi + double
                if len(probes) >= max_probes:
                    return done(lo)
        else:
            hi, lo = k0, k0 - step
            while not ok(lo):
                hi, lo = lo, lo - double
                if lo < floor_k or len(probes) >= max_probes:
                    return done(None)
        while hi - lo > 1 and len(probes) < max_probes:
            mid = (lo + hi) // 2
            if ok(mid):
                lo = mid
            else:
                hi = mid
    except _ProbeError as exc:
        return done(None, str(exc))
    return done(lo)


def search_capacity_settled(
    probe_at: Callable[[float, int], RunMetrics | PooledRun],
    start: float,
    share: float,
    rel_tol: float = 0.02,
    max_probes: int = 24,
    max_multiple: int = 1,
    first_multiple: int = 1,
) -> CapacityResult:
    """``search_capacity``, then the rate found checked on a run twice as long; a rate the
    longer run does not hold is searched again on that run, up to ``max_multiple`` times the
    requested length. ``probe_at(rate, multiple)`` runs the workload extended to ``multiple``
    times its requests (same scenario and seed).

    Why: near capacity a queue's excursions can outlast a run. Under bursty arrivals (gamma
    gaps, cv 4) they last thousands of requests, so a 6,000-request run that happens to hold
    none reads 6 % above what 40,000 requests sustain, however the run is scored (pooling seeds,
    a longer warm-up and unnormalised arrival rates were all measured and moved it by under 1 %).
    A run that settles passes its check at twice its length for one extra probe, so the cost
    falls on the workloads that need it. ``settled`` is False when the longest allowed run
    still moved the rate (its figure is then the longest run's, said so), None when unchecked.
    ``first_multiple`` starts on a longer run: a policy compared with another is judged on runs
    at least as long as those the other's capacity was found on.
    """
    multiple = max(1, min(first_multiple, max_multiple))
    found = search_capacity(lambda rate: probe_at(rate, multiple), start, share, rel_tol,
                            max_probes)
    probes, checks = list(found.probes), []
    while not found.error and found.rate > 0 and 2 * multiple <= max_multiple:
        check = probe_at(found.rate, 2 * multiple)
        checks.append((2 * multiple, found.rate, check.attainment, check.sustainable))
        if check.error:
            return CapacityResult(0.0, share, tuple(probes), check.error, None, 2 * multiple,
                                  None, tuple(checks))
        if check.meets(share):
            return replace(found, probes=tuple(probes), multiple=multiple, settled=True,
                           length_checks=tuple(checks))
        multiple *= 2
        found = search_capacity(lambda rate, m=multiple: probe_at(rate, m), found.rate, share,
                                rel_tol, max_probes, fails_at=found.rate)
        probes += found.probes
    unverified = max_multiple >= 2 and found.rate > 0 and not found.error
    settled = False if unverified else None  # the longest run allowed, not checked past it
    return replace(found, probes=tuple(probes), multiple=multiple, settled=settled,
                   length_checks=tuple(checks))


def capacity(
    cluster: ClusterSpec,
    workload: Workload,
    policy_factory: Callable[[], Policy],
    slo: SLO,
    *,
    share: float = 0.9,
    start: float | None = None,
    rel_tol: float = 0.02,
    max_probes: int = 24,
) -> CapacityResult:
    """Capacity of a policy on a workload (its own gaps, rescaled to each probed rate)."""
    return search_capacity(
        lambda rate: metrics_at(cluster, workload, policy_factory, slo, rate),
        start if start is not None else max(workload.rate, 1e-3),
        share,
        rel_tol,
        max_probes,
    )


def capacity_pooled(
    cluster: ClusterSpec,
    workloads: Sequence[Workload],
    policy_factory: Callable[[], Policy],
    slo: SLO,
    *,
    share: float = 0.9,
    start: float | None = None,
    rel_tol: float = 0.02,
    max_probes: int = 24,
) -> CapacityResult:
    """Capacity over several runs of one workload (e.g. seeds), each probe pooling all of them
    (``PooledRun``); ``at_capacity`` is the pooled run at the capacity found."""
    if not workloads:
        raise ValueError("capacity_pooled needs at least one workload")
    hint = start if start is not None else max(float(np.mean([w.rate for w in workloads])), 1e-3)
    return search_capacity(
        lambda rate: PooledRun(tuple(metrics_at(cluster, w, policy_factory, slo, rate)
                                     for w in workloads), slo.max_backlog_growth),
        hint, share, rel_tol, max_probes)


class _ProbeError(Exception):
    pass
