"""The simulator: batching, KV accounting, prefix cache, validation, determinism, fast-forward."""

from __future__ import annotations

import numpy as np
import pytest
from decision_logs import decisions, joined, record

from autotuner.policy import load_policy, read_policy_file, read_policy_source
from autotuner.resources import baseline_path
from autotuner.sim.api import Partition
from autotuner.sim.engine import ClusterSpec, simulate
from autotuner.sim.metrics import SLO, slo_met, summarize
from autotuner.sim.replay import KeptLog, ReplayPolicy
from autotuner.sim.workload import SCENARIOS, Workload, make_workload

CLUSTER = ClusterSpec(model="llama-3-8b", gpu="h100", tp=1, replicas=2)
BASELINES = ["fixed_chunk", "sarathi_shrinking", "least_outstanding", "power_of_two",
             "prefix_aware"]


def baseline(name: str = "fixed_chunk", **params):
    return load_policy(read_policy_file(baseline_path(name)), params)


def policy_from(code: str, **params):
    return load_policy(read_policy_source(code, "test_policy.py"), params)


class SmallKV:
    """The real cost model with a tiny KV cache, to force preemption and eviction."""

    def __init__(self, tokens: int, cluster: ClusterSpec = CLUSTER):
        self.inner = cluster.cost_model()
        self.tokens = tokens

    def kv_capacity_tokens(self, *args, **kwargs) -> int:
        return self.tokens

    def iteration_time(self, *args) -> float:
        return self.inner.iteration_time(*args)

    def decode_coeffs(self, n: int):
        return self.inner.decode_coeffs(n)


def workload(arrival, prompt, output, prefix=None, name="t") -> Workload:
    return Workload(
        name=name,
        arrival=np.asarray(arrival, dtype=np.float64),
        prompt=np.asarray(prompt, dtype=np.int64),
        output=np.asarray(output, dtype=np.int64),
        prefix=prefix,
    )


def test_single_request_timeline_matches_cost_model():
    wl = workload([0.0], [1000], [11])
    res = simulate(ClusterSpec(replicas=1), wl, baseline())
    cost = ClusterSpec().cost_model()
    # fixed 512 chunks: 512 then 488 tokens, then 10 decode iterations
    t1 = cost.iteration_time(512, 512 * (0 + 513 / 2), 0, 0)
    t2 = cost.iteration_time(488, 488 * (512 + 489 / 2), 0, 0)
    assert res.first_token[0] == pytest.approx(t1 + t2, rel=1e-12)
    a, b = cost.decode_coeffs(1)
    decode = sum(a + b * (1000 + j) for j in range(10))
    assert res.finish[0] == pytest.approx(t1 + t2 + decode, rel=1e-9)
    assert res.error is None and res.iterations == 12


def test_all_requests_finish_and_metrics_are_sane():
    wl = make_workload("chat", 400, rate=6.0, seed=1)
    res = simulate(CLUSTER, wl, baseline())
    assert res.error is None
    assert not np.isnan(res.finish).any()
    assert (res.first_token >= wl.arrival).all() and (res.finish >= res.first_token).all()
    m = summarize(wl, res, SLO(), num_gpus=2, gpu_hour_usd=3.0)
    assert m["finished"] == 400 and m["unfinished"] == 0
    assert 0 < m["ttft_s"]["p50"] <= m["ttft_s"]["p99"]
    assert 0 < m["throughput_tok_s"] and 0 < m["cost_per_mtok_usd"] < 100
    # at low load everything meets the SLO: the good tokens are the tokens served
    assert m["attainment"] == 1.0 and m["sustainable"] and m["starved"] == 0
    assert m["goodput_tok_s"] == pytest.approx(m["throughput_tok_s"], rel=0.1)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_fast_forward_matches_step_by_step(scenario):
    wl = make_workload(scenario, 150, seed=3)
    fast = simulate(CLUSTER, wl, baseline())
    slow = simulate(CLUSTER, wl, baseline(), fast_forward=False)
    assert fast.error is None and slow.error is None
    np.testing.assert_allclose(fast.finish, slow.finish, rtol=1e-9)
    np.testing.assert_allclose(fast.first_token, slow.first_token, rtol=1e-9)
    assert fast.iterations == slow.iterations
    assert fast.decode_stretches < slow.decode_stretches


