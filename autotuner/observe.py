"""`autotuner observe`: the same workload on live servers and in the simulator, side by side.

The workload (a scenario or a trace, at a rate) is replayed against the endpoints, round robin,
each request streamed and timed token by token (``autotuner.live``). The simulator then runs the
requests that were actually sent (their send times, prompt lengths and the tokens each stream
actually carried) on a cluster of as many replicas, costed by the engine's measured step-time
profile (``autotuner profile``), with the engine's measured batching limit and the same
round-robin routing. What comes out: p50/p90/p99 of TTFT, TPOT, inter-token gap and end-to-end
latency, measured and predicted, their relative errors, the per-request MAPE and Pearson r of
TTFT and end-to-end latency, and, optionally, the capacity under the SLO from a short sweep of
rates, measured against predicted.

Lengths are capped (``max_prompt_tokens``, ``max_output_tokens``, and prompt + output within the
engine's KV capacity) so that a CPU server finishes the run in minutes; the caps are printed.

No argparse here: ``autotuner/commands/observe.py`` is the command line.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from autotuner.live import (
    Endpoint,
    PlannedRequest,
    StreamResult,
    make_prompt,
    replay,
    server_model,
)
from autotuner.policy import load_policy, read_policy_file
from autotuner.resources import baseline_path
from autotuner.sim.engine import ClusterSpec, SimResult, simulate
from autotuner.sim.measured import StepProfile
from autotuner.sim.metrics import SLO, RunMetrics, per_request, run_metrics
from autotuner.sim.workload import Workload

METRICS: tuple[tuple[str, str], ...] = (
    ("ttft", "TTFT"),
    ("tpot", "TPOT"),
    ("itl", "inter-token gap"),
    ("e2e", "end-to-end"),
)
QUANTILES = (50, 90, 99)


@dataclass(frozen=True)
class ObserveSettings:
    """What to run. ``rates``: the capacity sweep's rates (empty: no sweep)."""

    max_prompt_tokens: int = 256
    max_output_tokens: int = 64
    slo: SLO = SLO()
    share: float = 0.9
    capacity_rates: tuple[float, ...] = ()
    capacity_requests: int = 40
    eos_token_ids: tuple[int, ...] = ()
    timeout_s: float = 300.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_prompt_tokens < 1 or self.max_output_tokens < 1:
            raise ValueError("the prompt and output caps must be at least 1 token")
        if not 0 < self.share <= 1:
            raise ValueError(f"the SLO share must be in (0, 1], got {self.share}")
        if any(not (r > 0 and math.isfinite(r)) for r in self.capacity_rates):
            raise ValueError("capacity sweep rates must be positive numbers")
        if self.capacity_requests < 2 or self.timeout_s <= 0:
            raise ValueError("the sweep needs >= 2 requests per rate and a positive timeout")


def cap_lengths(workload: Workload, profile: StepProfile, settings: ObserveSettings) -> Workload:
    """The workload with prompt and output lengths capped to what the run can afford and the
    engine can hold (prompt + output within its KV capacity)."""
    prompt = np.minimum(workload.prompt, settings.max_prompt_tokens)
    room = max(2, profile.kv_capacity_tokens - profile.prompt_extra_tokens - 1)
    prompt = np.minimum(prompt, room - 1)
    output = np.minimum(workload.output, settings.max_output_tokens)
    output = np.maximum(1, np.minimum(output, room - prompt))
    return Workload(workload.name, workload.arrival, prompt, output, None)


@dataclass(frozen=True)
class LiveRun:
    """What the servers did with one workload: per request, in plan order."""

    workload: Workload  # as sent: actual send offsets, prompt tokens, tokens received
    results: tuple[StreamResult, ...]
    start: float

    @property
    def failed(self) -> int:
        return sum(1 for r in self.results if r.error)


