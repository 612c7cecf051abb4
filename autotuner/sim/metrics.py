"""Metrics of a simulation, computed from per-request timestamps, and capacity under SLO.

Every arrival counts: a request that never got its first token or never finished misses its SLO
and is reported as unfinished, never dropped from the denominator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .engine import ClusterSpec, Policy, SimResult, simulate
from .workload import Workload


@dataclass(frozen=True)
class SLO:
    """Latency targets a request must meet to count as served well.

    ttft_s: time to first token; tpot_s: mean time per output token after the first.
    Defaults are the interactive-chat targets common in the literature (DistServe, Sarathi-Serve
    report P90 TTFT of seconds and TPOT of 100-200 ms at the SLO boundary for 7-8B models).
    """

    ttft_s: float = 2.0
    tpot_s: float = 0.1

    def __post_init__(self) -> None:
        for name in ("ttft_s", "tpot_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"SLO {name} must be a positive number of seconds, got {value!r}")


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"mean": math.nan, "p50": math.nan, "p90": math.nan, "p99": math.nan}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"mean": float(values.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def _weighted_stats(values: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    if values.size == 0 or weights.sum() == 0:
        return _stats(np.empty(0))
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order].astype(np.float64)
    cum = np.cumsum(w) / w.sum()
    pick = [float(v[min(np.searchsorted(cum, q), v.size - 1)]) for q in (0.5, 0.9, 0.99)]
    return {"mean": float((v * w).sum() / w.sum()), "p50": pick[0], "p90": pick[1], "p99": pick[2]}


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


def slo_met(workload: Workload, result: SimResult, slo: SLO) -> np.ndarray:
    r = per_request(workload, result)
    with np.errstate(invalid="ignore"):
        return (r["ttft"] <= slo.ttft_s) & (r["tpot"] <= slo.tpot_s)


def summarize(
    workload: Workload,
    result: SimResult,
    slo: SLO,
    *,
    num_gpus: int,
    gpu_hour_usd: float,
) -> dict[str, object]:
    """All reported metrics of one run, as a flat-ish dict of plain numbers."""
    r = per_request(workload, result)
    finished = ~np.isnan(result.finish)
    n = len(workload)
    met = slo_met(workload, result, slo)
    out_tokens = int(workload.output[finished].sum())
    in_tokens = int(workload.prompt[finished].sum())
    t0 = float(workload.arrival[0]) if n else 0.0
    t_end = float(np.nanmax(result.finish)) if finished.any() else result.end_time
    if not finished.all():
        t_end = max(t_end, result.end_time)
    makespan = max(t_end - t0, 1e-9)
    good_tokens = int(workload.output[met].sum())
    gpu_hours = num_gpus * makespan / 3600.0
    tbt_d, tbt_n = result.tbt_samples
    return {
        "requests": n,
        "finished": int(finished.sum()),
        "unfinished": int(n - finished.sum()),
        "duration_s": makespan,
        "ttft_s": _stats(r["ttft"][~np.isnan(r["ttft"])]),
        "tpot_s": _stats(r["tpot"][finished]),
        "tbt_s": _weighted_stats(tbt_d, tbt_n),
        "e2e_s": _stats(r["e2e"][finished]),
        "queue_s": _stats(r["queue"][~np.isnan(r["queue"])]),
        "throughput_tok_s": out_tokens / makespan,
        "total_throughput_tok_s": (out_tokens + in_tokens) / makespan,
        "request_throughput_rps": float(finished.sum()) / makespan,
        "slo_attainment": float(met.mean()) if n else math.nan,
        "goodput_tok_s": good_tokens / makespan,
        "goodput_rps": float(met.sum()) / makespan,
        "cost_per_mtok_usd": (gpu_hours * gpu_hour_usd) / (out_tokens / 1e6)
        if out_tokens
        else math.inf,
        "preemptions": int(result.preemptions.sum()),
        "prefix_cached_tokens": int(result.cached_tokens.sum()),
        "iterations": result.iterations,
        "policy_calls": result.policy_calls,
        "slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s},
        "error": result.error,
    }


@dataclass(frozen=True)
class CapacityResult:
    """Highest rate (requests/s) at which ``share`` of requests met both SLOs, and the probes."""

    rate: float
    share: float
    probes: tuple[tuple[float, float], ...]  # (rate, SLO attainment) in probe order
    error: str | None = None


def attainment_at(
    cluster: ClusterSpec,
    workload: Workload,
    policy_factory: Callable[[], Policy],
    slo: SLO,
    rate: float,
) -> tuple[float, str | None]:
    wl = workload.with_rate(rate)
    result = simulate(cluster, wl, policy_factory(), horizon=probe_horizon(wl, slo))
    if result.error:
        return 0.0, result.error
    return float(slo_met(wl, result, slo).mean()), None


def probe_horizon(wl: Workload, slo: SLO) -> float:
    """Past the last arrival plus generous drain time, nothing can still change a verdict much;
    cutting there keeps overloaded probes from simulating a long drain for nothing."""
    span = float(wl.arrival[-1] - wl.arrival[0]) if len(wl) else 0.0
    return float(wl.arrival[-1]) + max(60.0, 0.5 * span) + 20 * slo.ttft_s


def search_capacity(
    attainment: Callable[[float], tuple[float, str | None]],
    start: float,
    share: float,
    rel_tol: float = 0.02,
    max_probes: int = 24,
) -> CapacityResult:
    """Geometric bisection for the highest rate whose attainment is at least ``share``.

    Starts from a bracket around ``start`` (a good hint, such as the baseline's capacity, saves
    probes). Assumes attainment falls as the rate rises, which holds for any sane policy; the
    probes are returned so a reader can see the curve. A probe that fails (an illegal decision)
    ends the search with capacity 0 and the reason.
    """
    if not 0 < share <= 1:
        raise ValueError(f"the capacity share must be in (0, 1], got {share!r}")
    probes: list[tuple[float, float]] = []

    def ok(rate: float) -> bool:
        att, err = attainment(rate)
        probes.append((rate, att))
        if err:
            raise _ProbeError(err)
        return att >= share

    def done(rate: float, error: str | None = None) -> CapacityResult:
        return CapacityResult(rate, share, tuple(probes), error)

    step = 1.0 + max(4 * rel_tol, 0.1)
    try:
        lo, hi = start / step, start * step
        if ok(start):
            lo = start
            while ok(hi):
                lo, hi = hi, hi * 2
                if len(probes) >= max_probes:
                    return done(lo)
        else:
            hi = start
            while not ok(lo):
                hi, lo = lo, lo / 2
                if lo < 1e-4 or len(probes) >= max_probes:
                    return done(0.0)
        while hi - lo > rel_tol * lo and len(probes) < max_probes:
            mid = math.sqrt(lo * hi)
            if ok(mid):
                lo = mid
            else:
                hi = mid
    except _ProbeError as exc:
        return done(0.0, str(exc))
    return done(lo)


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
        lambda rate: attainment_at(cluster, workload, policy_factory, slo, rate),
        start if start is not None else max(workload.rate, 1e-3),
        share,
        rel_tol,
        max_probes,
    )


class _ProbeError(Exception):
    pass