def test_deterministic_bit_identical():
    wl = make_workload("mixed", 300, seed=5)
    runs = [simulate(CLUSTER, wl, baseline("power_of_two")) for _ in range(2)]
    for field in ("first_token", "finish", "start", "replica", "preemptions"):
        assert np.array_equal(getattr(runs[0], field), getattr(runs[1], field), equal_nan=True)


class KVWatch:
    """Wraps a policy and records the KV room every view reports."""

    def __init__(self, inner):
        self.inner = inner
        self.min_free = np.inf

    def partition(self, view):
        self.min_free = min(self.min_free, view.kv_free_tokens)
        if view.waiting_count <= len(view.waiting):
            assert view.waiting_tokens == sum(w.remaining for w in view.waiting)
        assert view.kv_free_tokens <= view.kv_capacity_tokens
        return self.inner.partition(view)

    def route(self, request, cluster):
        for r in cluster.replicas:
            self.min_free = min(self.min_free, r.kv_free_tokens)
        return self.inner.route(request, cluster)


def test_kv_pressure_preempts_and_never_exceeds_capacity():
    wl = make_workload("chat", 300, rate=40.0, seed=2)
    watch = KVWatch(baseline())
    res = simulate(CLUSTER, wl, watch, cost_model=SmallKV(12_000))
    assert res.error is None
    assert res.preemptions.sum() > 0
    fits = (wl.prompt + wl.output) < 12_000
    assert fits.sum() < len(wl)  # the chat tail has prompts over the cache: refused, and missed
    assert not np.isnan(res.finish[fits]).any()  # preempted requests were recomputed and finished
    assert np.isnan(res.finish[~fits]).all()
    assert watch.min_free >= 0


def test_request_larger_than_kv_starves_but_counts():
    wl = workload([0.0, 0.1], [5000, 100], [5, 5])
    res = simulate(ClusterSpec(replicas=1), wl, baseline(), cost_model=SmallKV(2000))
    assert res.error is None
    met = slo_met(wl, res, SLO())
    assert np.isnan(res.finish[0]) and not met[0]  # never fits: a missed SLO, not a missing row


def test_prefix_cache_reuse_skips_prefill():
    ids = tuple(range(8))  # 8 blocks of 512 tokens
    wl = workload([0.0, 5.0], [4200, 4300], [4, 4], prefix=(ids, ids + (99,)))
    res = simulate(ClusterSpec(replicas=1), wl, baseline())
    assert res.cached_tokens[0] == 0
    assert res.cached_tokens[1] == 8 * 512
    ttft = res.first_token - wl.arrival
    assert ttft[1] < 0.5 * ttft[0]


def test_prefix_cache_evicts_under_pressure():
    n = 40
    prefix = tuple(tuple(range(i * 10, i * 10 + 4)) for i in range(n))
    wl = workload(np.arange(n) * 0.5, [2100] * n, [3] * n, prefix=prefix)
    res = simulate(ClusterSpec(replicas=1), wl, baseline(), cost_model=SmallKV(20_000))
    assert res.error is None and res.counters["evicted_blocks"] > 0
    assert not np.isnan(res.finish).any()


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_baseline_on_every_scenario(name, scenario):
    wl = make_workload(scenario, 120, seed=0)
    res = simulate(CLUSTER, wl, baseline(name))
    assert res.error is None, res.error
    assert (~np.isnan(res.finish)).sum() == 120


def test_prefix_aware_routing_gets_more_hits_than_round_robin():
    wl = make_workload("multiturn", 600, seed=4)
    rr = simulate(ClusterSpec(replicas=4), wl, baseline())
    pa = simulate(ClusterSpec(replicas=4), wl, baseline("prefix_aware"))
    assert pa.cached_tokens.sum() > 1.2 * rr.cached_tokens.sum()