def run_live(
    endpoints: Sequence[Endpoint],
    workload: Workload,
    profile: StepProfile,
    settings: ObserveSettings,
    model: str | None = None,
) -> LiveRun:
    """Replay ``workload`` on the endpoints, round robin in arrival order."""
    if model is None:
        model, _ = server_model(endpoints[0])
    rng = random.Random(settings.seed)
    t0 = float(workload.arrival[0]) if len(workload) else 0.0
    plan = []
    for i in range(len(workload)):
        tokens = int(workload.prompt[i]) - profile.prompt_extra_tokens
        words = max(1, round(tokens / profile.tokens_per_word))
        plan.append(
            PlannedRequest(
                float(workload.arrival[i]) - t0,
                i % len(endpoints),
                make_prompt(words, rng),
                int(workload.output[i]),
            )
        )
    start, results = replay(
        endpoints, model, plan, timeout=settings.timeout_s, eos_token_ids=settings.eos_token_ids
    )
    sent = np.array([r.sent - start for r in results])
    order = np.argsort(sent, kind="stable")
    if not np.array_equal(order, np.arange(len(sent))):
        sent = np.maximum.accumulate(sent)  # thread start jitter: keep arrivals non-decreasing
    got = np.array([max(1, r.tokens) for r in results], dtype=np.int64)
    as_sent = Workload(workload.name, np.maximum(sent, 0.0), workload.prompt, got, None)
    return LiveRun(as_sent, tuple(results), start)


def measured_per_request(run: LiveRun) -> dict[str, np.ndarray]:
    """TTFT, TPOT, end-to-end latency per request (NaN where it failed) and all token gaps."""
    ttft = np.array([r.ttft if not r.error else math.nan for r in run.results])
    e2e = np.array([r.e2e if not r.error else math.nan for r in run.results])
    tpot = np.array(
        [
            (r.token_times[-1] - r.token_times[0]) / (len(r.token_times) - 1)
            if not r.error and len(r.token_times) > 1
            else (0.0 if not r.error else math.nan)
            for r in run.results
        ]
    )
    gaps = np.array([g for r in run.results if not r.error for g in r.gaps])
    return {"ttft": ttft, "tpot": tpot, "e2e": e2e, "itl": gaps}


def measured_result(run: LiveRun, replicas: int) -> SimResult:
    """The live run as the simulator's result record, so that the SLO is judged by the one
    metrics module (``autotuner.sim.metrics.run_metrics``) on both sides: send time as arrival,
    first and last token as seen by the client, round-robin replica, the longest gap between two
    tokens of each stream. A failed request never got a first token (it misses, and counts as
    starved). Queueing start, preemptions and prefix-cache hits are invisible from outside the
    engine: recorded as none."""
    n = len(run.results)
    arrival = run.workload.arrival
    ok = np.array([not r.error and bool(r.token_times) for r in run.results], dtype=bool)
    ttft = np.array([r.ttft if k else math.nan for r, k in zip(run.results, ok, strict=True)])
    e2e = np.array([r.e2e if k else math.nan for r, k in zip(run.results, ok, strict=True)])
    max_gap = np.array(
        [max(r.gaps, default=0.0) if k else 0.0 for r, k in zip(run.results, ok, strict=True)]
    )
    finish = arrival + e2e
    done = finish[~np.isnan(finish)]
    empty = np.empty(0)
    return SimResult(
        first_token=arrival + ttft,
        finish=finish,
        start=np.full(n, math.nan),
        replica=np.arange(n, dtype=np.int64) % max(1, replicas),
        preemptions=np.zeros(n, dtype=np.int64),
        cached_tokens=np.zeros(n),
        end_time=float(done.max()) if done.size else float(arrival.max(initial=0.0)),
        iterations=0,
        decode_stretches=0,
        policy_calls=0,
        busy_time=np.zeros(max(1, replicas)),
        tbt_samples=(empty, empty.astype(np.int64)),
        max_gap=max_gap,
        preempted=(empty.astype(np.int64), empty, empty),
        refused=np.zeros(n, dtype=bool),
    )


def judged(
    run: LiveRun, predicted: SimResult, replicas: int, slo: SLO
) -> dict[str, RunMetrics]:
    """The SLO's verdict on the live run and on the simulator's run of the same requests."""
    return {
        "measured": run_metrics(run.workload, measured_result(run, replicas), slo),
        "predicted": run_metrics(run.workload, predicted, slo),
    }


