"""The promotion gate: paired capacity on held-out instances, bootstrap bound, SLO guard, records.

The simulations here run trusted files (the shipped baselines and variants of them) in process,
through the same Evaluator and capacity search the campaign uses, on small multiturn instances
(where routing matters and runs are short).
"""

from __future__ import annotations

import io
import json
import math

import pytest

from autotuner.config import load_config
from autotuner.gate import (
    PolicyRef,
    bake_params,
    bootstrap_bound,
    compare,
    run_gate,
    slo_check,
    write_promotion,
)
from autotuner.policy import read_policy_file, read_policy_source
from autotuner.resources import baseline_path
from autotuner.review import reproduce
from autotuner.scoring import Evaluator, Instance, NoCache, in_process

FIXED = baseline_path("fixed_chunk").read_text()
# Same partition, least-outstanding routing: the textbook fix for round robin on long sessions.
LEAST = FIXED.replace(
    "def route(request, cluster, params):\n    return request.id % len(cluster.replicas)",
    "def route(request, cluster, params):\n"
    "    best = min(cluster.replicas, key=lambda r: (r.outstanding, r.waiting_tokens, r.replica))\n"
    "    return best.replica",
)
TUNED = {"chunk_size": 2048}


@pytest.fixture(scope="module")
def cfg():
    return load_config(**{"workloads.scenarios": ["multiturn"], "workloads.screen": [],
                          "workloads.requests": 250, "workloads.scenario_requests": {},
                          "gate.bootstrap": 2000, "gate.capacity_rel_tol": 0.04})


@pytest.fixture(scope="module")
def instances(cfg):
    return [Instance("multiturn", seed, 250) for seed in cfg.workloads.heldout_seeds]


@pytest.fixture(scope="module")
def evaluator():
    ev = Evaluator(NoCache(), 1, in_process)
    yield ev
    ev.close()


def test_least_outstanding_really_differs():
    assert LEAST != FIXED
    assert read_policy_source(LEAST).defines == ("partition", "route")


def test_bootstrap_bound():
    mean, lower = bootstrap_bound([0.1] * 6, confidence=0.95, samples=1000, seed=0)
    assert mean == pytest.approx(0.1) and lower == pytest.approx(0.1)
    gains = [0.3, -0.1, 0.2, 0.25, 0.0, 0.15]
    a = bootstrap_bound(gains, confidence=0.95, samples=5000, seed=1)
    assert a == bootstrap_bound(gains, confidence=0.95, samples=5000, seed=1)
    assert a[1] < a[0] == pytest.approx(sum(gains) / 6)
    assert bootstrap_bound([0.5], confidence=0.95, samples=100, seed=0)[1] == -math.inf
    assert math.isnan(bootstrap_bound([], confidence=0.95, samples=100, seed=0)[0])


def test_compare_pairs_by_instance(cfg):
    comp = compare({"a": 12.0, "b": 24.0}, {"a": 10.0, "b": 20.0, "c": 5.0}, "baseline",
                   cfg.gate, 0)
    assert comp.gains == {"a": pytest.approx(0.2), "b": pytest.approx(0.2)}
    assert comp.passed and comp.lower_bound == pytest.approx(0.2)
    flat = compare({"a": 10.0, "b": 20.0}, {"a": 10.0, "b": 20.0}, "baseline", cfg.gate, 0)
    assert not flat.passed and flat.mean_gain == 0.0


def test_slo_check_flags_regressions_beyond_the_tolerance():
    base = {"a": {"attainment": 0.9, "ttft_ok": 0.95, "tpot_ok": 0.95}}
    ok, reasons = slo_check({"a": {"attainment": 0.89, "ttft_ok": 0.99, "tpot_ok": 0.94}}, base,
                            0.02)
    assert reasons == [] and ok["attainment"]["delta"] == pytest.approx(-0.01)
    _, reasons = slo_check({"a": {"attainment": 0.95, "ttft_ok": 0.99, "tpot_ok": 0.90}}, base,
                           0.02)
    assert len(reasons) == 1 and "tpot_ok" in reasons[0]
    # a share the evaluation did not report is skipped, not treated as zero
    _, reasons = slo_check({"a": {"attainment": 0.95}}, {"a": {"attainment": 0.9}}, 0.02)
    assert reasons == []


