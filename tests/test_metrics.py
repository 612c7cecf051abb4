"""The yardstick: per-request SLO, the steady-state window, sustainability, fairness, capacity.

Most tests build a SimResult by hand, so each rule is checked on timestamps whose verdict is known;
the last ones run the simulator on the audit's starvation policies.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from autotuner.archive import canonical
from autotuner.policy import load_policy, read_policy_file
from autotuner.resources import asset_dir, baseline_path
from autotuner.sim.engine import ClusterSpec, SimResult
from autotuner.sim.metrics import (
    SLO,
    PooledRun,
    RunMetrics,
    capacity,
    capacity_pooled,
    jain_index,
    metrics_at,
    probe_horizon,
    run_metrics,
    search_capacity,
    search_capacity_settled,
    slo_met,
)
from autotuner.sim.workload import Workload, make_workload

NAN = math.nan


def workload(arrival, prompt, output) -> Workload:
    return Workload("t", np.asarray(arrival, dtype=np.float64), np.asarray(prompt),
                    np.asarray(output), None)


def result(first, finish, *, max_gap=None, replica=None, horizon=math.inf, preempted=None,
           refused=None) -> SimResult:
    first = np.asarray(first, dtype=np.float64)
    finish = np.asarray(finish, dtype=np.float64)
    n = len(first)
    empty = np.empty(0)
    return SimResult(
        first_token=first, finish=finish, start=first.copy(),
        replica=np.zeros(n, dtype=np.int64) if replica is None else np.asarray(replica),
        preemptions=np.zeros(n, dtype=np.int64), cached_tokens=np.zeros(n, dtype=np.int64),
        end_time=float(np.nanmax(np.concatenate([finish, first, [0.0]]))), iterations=1,
        decode_stretches=0, policy_calls=0, busy_time=np.zeros(1),
        tbt_samples=(empty, empty.astype(np.int64)),
        max_gap=np.zeros(n) if max_gap is None else np.asarray(max_gap, dtype=np.float64),
        preempted=preempted or (empty.astype(np.int64), empty, empty),
        refused=np.zeros(n, dtype=bool) if refused is None else np.asarray(refused),
        horizon=horizon,
    )


NO_WARMUP = SLO(warmup=0.0)


# ------------------------------------------------------------------------------- the SLO
def test_deadline_grows_with_the_prompt_and_legacy_is_fixed():
    slo = SLO(ttft_s=1.0, ttft_s_per_token=0.001)
    np.testing.assert_allclose(slo.deadlines(np.array([0, 1000, 5000])), [1.0, 2.0, 6.0])
    np.testing.assert_allclose(SLO(kind="legacy", ttft_s=1.0).deadlines(np.array([10, 5000])),
                               [1.0, 1.0])
    with pytest.raises(ValueError, match="kind"):
        SLO(kind="p99")


def test_a_long_prompt_is_judged_against_its_own_deadline():
    # 8,000-token prompt served in 3 s: within 2 s + 8000 * 0.2 ms = 3.6 s, not within a fixed 2 s
    wl = workload([0.0], [8000], [2])
    res = result([3.0], [3.05])
    assert slo_met(wl, res, SLO()).all()
    assert not slo_met(wl, res, SLO(kind="legacy")).any()


def test_only_finished_requests_meet_the_slo():
    # request 1 got its first token on time but never finished before the cut-off
    wl = workload([0.0, 0.0], [100, 100], [10, 10])
    res = result([0.5, 0.5], [1.0, NAN], horizon=50.0)
    met = slo_met(wl, res, NO_WARMUP)
    assert met.tolist() == [True, False]
    m = run_metrics(wl, res, NO_WARMUP)
    assert m.attainment == 0.5 and m.unfinished == 1 and m.starved == 1
    assert m.starved_ids == (1,)
    assert m.ttft_ok == 1.0 and m.tpot_ok == 0.5 and m.tbt_ok == 0.5


def test_one_long_gap_between_tokens_misses_whatever_the_mean():
    # mean TPOT 10 ms for both; request 1 stalled 0.5 s once (a preemption's recompute, say)
    wl = workload([0.0, 0.0], [100, 100], [101, 101])
    res = result([0.2, 0.2], [1.2, 1.2], max_gap=[0.012, 0.5])
    assert slo_met(wl, res, NO_WARMUP).tolist() == [True, False]
    assert run_metrics(wl, res, NO_WARMUP).tbt_ok == 0.5
    assert slo_met(wl, res, SLO(kind="legacy")).all()  # the old definition saw only the mean


def test_warmup_requests_are_not_scored_but_are_counted():
    # arrivals 0..9 s; warm-up 10 % = the first second; request 0 starved, the rest fine
    arrival = np.arange(10.0)
    wl = workload(arrival, [100] * 10, [2] * 10)
    first = arrival + 0.1
    first[0] = NAN
    finish = first + 0.05
    m = run_metrics(wl, result(first, finish, horizon=40.0), SLO(warmup=0.1))
    assert m.window_requests == 9 and m.attainment == 1.0
    assert m.requests == 10 and m.unfinished == 1 and m.starved == 1 and m.starved_ids == (0,)
    assert m.longest_wait_s == pytest.approx(40.0)  # waited until the cut-off
    assert m.max_wait_over_deadline == pytest.approx(40.0 / (2.0 + 100 * 0.0002))


def test_drain_cutoff_gives_every_request_its_chance_and_no_more():
    wl = make_workload("chat", 500, seed=3)
    slo = SLO()
    cut = probe_horizon(wl, slo)
    latest = wl.arrival + slo.deadlines(wl.prompt) + (wl.output - 1) * slo.tpot_s
    assert cut >= latest.max()  # a request that meets its SLO finishes before the cut-off
    assert cut <= (wl.arrival + slo.starve_multiple * slo.deadlines(wl.prompt)
                   + wl.output * slo.tpot_s).max()
    legacy = probe_horizon(wl, SLO(kind="legacy"))
    span = wl.arrival[-1] - wl.arrival[0]
    assert legacy == pytest.approx(wl.arrival[-1] + max(60.0, 0.5 * span) + 40.0)


# ------------------------------------------------------------------------------- sustainability
def _uniform_run(n: int, starve_every: int | None):
    arrival = np.linspace(0.0, 100.0, n)
    prompt = np.full(n, 1000)
    wl = workload(arrival, prompt, np.full(n, 2))
    first = arrival + 0.3
    if starve_every:
        first[::starve_every] = NAN  # never started: the backlog of never-served prompts grows
    return wl, result(first, first + 0.02, horizon=200.0)


def test_a_growing_backlog_is_not_sustainable_whatever_the_share():
    wl, res = _uniform_run(2000, starve_every=20)  # 5 % never served
    m = run_metrics(wl, res, SLO())
    assert m.attainment >= 0.94  # the share alone would accept it
    assert m.backlog_growth == pytest.approx(0.05, abs=0.01)
    assert not m.sustainable and not m.meets(0.9)
    legacy = run_metrics(wl, res, SLO(kind="legacy"))
    assert legacy.meets(0.9)  # the old yardstick did


def test_a_steady_backlog_is_sustainable():
    wl, res = _uniform_run(2000, starve_every=None)
    m = run_metrics(wl, res, SLO())
    assert abs(m.backlog_growth) < 0.005 and m.sustainable and m.meets(0.9)


def test_preempted_requests_waiting_for_recompute_count_in_the_backlog():
    wl, res = _uniform_run(2000, starve_every=None)
    # every 20th request is preempted right after its first token and never resumed
    req = np.arange(0, 2000, 20)
    res.preempted = (req, res.first_token[req] + 0.01, np.full(len(req), NAN))
    res.finish[req] = NAN
    m = run_metrics(wl, res, SLO())
    assert m.backlog_growth == pytest.approx(0.05, abs=0.01) and not m.sustainable


def test_refused_requests_are_missed_but_not_a_backlog():
    wl, res = _uniform_run(2000, starve_every=20)
    res.refused = np.isnan(res.first_token)
    m = run_metrics(wl, res, SLO())
    assert m.sustainable and m.attainment < 0.96 and m.unfinished == 100


# ------------------------------------------------------------------------------- fairness
def test_jain_index():
    assert jain_index(np.ones(10)) == pytest.approx(1.0)
    assert jain_index(np.array([1.0] + [0.0] * 9)) == pytest.approx(0.1)
    assert jain_index(np.zeros(4)) == 1.0


def test_fairness_over_prompt_deciles_sees_deferred_long_prompts():
    n = 1000
    arrival = np.linspace(0.0, 100.0, n)
    prompt = np.tile(np.arange(100, 1100, 100), n // 10)
    wl = workload(arrival, prompt, np.full(n, 2))
    fair = result(arrival + 0.5, arrival + 0.6)
    late = arrival + np.where(prompt >= 1000, 20.0, 0.5)  # the longest decile waits 20 s
    unfair = result(late, late + 0.1)
    assert run_metrics(wl, fair, NO_WARMUP).jain_slowdown > 0.95
    assert run_metrics(wl, unfair, NO_WARMUP).jain_slowdown < 0.3


def test_priority_inversion_is_overtaking_an_overdue_request():
    # deadlines are 2 s. On replica 0, request 0 arrives at 0 and is served at 5; request 2
    # arrives at 1 and is served at 3, after 0's deadline passed: 0 was overtaken while overdue.
    # On replica 1, request 3 overtakes request 1 at 1.5 s, before 1's deadline: a reordering,
    # not an inversion.
    wl = workload([0.0, 0.0, 1.0, 1.0], [1, 1, 1, 1], [1, 1, 1, 1])
    res = result([5.0, 1.8, 3.0, 1.5], [5.0, 1.8, 3.0, 1.5], replica=[0, 1, 0, 1])
    m = run_metrics(wl, res, SLO(ttft_s=2.0, ttft_s_per_token=0.0, warmup=0.0))
    assert m.priority_inversions == 1 and m.inversion_ids == (0,)


def test_a_request_never_served_is_inverted_by_anyone_served_after_its_deadline():
    wl = workload([0.0, 1.0], [1, 1], [1, 1])
    res = result([NAN, 4.0], [NAN, 4.0], horizon=30.0)
    m = run_metrics(wl, res, SLO(ttft_s=2.0, ttft_s_per_token=0.0, warmup=0.0))
    assert m.priority_inversions == 1 and m.inversion_ids == (0,)


# ------------------------------------------------------------------------------- the record
def test_run_metrics_round_trip_through_the_archive_json():
    wl = make_workload("chat", 300, seed=2)
    m = metrics_at(ClusterSpec(replicas=2), wl, _policy("fixed_chunk"), SLO(), 20.0)
    again = RunMetrics.from_dict(json.loads(canonical(m.to_dict())))
    assert again == m
    failed = RunMetrics.failed(wl, "boom")
    assert RunMetrics.from_dict(json.loads(canonical(failed.to_dict()))) == failed
    assert not failed.meets(0.0) and failed.unfinished == 300


# ------------------------------------------------------------------------------- capacity
def _fake(accept_below: float, sustain_below: float):
    def probe(rate: float) -> RunMetrics:
        base = RunMetrics.failed(workload([0.0], [1], [1]), "").to_dict()
        base.update(error=None, attainment=1.0 if rate < accept_below else 0.5,
                    sustainable=rate < sustain_below, slo_kind="deadline")
        return RunMetrics.from_dict(base)
    return probe


def test_capacity_needs_the_share_and_sustainability():
    found = search_capacity(_fake(accept_below=50.0, sustain_below=30.0), 10.0, 0.9)
    assert 29.0 < found.rate < 30.0
    assert all(len(p) == 3 for p in found.probes)
    assert any(att >= 0.9 and not sus for _, att, sus in found.probes)  # refused for growth
    assert found.at_capacity is not None and found.at_capacity.meets(0.9)
    found = search_capacity(_fake(accept_below=20.0, sustain_below=30.0), 10.0, 0.9)
    assert 19.0 < found.rate < 20.0


def test_the_rate_found_does_not_depend_on_the_hint():
    """One fixed grid: however far off the start, the answer is the same grid rate (which is
    why a capacity job's hint is not part of its cache key)."""
    probe = _fake(accept_below=37.3, sustain_below=math.inf)
    rates = {search_capacity(probe, start, 0.9).rate for start in (0.5, 10.0, 37.0, 38.0, 900.0)}
    assert len(rates) == 1 and 36.5 < rates.pop() < 37.3


def test_a_search_below_a_known_failure_walks_down_a_step_at_a_time():
    probe = _fake(accept_below=39.0, sustain_below=math.inf)
    first = search_capacity(_fake(accept_below=40.0, sustain_below=math.inf), 10.0, 0.9)
    below = search_capacity(probe, first.rate, 0.9, fails_at=first.rate)
    assert below.rate == search_capacity(probe, 10.0, 0.9).rate  # the same answer...
    assert len(below.probes) == 1 and below.probes[0][0] < first.rate  # ...for one probe
    far = search_capacity(_fake(accept_below=20.0, sustain_below=math.inf), first.rate, 0.9,
                          fails_at=first.rate)
    assert far.rate == search_capacity(_fake(20.0, math.inf), 10.0, 0.9).rate
    assert all(rate < first.rate for rate, _, _ in far.probes)  # the known failure: not again


def _by_length(capacity_at: dict[int, float]):
    """A probe whose capacity falls with the run's length multiple, as a bursty workload's does
    until the run outlasts its excursions; the calls made are kept."""
    calls: list[tuple[float, int]] = []

    def probe(rate: float, multiple: int) -> RunMetrics:
        calls.append((rate, multiple))
        return _fake(capacity_at[multiple], math.inf)(rate)
    return probe, calls


def test_a_capacity_that_holds_on_a_run_twice_as_long_costs_one_check():
    probe, calls = _by_length({1: 40.0, 2: 40.0})
    found = search_capacity_settled(probe, 10.0, 0.9, max_multiple=4)
    assert 39.0 < found.rate < 40.0 and found.multiple == 1 and found.settled is True
    assert [m for _, m in calls].count(2) == 1 and found.length_checks[0][:2] == (2, found.rate)


def test_a_capacity_a_longer_run_refuses_is_searched_again_on_it():
    probe, calls = _by_length({1: 40.0, 2: 36.0, 4: 34.0, 8: 34.0})
    found = search_capacity_settled(probe, 10.0, 0.9, max_multiple=4)
    assert 33.0 < found.rate < 34.0 and found.multiple == 4
    assert found.settled is False  # the longest run allowed moved the rate: not verified
    assert max(m for _, m in calls) == 4  # never longer than allowed
    assert [c[0] for c in found.length_checks] == [2, 4]
    refused = {(rate, multiple) for multiple, rate, _, _ in found.length_checks}
    assert len(calls) == len(set(calls)) and refused <= set(calls)  # no rate probed twice
    settled = search_capacity_settled(probe, 10.0, 0.9, max_multiple=8)
    assert settled.multiple == 4 and settled.settled is True and settled.rate == found.rate
    plain = search_capacity_settled(_by_length({1: 40.0})[0], 10.0, 0.9)
    assert plain.settled is None and plain.multiple == 1 and not plain.length_checks


def test_a_policy_failing_on_the_longer_run_has_no_capacity():
    def probe(rate: float, multiple: int) -> RunMetrics:
        return _fake(40.0, math.inf)(rate) if multiple == 1 else _run(1.0, 10, error="boom")
    found = search_capacity_settled(probe, 10.0, 0.9, max_multiple=2)
    assert found.rate == 0.0 and found.error == "boom"


def _run(attainment: float, window: int, growth: float = 0.0, resolution: float = 0.001,
         error=None) -> RunMetrics:
    base = RunMetrics.failed(workload([0.0], [1], [1]), "").to_dict()
    limit = SLO.max_backlog_growth + resolution
    base.update(error=error, attainment=attainment, window_requests=window,
                backlog_growth=growth, backlog_limit=limit, sustainable=growth <= limit,
                slo_kind="deadline")
    return RunMetrics.from_dict(base)


def test_pooled_runs_are_judged_as_one_long_run_not_an_average_of_runs():
    """A run that collapsed (overloaded) drags the pooled share down by its weight in requests;
    the backlog trend is pooled the same way, against the resolution of all the runs' work; a
    failed run fails the rate."""
    pooled = PooledRun((_run(1.0, 3000), _run(0.6, 1000)))
    assert pooled.attainment == pytest.approx(0.9) and pooled.meets(0.9)
    assert not pooled.meets(0.91)
    # one short run's noise (growth just over its own limit) does not refuse the pooled rate...
    noisy = PooledRun((_run(1.0, 3000), _run(1.0, 1000, growth=0.03, resolution=0.008)))
    assert not noisy.runs[1].sustainable and noisy.sustainable and noisy.meets(0.5)
    assert noisy.backlog_limit == pytest.approx(SLO.max_backlog_growth + 0.008 / 4)
    # ...a backlog that grows in every run does
    growing = PooledRun((_run(1.0, 3000, growth=0.05), _run(1.0, 1000, growth=0.05)))
    assert growing.backlog_growth == pytest.approx(0.05) and not growing.meets(0.5)
    # ...and a seed whose queue drains does not pay for one whose queue fills (measured: the
    # long-prompt deferrer on mixed, 6k, one seed at 2.2x the limit, another at -0.0136)
    cancelled = PooledRun((_run(1.0, 1000, growth=0.047), _run(1.0, 1000, growth=-0.047)))
    assert cancelled.backlog_growth == pytest.approx(0.0235) and not cancelled.meets(0.5)
    assert not PooledRun((_run(1.0, 3000), _run(1.0, 1000, error="bad"))).meets(0.5)
    assert not PooledRun(()).meets(0.0)


def test_pooled_capacity_of_one_run_is_its_capacity_and_pooling_is_not_averaging():
    cluster, slo = ClusterSpec(), SLO()
    wls = [make_workload("bursty", 600, seed=s) for s in (1, 2)]
    alone = [capacity(cluster, w, _policy("fixed_chunk"), slo, rel_tol=0.04).rate for w in wls]
    one = capacity_pooled(cluster, wls[:1], _policy("fixed_chunk"), slo, rel_tol=0.04)
    assert one.rate == pytest.approx(alone[0])
    both = capacity_pooled(cluster, wls, _policy("fixed_chunk"), slo, rel_tol=0.04)
    assert isinstance(both.at_capacity, PooledRun) and both.at_capacity.meets(0.9)
    assert len(both.at_capacity.runs) == 2
    # the pooled share at the pooled capacity is at least the target, whichever run fell short
    assert min(alone) * 0.9 < both.rate < max(alone) * 1.1
    with pytest.raises(ValueError):
        capacity_pooled(cluster, [], _policy("fixed_chunk"), slo)


def _policy(name: str):
    audit = (asset_dir("baselines") / "audit") / f"{name}.py"
    source = read_policy_file(audit if audit.is_file() else baseline_path(name))
    return lambda: load_policy(source)


def test_deferring_long_prompts_buys_no_capacity_past_the_baselines_sustainable_rate():
    """The audit's starvation policies keep their share high past the rate the cluster can
    sustain; their capacity must stop where the baseline's backlog starts to grow."""
    wl = make_workload("chat", 3000, seed=1)
    cluster = ClusterSpec()
    slo = SLO()
    # the baseline's highest sustainable rate, whatever its share
    sustainable = search_capacity(lambda r: metrics_at(cluster, wl, _policy("fixed_chunk"),
                                                       slo, r), wl.rate, share=0.0).rate
    for name in ("defer_long", "shortest_first"):
        found = capacity(cluster, wl, _policy(name), slo, start=sustainable)
        old = capacity(cluster, wl, _policy(name), SLO(kind="legacy"), start=sustainable)
        assert found.rate <= sustainable * 1.03, name
        assert old.rate > sustainable * 1.2, name  # what the share-only yardstick credited
        above = metrics_at(cluster, wl, _policy(name), slo, sustainable * 1.1)
        assert above.attainment >= 0.9 and not above.sustainable, name


def test_a_refused_request_is_starved_but_never_overtaken():
    wl = workload([0.0, 1.0], [1, 1], [1, 1])
    res = result([NAN, 4.0], [NAN, 4.0], horizon=30.0, refused=[True, False])
    m = run_metrics(wl, res, SLO(ttft_s=2.0, ttft_s_per_token=0.0, warmup=0.0))
    assert m.priority_inversions == 0 and m.starved == 1 and m.unfinished == 1