def test_least_outstanding_balances_load():
    wl = make_workload("bursty", 400, seed=1)
    res = simulate(ClusterSpec(replicas=4), wl, baseline("least_outstanding"))
    counts = np.bincount(res.replica, minlength=4)
    assert counts.min() > 0.15 * 400


ILLEGAL = {
    "over budget": ("return Partition(16, tuple((w.id, w.remaining) for w in replica.waiting))",
                    "exceed the budget"),
    "unknown id": ("return Partition(512, ((10**6, 1),))", "not waiting on this replica"),
    "duplicate": ("w = replica.waiting[0]\n    return Partition(512, ((w.id, 1), (w.id, 1)))",
                  "appears in two chunks"),
    "too many tokens": ("w = replica.waiting[0]\n"
                        "    return Partition(10**6, ((w.id, w.remaining + 1),))", "allowed"),
    "zero tokens": ("w = replica.waiting[0]\n    return Partition(512, ((w.id, 0),))", "allowed"),
    "nan budget": ("return Partition(float('nan'), ())", "whole number"),
    "wrong type": ("return 'all of them'", "must return Partition"),
    "bool budget": ("return Partition(True, ())", "integer"),
    "negative budget": ("return Partition(-5, ())", ">= 0"),
    "raises": ("raise RuntimeError('boom')", "raised RuntimeError: boom"),
    "over max batch": ("w = replica.waiting[0]\n"
                       "    return Partition(10**7, ((w.id, min(w.remaining, 20000)),))",
                       "max_batch_tokens"),
}


@pytest.mark.parametrize("case", sorted(ILLEGAL))
def test_illegal_partition_fails_with_reason(case):
    body, reason = ILLEGAL[case]
    code = f"TUNABLES = {{}}\n\ndef partition(replica, params):\n    {body}\n"
    wl = workload([0.0, 0.0], [30000, 30000], [3, 3])
    res = simulate(ClusterSpec(replicas=1, max_batch_tokens=16384), wl,
                   policy_from(code.replace("Partition(", "(")))
    assert res.error is not None and res.error.startswith("partition(replica 0")
    assert reason in res.error


def test_illegal_kv_chunk_fails():
    code = ("TUNABLES = {}\n\ndef partition(replica, params):\n"
            "    w = replica.waiting[0]\n"
            "    extra = 1 if replica.decodes else 0\n"
            "    return (8192, ((w.id, min(w.remaining, replica.kv_free_tokens + extra)),))\n")
    wl = workload([0.0, 1.0], [3000, 3000], [500, 3])
    res = simulate(ClusterSpec(replicas=1), wl, policy_from(code), cost_model=SmallKV(4000))
    assert res.error and "free KV cache" in res.error


@pytest.mark.parametrize("ret,reason", [("7", "does not exist"), ("-1", "does not exist"),
                                        ("'a'", "integer"), ("1.5", "whole number"),
                                        ("None", "integer")])
def test_illegal_route_fails_with_reason(ret, reason):
    code = f"TUNABLES = {{}}\n\ndef route(request, cluster, params):\n    return {ret}\n"
    res = simulate(CLUSTER, workload([0.0], [100], [2]), policy_from(code))
    assert res.error and res.error.startswith("route(request 0") and reason in res.error


def test_partition_object_and_params_reach_the_policy():
    code = ("TUNABLES = {'chunk': {'type': 'int', 'low': 1, 'high': 4096, 'default': 64}}\n\n"
            "def partition(replica, params):\n"
            "    w = replica.waiting[0]\n"
            "    return (params['chunk'] + replica.decodes, ((w.id, min(w.remaining, "
            "params['chunk'], replica.kv_free_tokens)),))\n")
    wl = workload([0.0], [1000], [2])
    small = simulate(ClusterSpec(replicas=1), wl, policy_from(code))
    large = simulate(ClusterSpec(replicas=1), wl, policy_from(code, chunk=1000))
    assert small.iterations == 16 + 1 and large.iterations == 1 + 1
    assert Partition(5).chunks == ()


