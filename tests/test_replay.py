"""The trusted replay: it reads no views and checks well-formed entries fast, must replay an
honest log to exactly the live run, and must refuse every forged one in words (never crash)."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
from decision_logs import decisions, joined, record

from autotuner.policy import load_policy, read_policy_file, read_policy_source
from autotuner.resources import baseline_path
from autotuner.sim.api import ClusterView, RequestView
from autotuner.sim.engine import ClusterSpec, simulate
from autotuner.sim.metrics import SLO, run_metrics
from autotuner.sim.replay import KeptLog, ReplayPolicy
from autotuner.sim.workload import make_workload


class ViewReadingReplay(ReplayPolicy):
    """The same replay, but the simulator builds every view for it (the path before views were
    skipped): what the view-skipping path must equal."""

    reads_views = True


def _policy(name: str):
    return load_policy(read_policy_file(baseline_path(name)), {})


def _same_run(a, b) -> None:
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), \
                f.name
        elif isinstance(x, tuple):
            assert all(np.array_equal(p, q, equal_nan=p.dtype.kind == "f")
                       for p, q in zip(x, y, strict=True)), f.name
        else:
            assert x == y, f.name


@pytest.mark.parametrize("name", ["fixed_chunk", "sarathi_shrinking", "prefix_aware"])
@pytest.mark.parametrize("cluster", [ClusterSpec(replicas=2),
                                     ClusterSpec(replicas=2, max_num_seqs=6),
                                     ClusterSpec(replicas=2, gpu_memory_utilization=0.25)],
                         ids=["default", "max_num_seqs", "kv_pressure"])
def test_replay_without_views_equals_replay_with_views_and_the_live_run(name, cluster):
    wl = make_workload("multiturn", 300, rate=12.0, seed=3)
    log = record(cluster, wl, _policy(name))
    live = simulate(cluster, wl, _policy(name))  # recording changes nothing in the run
    _same_run(live, simulate(cluster, wl, _policy(name), log=KeptLog()))
    replay = ReplayPolicy(list(log))
    skipped = simulate(cluster, wl, replay)
    viewed = simulate(cluster, wl, ViewReadingReplay(list(log)))
    assert skipped.error is None and skipped.policy_calls == len(decisions(log)) == replay.pos
    assert replay.unused == 0
    _same_run(skipped, viewed)
    _same_run(skipped, live)
    slo = SLO()
    assert repr(run_metrics(wl, skipped, slo)) == repr(run_metrics(wl, viewed, slo))


@pytest.fixture(scope="module")
def chat_log():
    cluster, wl = ClusterSpec(replicas=2), make_workload("chat", 40, seed=2)
    log = record(cluster, wl, _policy("fixed_chunk"))
    assert log[:5] == [-1, 512, 1, 0, 512]  # route to 0, then partition 512: one chunk [0, 512]
    return cluster, wl, log


# Forged logs (the stream refuses anything but 64-bit integers before the replay, as garbage
# output; bools pass as ints), each put in place of the chat log's first two decisions, and what
# the replay says of them.
FORGERIES = {
    "budget a bool": ([-1, True, 1, 0, 512],
                      "partition(replica 0 at t=0.016s): budget must be an integer, got bool"),
    "chunk id a bool": ([-1, 512, 1, False, 1], "partition(replica 0 at t=0.016s): chunks[0] "
                                                "request id must be an integer, got bool"),
    "chunk id unknown": ([-1, 512, 1, 10**6, 1], "partition(replica 0 at t=0.016s): request "
                                                 "1000000 is not waiting on this replica"),
    "chunk of no tokens": ([-1, 512, 1, 0, 0], "partition(replica 0 at t=0.016s): chunk of 0 "
                                               "tokens for request 0 (1..2605 allowed)"),
    "chunk too long": ([-1, 512, 1, 0, 10**7], "partition(replica 0 at t=0.016s): chunk of "
                                               "10000000 tokens for request 0 (1..2605 allowed)"),
    "chunk twice": ([-1, 512, 2, 0, 1, 0, 1],
                    "partition(replica 0 at t=0.016s): request 0 appears in two chunks"),
    "over the budget": ([-1, 1, 1, 0, 512], "partition(replica 0 at t=0.016s): chunk tokens 512 "
                                            "exceed the budget 1 minus 0 decodes"),
    "route past the replicas": ([-100], "route(request 0 at t=0.016s): replica 99 does not "
                                        "exist (the cluster has 0..1)"),
    "route past 64 bits": ([-2**63], "route(request 0 at t=0.016s): replica (a 19-digit "
                                     "number) does not exist (the cluster has 0..1)"),
    "partition where a route is due": ([512, 0], "route(request 0): the worker's decision log "
                                                 "is out of step at entry 0"),
    "route where a partition is due": ([-1, -1], "partition(replica 0 at t=0.016s): the "
                                                 "worker's decision log is out of step at entry 1"),
    "too many chunks": ([-1, 512, 100_001], "partition: malformed log entry 1"),
    "chunk count negative": ([-1, 512, -1, 0, 512], "partition: malformed log entry 1"),
}
CUT_SHORT = {  # the whole log
    "entry cut short": ([-1, 512, 1, 0], "partition: malformed log entry 1"),
    "budget alone": ([-1, 512], "partition: malformed log entry 1"),
    "log ends early": (None, "partition(replica 0 at t=2.233s): the worker's decision log ended "
                             "early"),
}


@pytest.mark.parametrize("case", sorted(FORGERIES) + sorted(CUT_SHORT))
@pytest.mark.parametrize("replay", [ReplayPolicy, ViewReadingReplay], ids=["no_views", "views"])
def test_every_forged_log_is_refused_in_words(case, replay, chat_log):
    cluster, wl, log = chat_log
    if case in FORGERIES:
        head, words = FORGERIES[case]
        forged = head + log[5:]
    else:
        forged, words = CUT_SHORT[case]
        if forged is None:
            forged = joined(decisions(log)[: len(decisions(log)) // 2])
    assert simulate(cluster, wl, replay(forged)).error == words


def test_a_forged_request_id_under_max_num_seqs_is_refused_not_a_crash():
    """It raised IndexError out of the trusted replay when the cluster limits running requests."""
    cluster, wl = ClusterSpec(replicas=2, max_num_seqs=4), make_workload("chat", 40, seed=2)
    entries = decisions(record(cluster, wl, _policy("fixed_chunk")))
    first = next(i for i, e in enumerate(entries) if e[0] >= 0 and e[1])
    entries[first] = [entries[first][0], 1, 10**6, 1]
    error = simulate(cluster, wl, ReplayPolicy(joined(entries))).error
    assert error is not None and error.endswith("request 1000000 is not waiting on this replica")


def test_an_illegal_decision_is_in_the_log_for_the_replay_to_refuse():
    """Logged as shaped, before the state checks: the trusted replay sees it and refuses it in
    the words the live run used."""
    cluster, wl = ClusterSpec(replicas=2), make_workload("chat", 40, seed=2)
    code = baseline_path("fixed_chunk").read_text().replace(
        "    return (budget, tuple(chunks))",
        "    if replica.now > 1.0:\n        return (budget, ((10**6, 1),))\n"
        "    return (budget, tuple(chunks))")
    kept = KeptLog()
    live = simulate(cluster, wl, load_policy(read_policy_source(code, "forger.py"), {}), log=kept)
    assert live.error is not None and "request 1000000 is not waiting" in live.error
    assert decisions(kept.ints)[-1][2:] == [10**6, 1]
    assert simulate(cluster, wl, ReplayPolicy(kept.ints)).error == live.error


def test_an_unshapely_answer_is_refused_and_not_logged():
    """A route that is not an integer is refused for what it is, and never reaches the log."""

    class Complex:
        def partition(self, replica):
            raise AssertionError("not asked: the route comes first")

        def route(self, request: RequestView, cluster: ClusterView):
            return complex(1, 0)

    kept = KeptLog()
    result = simulate(ClusterSpec(replicas=4), make_workload("chat", 10, seed=1), Complex(),
                      log=kept)
    assert result.error is not None and "replica must be an integer, got complex" in result.error
    assert kept.ints == []


def test_a_garbled_flat_log_never_crashes_the_replay(chat_log):
    """Any list of 64-bit ints (what the stream lets through) replays to a run or a refusal:
    ints changed, inserted or dropped anywhere, never an exception out of the simulator."""
    cluster, wl, flat = chat_log
    rng = np.random.default_rng(12)
    values = [0, 1, -1, 2, 511, 512, 10**6, -(2**63), 2**63 - 1, 100_000, 100_001]
    refused = 0
    for _ in range(300):
        forged = list(flat)
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(0, len(forged)))
            how = int(rng.integers(0, 3))
            value = values[int(rng.integers(0, len(values)))]
            if how == 0:
                forged[at] = value
            elif how == 1:
                forged.insert(at, value)
            else:
                del forged[at]
        replay = ReplayPolicy(forged)
        result = simulate(cluster, wl, replay)  # raises nothing
        refused += result.error is not None
        assert replay.unused >= 0
    assert refused > 200  # most garbling is caught; the rest scores as the decisions it holds