def simulate_run(
    workload: Workload, profile: StepProfile, replicas: int, slo: SLO
) -> tuple[SimResult, dict[str, np.ndarray]]:
    """The simulator's view of the same requests on ``replicas`` servers of the profiled
    engine: fixed-chunk batching at the engine's prompt chunk, round robin, its batching limit."""
    cluster = simulated_cluster(profile, replicas, workload)
    policy = _policy(profile)
    result = simulate(cluster, workload, policy)
    if result.error:
        raise RuntimeError(f"simulation failed: {result.error}")
    pr = per_request(workload, result)
    durations, counts = result.tbt_samples
    gaps = np.repeat(durations, counts) if len(durations) else np.empty(0)
    # A TPOT of a one-token request is 0 on both sides (no gap).
    return result, {"ttft": pr["ttft"], "tpot": pr["tpot"], "e2e": pr["e2e"], "itl": gaps}


def simulated_cluster(profile: StepProfile, replicas: int, workload: Workload) -> ClusterSpec:
    longest = int(workload.prompt.max() + workload.output.max()) if len(workload) else 1
    return ClusterSpec(
        replicas=replicas,
        profile=profile,
        max_num_seqs=profile.max_num_seqs,
        max_batch_tokens=max(16384, longest),
    )


def _policy(profile: StepProfile):
    chunk = profile.prompt_chunk_tokens or 8192
    source = read_policy_file(baseline_path("fixed_chunk"))
    return load_policy(source, {"chunk_size": max(32, min(8192, chunk))})


def _quantiles(values: np.ndarray) -> list[float]:
    v = values[~np.isnan(values)]
    if v.size == 0:
        return [math.nan] * len(QUANTILES)
    return [float(x) for x in np.percentile(v, QUANTILES)]


