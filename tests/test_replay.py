"""The trusted replay's fast paths: it reads no views and checks well-formed entries fast, and
must judge every log exactly as the full path does (same run, same refusal, word for word)."""

from __future__ import annotations

import copy
from dataclasses import fields

import numpy as np
import pytest

from autotuner.policy import load_policy, read_policy_file, read_policy_source
from autotuner.resources import baseline_path
from autotuner.sim.engine import ClusterSpec, simulate
from autotuner.sim.metrics import SLO, run_metrics
from autotuner.sim.replay import FlatReplay, KeptLog, RecordingPolicy, ReplayPolicy, flatten
from autotuner.sim.workload import make_workload


class ViewReadingReplay(ReplayPolicy):
    """The same replay, but the simulator builds every view for it (the path before views were
    skipped): what the view-skipping path must equal."""

    reads_views = True


def _record(name: str, cluster: ClusterSpec, wl) -> list:
    rec = RecordingPolicy(load_policy(read_policy_file(baseline_path(name)), {}))
    assert simulate(cluster, wl, rec).error is None
    return rec.log


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
    log = _record(name, cluster, wl)
    live = simulate(cluster, wl, load_policy(read_policy_file(baseline_path(name)), {}))
    skipped = simulate(cluster, wl, ReplayPolicy(copy.deepcopy(log)))
    viewed = simulate(cluster, wl, ViewReadingReplay(copy.deepcopy(log)))
    flat = simulate(cluster, wl, FlatReplay(flatten(log)))
    assert skipped.error is None and skipped.policy_calls == len(log)
    _same_run(skipped, viewed)
    _same_run(skipped, live)
    _same_run(skipped, flat)
    slo = SLO()
    assert repr(run_metrics(wl, skipped, slo)) == repr(run_metrics(wl, viewed, slo))


# What the replay said of each malformed entry before its fast paths existed, word for word
# (fixed_chunk's log of 40 chat requests on two replicas; entry 0 routes, entry 1 partitions).
REFUSALS = {
    "budget a bool": "partition(replica 0 at t=0.016s): budget must be an integer, got bool",
    "budget a float": "partition(replica 0 at t=0.016s): budget must be a whole number, got 512.5",
    "budget a string": "partition(replica 0 at t=0.016s): budget must be an integer, got str",
    "budget negative": "partition(replica 0 at t=0.016s): budget must be >= 0, got -1",
    "budget past 64 bits": "partition(replica 0 at t=0.016s): budget (a 22-digit number) does "
                           "not fit in 64 bits",
    "chunks not a list": "partition(replica 0 at t=0.016s): chunks must be a tuple of (request "
                         "id, tokens), got NoneType",
    "chunks a dict": "partition(replica 0 at t=0.016s): chunks must be a tuple of (request id, "
                     "tokens), got dict",
    "chunk not a pair": "partition(replica 0 at t=0.016s): chunks[0] must be a (request id, "
                        "tokens) pair",
    "chunk a string": "partition(replica 0 at t=0.016s): chunks[0] must be a (request id, "
                      "tokens) pair",
    "chunk id a bool": "partition(replica 0 at t=0.016s): chunks[0] request id must be an "
                       "integer, got bool",
    "chunk tokens a fraction": "partition(replica 0 at t=0.016s): chunks[0] tokens must be a "
                               "whole number, got 2.5",
    "chunk tokens past 64 bits": "partition(replica 0 at t=0.016s): chunks[0] tokens (minus a "
                                 "20-digit number) does not fit in 64 bits",
    "chunk id unknown": "partition(replica 0 at t=0.016s): request 1000000 is not waiting on "
                        "this replica",
    "chunk of no tokens": "partition(replica 0 at t=0.016s): chunk of 0 tokens for request 0 "
                          "(1..2605 allowed)",
    "chunk too long": "partition(replica 0 at t=0.016s): chunk of 10000000 tokens for request 0 "
                      "(1..2605 allowed)",
    "chunk twice": "partition(replica 0 at t=0.016s): request 0 appears in two chunks",
    "too many chunks": "partition(replica 0 at t=0.016s): too many chunks (100,001)",
    "over the budget": "partition(replica 0 at t=0.016s): chunk tokens 512 exceed the budget 1 "
                       "minus 0 decodes",
    "route past the replicas": "route(request 0 at t=0.016s): replica 99 does not exist (the "
                               "cluster has 0..1)",
    "route a bool": "route(request 0 at t=0.016s): replica must be an integer, got bool",
    "route a string": "route(request 0 at t=0.016s): replica must be an integer, got str",
    "route negative": "route(request 0 at t=0.016s): replica -1 does not exist (the cluster "
                      "has 0..1)",
    "route a fraction": "route(request 0 at t=0.016s): replica must be a whole number, got 0.5",
    "partition entry too long": "partition: malformed log entry 1",
    "partition entry too short": "partition: malformed log entry 1",
    "partition where a route is due": "route(request 0): the worker's decision log is out of "
                                      "step at entry 0",
    "route where a partition is due": "partition(replica 0 at t=0.016s): the worker's decision "
                                      "log is out of step at entry 1",
    "entry not a list": "partition(replica 0 at t=0.016s): the worker's decision log is out of "
                        "step at entry 1",
    "entry empty": "partition(replica 0 at t=0.016s): the worker's decision log is out of step "
                   "at entry 1",
    "route entry too long": "route: malformed log entry 0",
    "log ends early": "partition(replica 0 at t=2.233s): the worker's decision log ended early",
}

