"""Policy files: tunables read without running the file, loading, fallback, the runtime fence."""

from __future__ import annotations

import pytest

from autotuner.policy import (
    PolicyFileError,
    load_policy,
    read_policy_file,
    read_policy_source,
)
from autotuner.resources import asset_dir

ROUTE_ONLY = "TUNABLES = {}\n\ndef route(request, cluster, params):\n    return 0\n"


def test_every_baseline_reads_and_loads():
    for path in sorted(asset_dir("baselines").glob("*.py")):
        source = read_policy_file(path)
        policy = load_policy(source)
        assert callable(policy.partition) and callable(policy.route)


def test_tunables_are_read_without_execution(tmp_path):
    code = ("raise SystemExit('executed!')\n"
            "TUNABLES = {'k': {'type': 'float', 'low': 0.5, 'high': 2.0, 'default': 1.0,"
            " 'log': True}}\n"
            "def route(request, cluster, params):\n    return 0\n")
    source = read_policy_source(code)
    t = source.tunables[0]  # then the fallback partition's chunk_size
    assert (t.name, t.type, t.low, t.high, t.default, t.log) == ("k", "float", 0.5, 2.0, 1.0, True)


@pytest.mark.parametrize(
    "tunables,needle",
    [
        ("TUNABLES = 5", "must be a dict"),
        ("TUNABLES = {'a': {'type': 'int', 'low': 1, 'high': 0, 'default': 1}}", "low < high"),
        ("TUNABLES = {'a': {'type': 'int', 'low': 0, 'high': 9, 'default': 10}}", "default"),
        ("TUNABLES = {'a': {'type': 'str', 'low': 0, 'high': 9, 'default': 1}}", "'type'"),
        ("TUNABLES = {'a': {'type': 'int', 'low': 0, 'high': 9, 'default': 1, 'log': True}}",
         "low must be > 0"),
        ("TUNABLES = {'a': {'type': 'int', 'low': 0.5, 'high': 9, 'default': 1}}", "whole"),
        ("TUNABLES = {'a': {'type': 'int', 'low': 0, 'high': 9, 'default': 1, 'x': 1}}",
         "unknown keys"),
        ("TUNABLES = {'a': {'type': 'int', 'low': 0, 'high': 9, 'default': 1},"
         " 'a': {'type': 'int', 'low': 0, 'high': 9, 'default': 1}}", "twice"),
        ("TUNABLES = {[1]: 2}", "literal"),
        ("TUNABLES = dict()", "literal"),
        ("X = 1", "must declare TUNABLES"),
    ],
)
def test_bad_tunables_are_refused_with_reason(tunables, needle):
    code = tunables + "\n\ndef route(request, cluster, params):\n    return 0\n"
    with pytest.raises(PolicyFileError, match=needle):
        read_policy_source(code)


def test_no_decision_point_and_syntax_errors():
    with pytest.raises(PolicyFileError, match="neither"):
        read_policy_source("TUNABLES = {}\n")
    with pytest.raises(PolicyFileError, match="line 2: syntax error"):
        read_policy_source("TUNABLES = {}\ndef route(:\n")
    with pytest.raises(PolicyFileError, match="UTF-8"):
        read_policy_source("TUNABLES = {}  # \udc80\n")


def test_params_resolution():
    source = read_policy_source(
        "TUNABLES = {'c': {'type': 'int', 'low': 1, 'high': 10, 'default': 3}}\n" + ROUTE_ONLY[14:]
    )
    assert source.resolve_params({}) == {"c": 3, "chunk_size": 512}
    assert source.resolve_params({"c": 7.0})["c"] == 7
    with pytest.raises(PolicyFileError, match="outside"):
        source.resolve_params({"c": 11})
    with pytest.raises(PolicyFileError, match="no tunable named 'd'"):
        source.resolve_params({"d": 1})


def test_missing_decision_point_falls_back_to_the_baseline_file():
    policy = load_policy(read_policy_source(ROUTE_ONLY))
    assert policy.route(None, None) == 0
    assert policy.partition.__name__ == "<lambda>"  # the fixed-chunk file's partition, bound


def test_runtime_fence_refuses_what_the_check_refuses():
    code = ("TUNABLES = {}\n\ndef route(request, cluster, params):\n"
            "    return open('/etc/passwd')\n")
    policy = load_policy(read_policy_source(code))
    with pytest.raises(NameError):
        policy.route(None, None)
    with pytest.raises(ImportError, match="not allowed"):
        load_policy(read_policy_source("import os\n" + ROUTE_ONLY))


def test_route_only_policy_inherits_the_fallback_tunables():
    source = read_policy_source(ROUTE_ONLY)
    assert [t.name for t in source.tunables] == ["chunk_size"]
    assert source.defines == ("route",)
    from autotuner.sim.engine import ClusterSpec, simulate
    from autotuner.sim.workload import make_workload

    wl = make_workload("chat", 50, seed=0)
    small = simulate(ClusterSpec(replicas=1), wl, load_policy(source, {"chunk_size": 64}))
    large = simulate(ClusterSpec(replicas=1), wl, load_policy(source, {"chunk_size": 4096}))
    assert small.policy_calls > large.policy_calls  # the value reached the fallback partition


def test_own_tunable_shadows_the_inherited_one():
    code = ("TUNABLES = {'chunk_size': {'type': 'int', 'low': 1, 'high': 9, 'default': 2}}\n"
            + ROUTE_ONLY[14:])
    (t,) = read_policy_source(code).tunables
    assert t.high == 9


# ------------------------------------------------------------------------------ decision reasons
def _policy_error(fn, *args) -> str:
    from autotuner.sim.api import PolicyError

    with pytest.raises(PolicyError) as info:
        fn(*args)
    return str(info.value)


def test_a_non_integer_route_is_named_for_what_it_is():
    from autotuner.sim.api import coerce_route

    assert "replica must be an integer, got complex" in _policy_error(
        coerce_route, complex(1, 0), 4, "route")


@pytest.mark.parametrize("value, shown", [
    (10**3999, "replica (a 4000-digit number) does not exist"),
    (10**3999 - 1, "replica (a 3999-digit number) does not exist"),
    (-(10**4999), "replica (minus a 5000-digit number) does not exist"),
    (10**17, f"replica {10**17} does not exist"),
], ids=["4000-digits", "3999-digits", "minus-5000-digits", "18-digits"])
def test_a_huge_replica_index_gives_a_short_true_reason(value, shown):
    from autotuner.sim.api import coerce_route

    reason = _policy_error(coerce_route, value, 4, "route")
    assert shown in reason and len(reason) < 200


def test_a_huge_budget_or_chunk_gives_a_short_true_reason():
    from autotuner.sim.api import coerce_partition

    reason = _policy_error(coerce_partition, (10**4999, ()), "partition")
    assert "budget (a 5000-digit number) does not fit in 64 bits" in reason
    assert len(reason) < 200
    reason = _policy_error(coerce_partition, (512, ((0, 2**70),)), "partition")
    assert "chunks[0] tokens (a 22-digit number) does not fit in 64 bits" in reason
    assert coerce_partition((2**63 - 1, ((0, 1),)), "partition")[0] == 2**63 - 1


def test_a_huge_exception_message_is_cut():
    from autotuner.sim.api import MAX_RULE_CHARS, PolicyError

    error = PolicyError("route(request 0)", "raised ValueError: " + "y" * 10_000_000)
    assert len(str(error)) < MAX_RULE_CHARS + 50 and str(error).endswith("...")