def _paired(measured: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    ok = ~np.isnan(measured) & ~np.isnan(predicted) & (measured > 0)
    if ok.sum() < 2:
        return {"mape": math.nan, "pearson_r": math.nan, "n": int(ok.sum())}
    m, p = measured[ok], predicted[ok]
    r = float(np.corrcoef(m, p)[0, 1]) if m.std() > 0 and p.std() > 0 else math.nan
    return {"mape": float(np.mean(np.abs(p / m - 1.0))), "pearson_r": r, "n": int(ok.sum())}


def compare(measured: dict[str, np.ndarray], predicted: dict[str, np.ndarray]) -> dict:
    """Quantiles side by side with relative errors; paired per-request MAPE and Pearson r."""
    table = {}
    for key, _ in METRICS:
        mq, pq = _quantiles(measured[key]), _quantiles(predicted[key])
        table[key] = {
            f"p{q}": {
                "measured": a,
                "predicted": b,
                "error": (b / a - 1.0) if a and not math.isnan(a) else math.nan,
            }
            for q, a, b in zip(QUANTILES, mq, pq, strict=True)
        }
    cells = [
        c["error"] for row in table.values() for c in row.values() if not math.isnan(c["error"])
    ]
    paired = {k: _paired(measured[k], predicted[k]) for k in ("ttft", "tpot", "e2e")}
    return {
        "quantiles": table,
        "quantile_mape": float(np.mean(np.abs(cells))) if cells else math.nan,
        "per_request": paired,
    }


def _crossing(points: Sequence[tuple[float, float]], share: float) -> float:
    """Highest rate meeting ``share``, interpolated linearly to the first rate above it that
    misses; 0 if even the lowest rate misses; the highest rate if none misses (a lower bound).
    A point is (rate, attainment), with an unsustainable run (a growing backlog) given 0: it
    does not count toward capacity whatever its share."""
    pts = sorted(points)
    best = 0.0
    for (r0, a0), (r1, a1) in zip(pts, pts[1:], strict=False):
        if a0 >= share > a1:
            return r0 + (r1 - r0) * (a0 - share) / (a0 - a1)
    for r, a in pts:
        if a >= share:
            best = r
    return best


@dataclass
class ObserveReport:
    """Everything `autotuner observe` prints, as data."""

    settings: ObserveSettings
    endpoints: tuple[str, ...]
    profile: StepProfile
    workload_label: str
    rate: float
    requests: int
    comparison: dict
    failed: int
    attainment: dict[str, RunMetrics]
    capacity: dict | None = None
    drift: dict | None = None

    def as_dict(self) -> dict:
        return {
            "endpoints": list(self.endpoints),
            "profile": self.profile.name,
            "workload": self.workload_label,
            "rate": self.rate,
            "requests": self.requests,
            "failed_requests": self.failed,
            "caps": {
                "max_prompt_tokens": self.settings.max_prompt_tokens,
                "max_output_tokens": self.settings.max_output_tokens,
            },
            "slo": {**asdict(self.settings.slo), "description": self.settings.slo.describe()},
            "slo_attainment": {k: m.attainment for k, m in self.attainment.items()},
            "slo_metrics": {k: m.to_dict() for k, m in self.attainment.items()},
            **self.comparison,
            "capacity": self.capacity,
            "engine_drift": self.drift,
        }


def observe(
    endpoints: Sequence[Endpoint],
    workload: Workload,
    profile: StepProfile,
    settings: ObserveSettings,
    label: str,
) -> ObserveReport:
    """Replay, simulate, compare; then the capacity sweep if the settings ask for one."""
    model, _ = server_model(endpoints[0])
    capped = cap_lengths(workload, profile, settings)
    drift = decode_drift(endpoints, profile, settings, model)
    live = run_live(endpoints, capped, profile, settings, model)
    measured = measured_per_request(live)
    sim, predicted = simulate_run(live.workload, profile, len(endpoints), settings.slo)
    comparison = compare(measured, predicted)
    attainment = judged(live, sim, len(endpoints), settings.slo)
    capacity = None
    if settings.capacity_rates:
        capacity = capacity_sweep(endpoints, capped, profile, settings, model)
    return ObserveReport(
        settings,
        tuple(e.url for e in endpoints),
        profile,
        label,
        float(capped.rate),
        len(capped),
        comparison,
        live.failed,
        attainment,
        capacity,
        drift,
    )


def decode_drift(
    endpoints: Sequence[Endpoint], profile: StepProfile, settings: ObserveSettings, model: str
) -> dict:
    """One short probe per endpoint, all at once, before the replay: the engine's decode step
    now against the profile's. Not used to correct anything; it says how much of a gap
    between measured and predicted is the machine having changed since the profile."""
    rng = random.Random(settings.seed + 7)
    plan = [PlannedRequest(0.0, k, make_prompt(16, rng), 12) for k in range(len(endpoints))]
    _, results = replay(
        endpoints, model, plan, timeout=settings.timeout_s, eos_token_ids=settings.eos_token_ids
    )
    steps = [
        (r.token_times[-1] - r.token_times[0]) / (len(r.token_times) - 1)
        for r in results
        if not r.error and len(r.token_times) >= 3
    ]
    expected = profile.iteration_time(0, 0.0, 1, 16 + 6)
    now = float(np.median(steps)) if steps else math.nan
    return {"decode_step_now_s": now, "decode_step_profile_s": expected, "ratio": now / expected}


def capacity_sweep(
    endpoints: Sequence[Endpoint],
    workload: Workload,
    profile: StepProfile,
    settings: ObserveSettings,
    model: str,
) -> dict:
    """SLO attainment at each swept rate, measured and simulated on the very requests sent;
    capacity = the interpolated rate where attainment crosses the share."""
    n = min(settings.capacity_requests, len(workload))
    base = Workload(
        workload.name, workload.arrival[:n], workload.prompt[:n], workload.output[:n], None
    )
    points = []
    for rate in settings.capacity_rates:
        wl = base.with_rate(rate)
        live = run_live(endpoints, wl, profile, replace(settings, seed=settings.seed + 1), model)
        sim, _ = simulate_run(live.workload, profile, len(endpoints), settings.slo)
        m = judged(live, sim, len(endpoints), settings.slo)
        points.append(
            {
                "rate": rate,
                "measured": m["measured"].attainment,
                "predicted": m["predicted"].attainment,
                "measured_sustainable": m["measured"].sustainable,
                "predicted_sustainable": m["predicted"].sustainable,
                "failed": live.failed,
            }
        )
    share = settings.share

    def counted(side: str) -> list[tuple[float, float]]:
        legacy = settings.slo.legacy
        return [
            (p["rate"], p[side] if legacy or p[f"{side}_sustainable"] else 0.0) for p in points
        ]

    return {
        "share": share,
        "points": points,
        "measured_rate": _crossing(counted("measured"), share),
        "predicted_rate": _crossing(counted("predicted"), share),
    }


def _ms(x: float) -> str:
    if math.isnan(x):
        return "-"
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def _err(x: float) -> str:
    return "-" if math.isnan(x) else f"{100 * x:+.1f} %"


def format_report(rep: ObserveReport) -> str:
    s = rep.settings
    lines = [
        f"observe   {len(rep.endpoints)} server(s): {', '.join(rep.endpoints)}",
        f"profile   {rep.profile.name} (max_num_seqs "
        f"{rep.profile.max_num_seqs or 'unlimited'}, measured {rep.profile.created})",
        f"workload  {rep.workload_label}: {rep.requests} requests at {rep.rate:.2f} req/s, "
        f"prompts <= {s.max_prompt_tokens}, outputs <= {s.max_output_tokens} tokens"
        + (f"; {rep.failed} failed" if rep.failed else ""),
        "",
        f"  {'metric':<18}{'quantile':>9}{'measured':>12}{'predicted':>12}{'error':>10}",
    ]
    for key, label in METRICS:
        for q, cell in rep.comparison["quantiles"][key].items():
            lines.append(
                f"  {label:<18}{q:>9}{_ms(cell['measured']):>12}{_ms(cell['predicted']):>12}"
                f"{_err(cell['error']):>10}"
            )
            label = ""
    lines.append(
        f"  quantile MAPE (all cells above): {100 * rep.comparison['quantile_mape']:.1f} %"
    )
    for key, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2e", "end-to-end")):
        p = rep.comparison["per_request"][key]
        lines.append(
            f"  per request {label:<11} MAPE {100 * p['mape']:.1f} %, Pearson r "
            f"{p['pearson_r']:.2f} (n={p['n']})"
        )
    if rep.drift and not math.isnan(rep.drift["ratio"]):
        d = rep.drift
        lines.append(
            f"  engine now vs profile: decode step {_ms(d['decode_step_now_s'])} against "
            f"{_ms(d['decode_step_profile_s'])} ({_err(d['ratio'] - 1)}; a shared machine drifts)"
        )
    a = rep.attainment
    lines.append(
        f"  SLO attainment ({s.slo.describe()}): measured {100 * a['measured'].attainment:.0f} %, "
        f"predicted {100 * a['predicted'].attainment:.0f} %"
    )
    if rep.capacity:
        c = rep.capacity
        lines.append("")
        lines.append(
            f"  capacity sweep ({c['share']:.0%} of requests in SLO, backlog not growing; "
            "* growing):"
        )
        lines.append(f"  {'rate, req/s':>14}{'measured':>11}{'predicted':>11}")
        for p in c["points"]:
            mark_m = " " if p["measured_sustainable"] else "*"
            mark_p = " " if p["predicted_sustainable"] else "*"
            lines.append(
                f"  {p['rate']:>14.2f}{100 * p['measured']:>9.0f}%{mark_m}"
                f"{100 * p['predicted']:>9.0f}%{mark_p}"
            )
        lines.append(
            f"  capacity: measured {c['measured_rate']:.2f} req/s, predicted "
            f"{c['predicted_rate']:.2f} req/s (interpolated between swept rates)"
        )
    return "\n".join(lines)
