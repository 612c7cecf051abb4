"""The promotion gate: the claim judged at its own capacity, paired geometric-mean capacity on
held-out instances with a bootstrap bound, regressions, the reference bar, records.

The simulations here run trusted files (the shipped baselines and variants of them) in process,
through the same Evaluator and capacity search the campaign uses, on small multiturn instances
(where routing matters and runs are short).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest

from autotuner.config import load_config
from autotuner.gate import (
    CLAIM_CONDITIONS,
    GateInputError,
    PolicyRef,
    bake_params,
    bootstrap_bound,
    claim_conditions,
    compare,
    family_gains,
    regression_condition,
    run_gate,
    write_promotion,
)
from autotuner.policy import read_policy_file, read_policy_source
from autotuner.resources import baseline_path
from autotuner.review import gate_conditions_text, reproduce, reproduction_text
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
# Routing by waiting prefill work net of prefix-cache hits (FCFS batching): an honest gain on
# multi-turn sessions that holds at its own claim. (Least-outstanding routing gains capacity too,
# but at its claim its p99 TTFT/deadline is worse than the baseline's, and the gate says so.)
HONEST_PATH = Path(__file__).resolve().parent / "gaming" / "honest_cache_aware.py"
HONEST = HONEST_PATH.read_text()
HONEST_PARAMS = {"chunk_size": 2048, "decode_weight": 64.0}


@pytest.fixture(scope="module")
def cfg():
    return load_config(**{"workloads.scenarios": ["multiturn"], "workloads.screen": [],
                          "workloads.requests": 250, "workloads.scenario_requests": {},
                          "gate.bootstrap": 2000, "gate.capacity_rel_tol": 0.04,
                          "gate.references": []})


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


def test_compare_is_a_geometric_mean_of_paired_ratios(cfg):
    comp = compare({"a": 12.0, "b": 24.0}, {"a": 10.0, "b": 20.0, "c": 5.0}, "baseline",
                   cfg.gate, 0)
    assert comp.gains == {"a": pytest.approx(0.2), "b": pytest.approx(0.2)}
    assert comp.passed and comp.lower_bound == pytest.approx(0.2)
    flat = compare({"a": 10.0, "b": 20.0}, {"a": 10.0, "b": 20.0}, "baseline", cfg.gate, 0)
    assert not flat.passed and flat.mean_gain == pytest.approx(0.0)
    # one workload with a tiny baseline cannot carry the rest: x10 on one, x0.5 on two others
    skew = compare({"a": 10.0, "b": 5.0, "c": 5.0}, {"a": 1.0, "b": 10.0, "c": 10.0},
                   "baseline", cfg.gate, 0)
    assert skew.mean_gain == pytest.approx(10 ** (1 / 3) * 0.25 ** (1 / 3) - 1)
    assert not skew.passed
    # a reference capacity of 0 gives no ratio: listed, not averaged in as 0 %
    zero = compare({"a": 3.0, "b": 12.0}, {"a": 0.0, "b": 10.0}, "baseline", cfg.gate, 0)
    assert zero.excluded == ["a"] and set(zero.gains) == {"b"}
    # its own margin (the reference bar)
    assert not compare({"a": 10.4, "b": 20.8}, {"a": 10.0, "b": 20.0}, "ref", cfg.gate, 0,
                       margin=0.05).passed


def _row(**kw):
    row = {"attainment": 0.93, "sustainable": True, "backlog_growth": 0.0,
           "max_wait_over_deadline": 2.0, "unfinished": 0, "starved": 0,
           "ttft_over_deadline_p99": 1.5, "longest_wait_s": 4.0, "requests": 1000,
           "priority_inversions": 0}
    return row | kw


def test_claim_conditions_judge_each_instance_at_its_claim(cfg):
    gate = cfg.gate
    claimed = {"a": 10.0, "b": 20.0}
    base = {"a": _row(), "b": _row()}
    ok = claim_conditions(claimed, {"a": _row(), "b": _row()}, base, 0.9, gate)
    assert [c.name for c in ok] == list(CLAIM_CONDITIONS) and all(c.passed for c in ok)
    bad = {c.name: c for c in claim_conditions(
        claimed, {"a": _row(max_wait_over_deadline=31.0, starved=4),
                  "b": _row(unfinished=7, ttft_over_deadline_p99=1.6, sustainable=False,
                            backlog_growth=0.4, attainment=0.85, priority_inversions=3,
                            inversion_ids=[17, 4])}, base, 0.9, gate)}
    assert not any(c.passed for c in bad.values())
    assert "31 x" in bad["max_wait"].figures and "on a" in bad["max_wait"].figures
    assert "4 starved" in bad["max_wait"].figures
    assert "7 request(s) unfinished" in bad["finished"].figures
    assert "worst 0.850 on b" in bad["share"].figures
    assert "1.6 vs 1.5 on b" in bad["tail"].figures
    assert "worst b: 3 of 1000 (#17, #4) vs the baseline's 0" in bad["inversions"].figures
    # what was not measured cannot be vouched for
    lost = {c.name: c for c in claim_conditions(claimed, {"a": {}, "b": _row()}, base, 0.9,
                                                gate)}
    assert not any(c.passed for c in lost.values())
    assert "not measured" in lost["max_wait"].figures
    # an instance without a claim (capacity 0) is left to the capacity conditions
    part = claim_conditions({"a": 0.0, "b": 20.0}, {"b": _row()}, base, 0.9, gate)
    assert all(c.passed for c in part)
    assert not any(c.passed for c in claim_conditions({"a": 0.0}, {}, base, 0.9, gate))


def test_regression_is_per_workload_family(cfg):
    comp = compare({"chat@1": 12.0, "chat@2": 11.0, "mt@1": 9.7},
                   {"chat@1": 10.0, "chat@2": 10.0, "mt@1": 10.0}, "baseline", cfg.gate, 0)
    fams = family_gains(comp, {"chat@1": "chat", "chat@2": "chat", "mt@1": "mt"})
    assert fams["chat"] == pytest.approx((1.2 * 1.1) ** 0.5 - 1)
    assert fams["mt"] == pytest.approx(-0.03)
    assert not regression_condition(fams, 0.0).passed
    assert "worst workload mt -3.0%" in regression_condition(fams, 0.0).figures
    assert regression_condition(fams, 0.05).passed


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
    from dataclasses import replace

    base = PolicyRef("fixed_chunk.py", FIXED, TUNED)
    better = PolicyRef("c0002.py", HONEST, dict(HONEST_PARAMS))
    # least-outstanding routing as the reference bar (it gains capacity too, less)
    cfg = replace(cfg, gate=replace(cfg.gate, references=("least_outstanding",)))
    least = PolicyRef("least_outstanding.py", LEAST, dict(TUNED))
    result = run_gate(evaluator, cfg, "c0002", better, base, instances, references=[least])
    assert result.passed, result.reasons
    assert result.reference == "least_outstanding"
    assert result.comparison("reference:").lower_bound >= cfg.gate.reference_margin
    comp = result.baseline
    assert comp.lower_bound >= cfg.gate.margin and comp.mean_gain > 0.2
    assert set(comp.capacities) == {i.label for i in instances}
    assert result.failed() == [] and result.per_family["multiturn"] > 0.2
    # `autotuner show` states each condition and the fairness figures at the claim
    shown = "\n".join(gate_conditions_text(result.to_dict()))
    for name in CLAIM_CONDITIONS:
        assert f"pass  {name}" in shown
    assert "at the claimed capacity:" in shown and "longest wait" in shown
    assert all(label in shown for label in comp.capacities)
    assert [c.name for c in result.conditions] == [*CLAIM_CONDITIONS, "capacity", "regression",
                                                   "reference"]

    # the same policy again must beat the promoted one, and cannot
    again = PolicyRef("c0003.py", HONEST + "\n", dict(HONEST_PARAMS))
    second = run_gate(evaluator, cfg, "c0003", again, base, instances, promoted=better,
                      promoted_id="c0002", references=[least])
    assert second.baseline.passed
    assert second.failed() == ["promoted"]
    assert second.comparisons[2].reference == "c0002"
    assert any("c0002" in r for r in second.reasons)

    # the promotion record reproduces the claim with one command
    policy_path, record_path = write_promotion(tmp_path, cfg, "c0002", better, base,
                                               "fixed_chunk.py", result, None, least)
    record = json.loads(record_path.read_text())
    assert record["reproduce"] == f"autotuner replay {record_path}"
    assert record["params"] == HONEST_PARAMS and record["baseline"]["params"] == TUNED
    assert len(record["instances"]) == len(instances)
    assert {"autotuner", "python", "numpy", "optuna"} <= set(record["versions"])
    claim = record["claims"]["multiturn"]
    assert claim["gain_vs_baseline"] == pytest.approx(result.per_family["multiturn"])
    assert claim["capacity"] > claim["baseline_capacity"] > 0
    assert "geometric mean" in record["claim"] and "multiturn +" in record["claim"]
    assert "over the best tuned reference least_outstanding" in record["claim"]
    assert claim["gain_vs_reference"] > 0.05 and claim["reference"] == "least_outstanding"
    assert record["reference"]["file"] == "reference.py"
    assert read_policy_file(tmp_path / "promotions" / "reference.py").defaults() == TUNED
    assert {c["name"] for c in record["statistics"]["conditions"]} >= set(CLAIM_CONDITIONS)
    baked = read_policy_file(policy_path)
    assert baked.defaults() == HONEST_PARAMS
    again = reproduce(record_path, simulator=in_process)
    text = reproduction_text(again)
    assert again.passed and again.identical_capacities, text
    assert "capacities identical" in text and "gate passes" in text
    assert "pass  reference" in text


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


def test_the_best_tuned_reference_is_a_bar_of_its_own(cfg, instances, evaluator):
    from dataclasses import replace

    base = PolicyRef("fixed_chunk.py", FIXED, TUNED)
    better = PolicyRef("c0004.py", HONEST, dict(HONEST_PARAMS))
    with_refs = replace(cfg, gate=replace(cfg.gate, references=(str(HONEST_PATH),)))
    # the same routing as a reference: the candidate beats the baseline, not the bar
    ref = PolicyRef(HONEST_PATH.name, HONEST, dict(HONEST_PARAMS))
    result = run_gate(evaluator, with_refs, "c0004", better, base, instances, references=[ref])
    assert result.baseline.passed and not result.passed
    assert result.failed() == ["reference"]
    assert result.reference == "honest_cache_aware"
    assert result.references["honest_cache_aware"]["mean_gain"] > 0.2
    assert "best tuned reference honest_cache_aware" in result.reasons[0]
    # a bar that is configured but not measured refuses, it is never skipped
    unmeasured = run_gate(evaluator, with_refs, "c0004", better, base, instances)
    assert unmeasured.failed() == ["reference"]
    assert "no reference measured" in unmeasured.reasons[0]


def test_a_baseline_without_capacity_cannot_be_judged(cfg, evaluator):
    from dataclasses import replace

    hopeless = replace(cfg, slo=replace(cfg.slo, tbt_s=1e-4))  # no gap between tokens that short
    base = PolicyRef("fixed_chunk.py", FIXED, TUNED)
    with pytest.raises(GateInputError, match=r"workload multiturn@1001 refused: .*capacity"):
        run_gate(evaluator, hopeless, "c0005", PolicyRef("c0005.py", LEAST, dict(TUNED)), base,
                 [Instance("multiturn", 1001, 120)])


def test_a_campaign_refuses_a_workload_without_baseline_capacity_at_its_start(tmp_path):
    from autotuner.campaign import Campaign, WorkloadRefused

    cfg = load_config(**{"workloads.scenarios": ["multiturn"], "workloads.screen": [],
                         "workloads.requests": 120, "workloads.scenario_requests": {},
                         "workloads.heldout_requests": {}, "slo.tbt_s": 1e-4,
                         "results_dir": str(tmp_path), "name": "hopeless", "parallelism": 1})
    out = io.StringIO()
    with pytest.raises(WorkloadRefused) as info:
        Campaign(cfg, simulator=in_process, stream=out, tty=False).run()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("workload multiturn@1 refused: the capacity of the baseline (at "
                              "its default parameters) there is 0 req/s")
    assert "no capacity ratio is defined" in message
    assert not (tmp_path / "hopeless").exists()  # a refused new campaign leaves nothing behind