def test_a_candidate_identical_to_the_baseline_is_never_promoted(cfg, instances, evaluator):
    base = PolicyRef("fixed_chunk.py", FIXED, TUNED)
    same = PolicyRef("c0001.py", FIXED + "\n# a comment changes nothing\n", dict(TUNED))
    result = run_gate(evaluator, cfg, "c0001", same, base, instances)
    comp = result.baseline
    assert not result.passed
    assert all(g == 0.0 for g in comp.gains.values())
    assert comp.lower_bound < cfg.gate.margin
    assert any("lower bound" in r for r in result.reasons)


def test_a_clearly_better_candidate_is_promoted_and_must_then_be_beaten(
        cfg, instances, evaluator, tmp_path):
    base = PolicyRef("fixed_chunk.py", FIXED, TUNED)
    better = PolicyRef("c0002.py", LEAST, dict(TUNED))
    result = run_gate(evaluator, cfg, "c0002", better, base, instances)
    assert result.passed, result.reasons
    comp = result.baseline
    assert comp.lower_bound >= cfg.gate.margin and comp.mean_gain > 0.2
    assert set(comp.capacities) == {i.label for i in instances}
    assert "attainment" in result.slo and result.per_family["multiturn"] > 0.2

    # the same policy again must beat the promoted one, and cannot
    again = PolicyRef("c0003.py", LEAST + "\n", dict(TUNED))
    second = run_gate(evaluator, cfg, "c0003", again, base, instances, promoted=better,
                      promoted_id="c0002")
    assert second.baseline.passed
    assert not second.passed
    assert second.comparisons[1].reference == "c0002"
    assert any("c0002" in r for r in second.reasons)

    # the promotion record reproduces the claim with one command
    policy_path, record_path = write_promotion(tmp_path, cfg, "c0002", better, base,
                                               "fixed_chunk.py", result, None)
    record = json.loads(record_path.read_text())
    assert record["reproduce"] == f"autotuner replay {record_path}"
    assert record["params"] == TUNED and record["baseline"]["params"] == TUNED
    assert len(record["instances"]) == len(instances)
    assert {"autotuner", "python", "numpy", "optuna"} <= set(record["versions"])
    baked = read_policy_file(policy_path)
    assert baked.defaults() == TUNED
    out = io.StringIO()
    assert reproduce(record_path, out=out, simulator=in_process) == 0
    assert "capacities identical" in out.getvalue()


def test_bake_params_keeps_the_file_and_sets_defaults():
    code = (
        '"""Doc."""\n\n# keep me\nTUNABLES = {\n'
        '    "a": {"type": "int", "low": 1, "high": 100, "default": 5},  # note\n'
        '    "b": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5, "log": False},\n'
        '}\n\n\ndef route(request, cluster, params):\n    return 0\n'
    )
    baked = bake_params(code, {"a": 42, "b": 0.125, "chunk_size": 7000})
    defaults = read_policy_source(baked).defaults()
    assert defaults["a"] == 42 and defaults["b"] == 0.125
    assert "# keep me" in baked and "# note" in baked
    # the chunk size a route-only file inherits is declared in the file, with its tuned value
    assert defaults["chunk_size"] == 7000 and '"chunk_size"' in baked
    assert bake_params(code, {}) == code
    empty = "TUNABLES = {}\n\n\ndef route(request, cluster, params):\n    return 0\n"
    baked = bake_params(empty, {"chunk_size": 1024})
    assert read_policy_source(baked).defaults() == {"chunk_size": 1024}
    assert baked.endswith("def route(request, cluster, params):\n    return 0\n")