P, R = 1, 0  # the log's first partition (one chunk: [0, 512]) and first route
VALUES = {
    "budget a bool": (P, 1, True), "budget a float": (P, 1, 512.5),
    "budget a string": (P, 1, "512"), "budget negative": (P, 1, -1),
    "budget past 64 bits": (P, 1, 2**70), "chunks not a list": (P, 2, None),
    "chunks a dict": (P, 2, {}), "chunk not a pair": (P, 2, [[0, 1, 2]]),
    "chunk a string": (P, 2, ["ab"]), "chunk id a bool": (P, 2, [[False, 1]]),
    "chunk tokens a fraction": (P, 2, [[0, 2.5]]),
    "chunk tokens past 64 bits": (P, 2, [[0, -2**64]]),
    "chunk id unknown": (P, 2, [[10**6, 1]]), "chunk of no tokens": (P, 2, [[0, 0]]),
    "chunk too long": (P, 2, [[0, 10**7]]), "chunk twice": (P, 2, [[0, 1], [0, 1]]),
    "too many chunks": (P, 2, [[0, 1]] * 100_001), "over the budget": (P, 1, 1),
    "route past the replicas": (R, 1, 99), "route a bool": (R, 1, True),
    "route a string": (R, 1, "1"), "route negative": (R, 1, -1), "route a fraction": (R, 1, 0.5),
}
SHAPES = {
    "partition entry too long": lambda log: log[P].append(0),
    "partition entry too short": lambda log: log[P].pop(),
    "partition where a route is due": lambda log: log.__setitem__(R, ["p", 1, []]),
    "route where a partition is due": lambda log: log.__setitem__(P, ["r", 0]),
    "entry not a list": lambda log: log.__setitem__(P, {"p": 1}),
    "entry empty": lambda log: log.__setitem__(P, []),
    "route entry too long": lambda log: log[R].append(1),
    "log ends early": lambda log: log.__delitem__(slice(len(log) // 2, None)),
}


@pytest.fixture(scope="module")
def chat_log():
    cluster, wl = ClusterSpec(replicas=2), make_workload("chat", 40, seed=2)
    log = _record("fixed_chunk", cluster, wl)
    assert log[R] == ["r", 0] and log[P] == ["p", 512, [[0, 512]]]
    return cluster, wl, log


@pytest.mark.parametrize("case", sorted(REFUSALS))
@pytest.mark.parametrize("replay", [ReplayPolicy, ViewReadingReplay], ids=["no_views", "views"])
def test_every_malformed_entry_is_refused_in_the_same_words(case, replay, chat_log):
    cluster, wl, log = chat_log
    forged = copy.deepcopy(log)
    if case in VALUES:
        entry, field, value = VALUES[case]
        forged[entry][field] = value
    else:
        SHAPES[case](forged)
    assert simulate(cluster, wl, replay(forged)).error == REFUSALS[case]


def test_a_forged_request_id_under_max_num_seqs_is_refused_not_a_crash():
    """It raised IndexError out of the trusted replay when the cluster limits running requests."""
    cluster, wl = ClusterSpec(replicas=2, max_num_seqs=4), make_workload("chat", 40, seed=2)
    log = _record("fixed_chunk", cluster, wl)
    first = next(i for i, e in enumerate(log) if e[0] == "p" and e[2])
    log[first][2] = [[10**6, 1]]
    error = simulate(cluster, wl, ReplayPolicy(log)).error
    assert error is not None and error.endswith("request 1000000 is not waiting on this replica")


@pytest.mark.parametrize("name", ["fixed_chunk", "prefix_aware"])
def test_the_simulators_own_log_is_the_recorded_log_flattened(name):
    """What the sandbox worker sends (the simulator's ``DecisionLog``) is what wrapping the
    policy records, in the flat form, and it replays to the same run."""
    cluster, wl = ClusterSpec(replicas=2), make_workload("mixed", 200, seed=4)
    kept = KeptLog()
    live = simulate(cluster, wl, load_policy(read_policy_file(baseline_path(name)), {}),
                    log=kept)
    assert live.error is None and kept.ints == flatten(_record(name, cluster, wl))
    _same_run(live, simulate(cluster, wl, FlatReplay(kept.ints)))


def test_an_illegal_decision_is_in_the_simulators_log_for_the_replay_to_refuse():
    """Logged as shaped, before the state checks: the trusted replay sees it and refuses it in
    the words the live run used (an unshapely one is not logged, as wrapping did not)."""
    cluster, wl = ClusterSpec(replicas=2), make_workload("chat", 40, seed=2)
    code = baseline_path("fixed_chunk").read_text().replace(
        "    return (budget, tuple(chunks))",
        "    if replica.now > 1.0:\n        return (budget, ((10**6, 1),))\n"
        "    return (budget, tuple(chunks))")
    policy = load_policy(read_policy_source(code, "forger.py"), {})
    kept, recorded = KeptLog(), RecordingPolicy(load_policy(read_policy_source(code, "f.py"), {}))
    live = simulate(cluster, wl, policy, log=kept)
    assert live.error is not None and "request 1000000 is not waiting" in live.error
    assert simulate(cluster, wl, recorded).error == live.error
    assert kept.ints == flatten(recorded.log)
    assert simulate(cluster, wl, FlatReplay(kept.ints)).error == live.error


# The flat wire form of the same forgeries (sandbox/worker.py sends it; anything but 64-bit
# integers is refused before the replay, as garbage output): the words the replay says.
# The chat log starts: route 0 (-1), then partition 512 with one chunk [0, 512].
FLAT_FORGERIES = {
    "budget a bool": ([-1, True, 1, 0, 512], REFUSALS["budget a bool"]),
    "chunk id a bool": ([-1, 512, 1, False, 1], REFUSALS["chunk id a bool"]),
    "chunk id unknown": ([-1, 512, 1, 10**6, 1], REFUSALS["chunk id unknown"]),
    "chunk of no tokens": ([-1, 512, 1, 0, 0], REFUSALS["chunk of no tokens"]),
    "chunk too long": ([-1, 512, 1, 0, 10**7], REFUSALS["chunk too long"]),
    "chunk twice": ([-1, 512, 2, 0, 1, 0, 1], REFUSALS["chunk twice"]),
    "over the budget": ([-1, 1, 1, 0, 512], REFUSALS["over the budget"]),
    "route past the replicas": ([-100], REFUSALS["route past the replicas"]),
    "route past 64 bits": ([-2**63], "route(request 0 at t=0.016s): replica (a 19-digit "
                                     "number) does not exist (the cluster has 0..1)"),
    "partition where a route is due": ([512, 0], REFUSALS["partition where a route is due"]),
    "route where a partition is due": ([-1, -1], REFUSALS["route where a partition is due"]),
    "too many chunks": ([-1, 512, 100_001], "partition: malformed log entry 1"),
    "chunk count negative": ([-1, 512, -1, 0, 512], "partition: malformed log entry 1"),
    "entry cut short": ([-1, 512, 1, 0], "partition: malformed log entry 1"),
    "budget alone": ([-1, 512], "partition: malformed log entry 1"),
}


@pytest.mark.parametrize("case", sorted(FLAT_FORGERIES))
def test_every_forged_flat_log_is_refused_in_words(case, chat_log):
    cluster, wl, log = chat_log
    head, words = FLAT_FORGERIES[case]
    assert flatten(log)[:5] == [-1, 512, 1, 0, 512]
    forged = head if case in ("entry cut short", "budget alone") else head + flatten(log)[5:]
    assert simulate(cluster, wl, FlatReplay(forged)).error == words


def test_a_garbled_flat_log_never_crashes_the_replay(chat_log):
    """Any list of 64-bit ints (what the stream lets through) replays to a run or a refusal:
    ints changed, inserted or dropped anywhere, never an exception out of the simulator."""
    cluster, wl, log = chat_log
    flat = flatten(log)
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
        replay = FlatReplay(forged)
        result = simulate(cluster, wl, replay)  # raises nothing
        refused += result.error is not None
        assert replay.unused >= 0
    assert refused > 200  # most garbling is caught; the rest scores as the decisions it holds