def test_horizon_leaves_unfinished_requests_as_missed():
    wl = make_workload("chat", 200, rate=50.0, seed=0)
    res = simulate(ClusterSpec(replicas=1), wl, baseline(), horizon=3.0)
    m = summarize(wl, res, SLO(), num_gpus=1, gpu_hour_usd=1.0)
    assert m["unfinished"] > 0 and m["requests"] == 200
    met = slo_met(wl, res, SLO())
    assert met.any() and not (met & np.isnan(res.finish)).any()  # only finished ones meet it
    assert m["starved"] >= m["unfinished"]


def test_recorded_decisions_replay_to_identical_run():
    wl = make_workload("multiturn", 200, seed=2)
    kept = KeptLog()
    direct = simulate(CLUSTER, wl, baseline("prefix_aware"), log=kept)
    replay = ReplayPolicy(kept.ints)
    again = simulate(CLUSTER, wl, replay)
    assert replay.unused == 0 and again.error is None
    assert np.array_equal(direct.finish, again.finish)


def test_tampered_log_fails_or_changes_nothing_trusted():
    wl = make_workload("chat", 100, seed=2)
    entries = decisions(record(CLUSTER, wl, baseline()))
    first_p = next(i for i, e in enumerate(entries) if e[0] >= 0)
    forged = [*entries[:first_p], [10**9, 1, 0, 10**9], *entries[first_p + 1:]]
    res = simulate(CLUSTER, wl, ReplayPolicy(joined(forged)))
    assert res.error and "allowed" in res.error
    short = simulate(CLUSTER, wl, ReplayPolicy(joined(entries[:10])))
    assert short.error and "ended early" in short.error


def _token_times(wl, policy, cost_model=None):
    """Step-by-step run that records every token of every request (the slow reference)."""
    from autotuner.sim import engine

    times = [[] for _ in range(len(wl))]
    original = engine._Simulation._complete

    def complete(sim, rep, now):
        pending = rep.pending
        for i in rep.running:  # every decode emits one token in this iteration
            times[i].append(now)
        if pending[0] == 1:
            for rid, tokens in pending[1]:
                if sim.prefilled[rid] + tokens == sim.target[rid]:
                    times[rid].append(now)  # a finished prefill yields a token
        original(sim, rep, now)

    engine._Simulation._complete = complete
    try:
        res = simulate(CLUSTER, wl, policy, fast_forward=False, cost_model=cost_model)
    finally:
        engine._Simulation._complete = original
    return res, times


@pytest.mark.parametrize("kv", [None, 12_000])
def test_longest_gap_per_request_is_exact_with_fast_forward_and_preemption(kv):
    wl = make_workload("chat", 200, rate=30.0, seed=4)
    cost = SmallKV(kv) if kv else None
    slow, times = _token_times(wl, baseline(), cost)
    fast = simulate(CLUSTER, wl, baseline(), cost_model=cost)
    expect = np.array([np.diff(t).max() if len(t) > 1 else 0.0 for t in times])
    finished = ~np.isnan(slow.finish)
    assert all(len(times[i]) == wl.output[i] for i in np.flatnonzero(finished))
    np.testing.assert_allclose(slow.max_gap[finished], expect[finished], rtol=1e-9)
    np.testing.assert_allclose(fast.max_gap, slow.max_gap, rtol=1e-9)
    if kv:
        pre_req, pre_at, pre_back = fast.preempted
        assert len(pre_req) > 0 and not np.isnan(pre_back).any()
        # a preempted request's longest gap is at least its wait for the recompute
        assert (fast.max_gap[pre_req] >= pre_back - pre_at - 1e-12).all()
        # and for some it is that wait: the stall a reader sees
        assert np.isclose(fast.max_gap[pre_req], pre_back - pre_at, rtol=1e-12).any()
