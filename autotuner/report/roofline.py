"""An upper bound on capacity from the cost model's roofline: how far a measured capacity is
from what the hardware could do. No policy can reach it; the report's headroom section divides
each measured capacity by it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from autotuner.sim.engine import ClusterSpec
from autotuner.sim.metrics import SLO
from autotuner.sim.workload import Workload


@dataclass(frozen=True)
class RooflineBound:
    """``rate``: the bound for this finite instance (req/s); ``steady_rate``: the sustained
    rate that keeps every replica busy; ``request_s``: ideal replica time per request;
    ``decode_share``, ``prefix_hit_share``: of the kept requests' tokens."""

    rate: float
    steady_rate: float
    iteration_tokens: int
    iteration_s: float
    request_s: float
    decode_share: float
    prefix_hit_share: float


def capacity_bound(cluster: ClusterSpec, wl: Workload, slo: SLO | None = None,
                   share: float = 0.9) -> RooflineBound:
    """An upper bound on the capacity under SLO of any policy on this cluster and workload.

    Idealised service: every replica runs full-budget iterations (``max_batch_tokens``
    tokens), so each token costs its share of the roofline's ideal batch (fixed costs and
    weight reads spread over the whole budget); attention costs its exact (query, key) pairs
    and decode KV reads; every shared prompt prefix is computed once in the whole cluster;
    KV-cache capacity never limits the batch; and the costliest ``1 - share`` of requests are
    never served (the SLO only asks for ``share``). Each request is then a fixed amount of
    replica time, its prefill part due by arrival + the TTFT target and the rest by arrival +
    TTFT + the TPOT target per decode token.

    ``steady_rate``: the sustained rate at which the replicas are never idle and nothing waits.
    ``rate``: the bound for this finite instance (what the measured capacity is compared with):
    the highest arrival rate at which, for every deadline, the work due by then fits in the
    replica time since 0 (a necessary condition, found by bisection). It can exceed the steady
    rate, since a finite run may finish work after its last arrival. Rates in requests/s.
    """
    slo = slo or SLO()
    cost = cluster.cost_model()
    B = int(cluster.max_batch_tokens)
    prompt = wl.prompt.astype(np.float64)
    out = wl.output.astype(np.float64)
    hit = np.zeros(len(wl))
    if wl.prefix is not None:
        seen: set[int] = set()
        pbt = int(wl.prefix_block_tokens)
        for i, ids in enumerate(wl.prefix):
            h = 0
            for b in ids:
                if b not in seen:
                    break
                h += 1
            hit[i] = min(h * pbt, prompt[i] - 1)
            seen.update(ids)
    pre = prompt - hit  # prompt tokens that must be computed
    pairs = (prompt * (prompt + 1) - hit * (hit + 1)) / 2.0  # causal attention (query, key) pairs
    dec = out - 1.0  # decode iterations after the first token
    ctx = dec * prompt + dec * (dec + 1) / 2.0  # KV tokens the decodes read, summed
    # Marginal costs at the ideal (full-budget) iteration, from the cost model itself.
    t_full = cost.iteration_time(B, 0.0, 0, 0)
    per_token = t_full / B
    big = float(B) * B * 64  # enough pairs to sit on the compute side of the roofline
    per_pair = (cost.iteration_time(B, 2 * big, 0, 0) - cost.iteration_time(B, big, 0, 0)) / big
    per_logit = (cost.iteration_time(B // 2, 0.0, B - B // 2, 0) - t_full) / (B - B // 2)
    per_ctx = cost.decode_coeffs(1)[1]
    prefill_work = pre * per_token + pairs * per_pair
    decode_work = dec * (per_token + max(per_logit, 0.0)) + ctx * per_ctx
    keep = np.sort(np.argsort(prefill_work + decode_work, kind="stable")[
        : max(1, math.ceil(share * len(wl)))])
    mean_work = float((prefill_work + decode_work)[keep].mean())
    steady = cluster.replicas / mean_work / share if mean_work > 0 else math.inf
    rate = _finite_bound(wl, keep, prefill_work, decode_work, slo.ttft_s,
                         slo.ttft_s + dec * slo.tpot_s, cluster.replicas, steady)
    return RooflineBound(
        rate=rate, steady_rate=steady, iteration_tokens=B, iteration_s=t_full,
        request_s=mean_work,
        decode_share=float(dec[keep].sum() / max((pre + dec)[keep].sum(), 1.0)),
        prefix_hit_share=float(hit[keep].sum() / max(prompt[keep].sum(), 1.0)))


def _finite_bound(wl: Workload, keep: np.ndarray, first: np.ndarray, rest: np.ndarray,
                  first_slack: float, rest_slack: np.ndarray, replicas: int, start: float
                  ) -> float:
    """Highest rate at which the kept requests' work (replica-seconds: ``first`` due by arrival
    + ``first_slack``, ``rest`` by arrival + ``rest_slack``) can meet every deadline on
    ``replicas`` replicas counted from time 0 (inf if even simultaneous arrivals could)."""
    rate0 = wl.rate
    if not (len(keep) and math.isfinite(rate0) and rate0 > 0 and math.isfinite(start)):
        return start
    a0 = wl.arrival[keep] * rate0  # arrivals at 1 request/s
    work = np.concatenate([first[keep], rest[keep]])
    slack = np.concatenate([np.full(len(keep), first_slack), rest_slack[keep]])
    arrive = np.concatenate([a0, a0])

    def feasible(rate: float) -> bool:
        due = arrive / rate + slack
        order = np.argsort(due, kind="stable")
        return bool(np.all(np.cumsum(work[order]) <= replicas * due[order] * (1 + 1e-12)))

    lo = hi = max(start, 1e-9)
    while feasible(hi):
        lo, hi = hi, hi * 2
        if hi > 1e4 * start:
            return math.inf
    while not feasible(lo):
        hi, lo = lo, lo / 2
        if lo < 1e-9 * start:
            return 0.0
    for _ in range(60):
        if hi - lo <= 1e-6 * lo:
            break
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if feasible(mid) else (lo, mid)
    return lo


# ------------------------------------------------------------------------------- statistics
