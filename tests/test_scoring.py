"""Scoring: job identity, run and capacity results, the evaluation cache, the ladder objective."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from autotuner.config import CampaignConfig, SandboxConfig, SLOConfig
from autotuner.resources import asset_dir, baseline_path
from autotuner.scoring import (
    Evaluator,
    Instance,
    Job,
    LocalPool,
    execute_job,
    extended,
    goodput_of,
    in_process,
    ladder_scores,
    run_at,
    sandboxed,
    simulator_for,
    sustained_share,
)
from autotuner.sim.metrics import RunMetrics

FIXED = baseline_path("fixed_chunk").read_text()
DEFER = ((asset_dir("baselines") / "audit") / "defer_long.py").read_text()
CHAT = Instance("chat", 1, 400)


def job(**kw: Any) -> Job:
    base = {"code": FIXED, "params": {"chunk_size": 512}, "instance": CHAT}
    return Job(**(base | kw))


# ------------------------------------------------------------------------------- job keys
def test_job_key_covers_what_changes_the_result_and_nothing_else():
    key = job(rate=10.0).key()
    assert key == job(rate=10.0, name="other.py", sandbox=SandboxConfig(backend="process")).key()
    for changed in (job(rate=11.0), job(rate=10.0, params={"chunk_size": 256}),
                    job(rate=10.0, instance=Instance("chat", 2, 400)),
                    job(rate=10.0, slo=SLOConfig(kind="legacy")),
                    job(rate=10.0, slo=SLOConfig(tbt_s=0.5)),
                    job(rate=10.0, slo=SLOConfig(max_backlog_growth=0.05)),
                    job(rate=10.0, slo=SLOConfig(warmup=0.2)),
                    job(rate=10.0, code=FIXED + "\n# changed\n")):
        assert changed.key() != key
    cap = job(kind="capacity", rate=10.0)
    assert cap.key() != key
    # a hint moves where the bisection starts, not the rate it finds (one fixed grid)
    assert cap.key() == job(kind="capacity", rate=12.0).key() == job(kind="capacity").key()
    assert cap.key() != dataclasses.replace(cap, rel_tol=0.05).key()
    assert cap.key() != dataclasses.replace(cap, max_multiple=4).key()


# ------------------------------------------------------------------------------- results
def test_a_run_result_is_run_metrics_plus_seconds():
    out = execute_job(job(rate=8.0), in_process)
    assert out["seconds"] > 0
    m = RunMetrics.from_dict(out)
    assert m.error is None and m.requests == 400 and m.slo_kind == "deadline"
    assert set(RunMetrics.__dataclass_fields__) <= set(out)
    assert m.attainment == 1.0 and m.sustainable
    typed = run_at(job(rate=8.0), 8.0, in_process)  # the record a Simulator returns
    assert isinstance(typed, RunMetrics)
    assert typed.to_dict() == {k: v for k, v in out.items() if k != "seconds"}


def test_a_capacity_result_names_its_probes_and_the_run_at_capacity():
    out = execute_job(job(kind="capacity", rate=30.0), in_process)
    assert set(out) == {"capacity", "probes", "at_capacity", "error", "seconds",
                        "requests_multiple", "settled", "length_checks"}
    assert out["requests_multiple"] == 1 and out["settled"] is None  # no length check asked
    assert out["error"] is None and out["capacity"] > 0
    assert all(len(p) == 3 for p in out["probes"])
    at = RunMetrics.from_dict(out["at_capacity"])
    assert at.meets(0.9) and at.rate == pytest.approx(out["capacity"], rel=1e-9)
    refused = [p for p in out["probes"] if p[0] > out["capacity"]]
    assert refused and all(att < 0.9 or not sus for _, att, sus in refused)


def test_a_capacity_job_checks_its_rate_on_the_instance_extended_and_says_how_long_it_ran():
    out = execute_job(job(kind="capacity", rate=30.0, max_multiple=2), in_process)
    assert out["error"] is None and out["settled"] in (True, False)
    (multiple, rate, *_), *_ = out["length_checks"]
    assert multiple == 2 and rate >= out["capacity"]
    at = RunMetrics.from_dict(out["at_capacity"])
    assert at.requests == CHAT.requests * out["requests_multiple"]
    assert extended(CHAT, 4) == Instance("chat", 1, 1600)
    assert extended(Instance(None, 0, 400, "t.csv", (0.8, 1.0)), 2) is None  # a trace window


def test_a_policy_failure_is_a_result_with_every_field():
    out = execute_job(job(code="TUNABLES = {}\n\n\ndef partition(replica, params):\n"
                               "    return 1 / 0\n",
                          params={}, rate=8.0), in_process)
    assert "ZeroDivisionError" in out["error"]
    m = RunMetrics.from_dict(out)
    assert not m.meets(0.0) and goodput_of(out, "requests") == 0.0


# ------------------------------------------------------------------------------- the cache
class MemoryArchive:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def get_evaluations(self, keys):
        return {k: self.rows[k] for k in keys if k in self.rows}

    def put_evaluation(self, key: str, **kwargs: Any) -> None:
        self.rows[key] = kwargs["result"]


def test_duplicate_jobs_run_once_and_cached_jobs_never_again():
    archive = MemoryArchive()
    ev = Evaluator(archive, parallelism=1, simulator=in_process)
    jobs = [job(rate=8.0), job(rate=8.0, name="same.py"), job(rate=9.0)]
    first = ev.evaluate(jobs)
    assert ev.ran == 2 and first[0] == first[1]
    again = ev.evaluate(jobs)
    assert ev.ran == 2 and ev.cached == 3 and again == first


def test_a_dead_pool_is_replaced_once_and_runs_only_what_has_no_result(monkeypatch):
    from concurrent.futures.process import BrokenProcessPool

    calls: list[list[int]] = []

    def flaky_pool(pool, jobs, run, store):
        calls.append(list(run))
        for i in run[: 1 if len(calls) == 1 else None]:
            store(i, execute_job(jobs[i], in_process))
        if len(calls) == 1:
            raise BrokenProcessPool("a child process terminated abruptly")

    monkeypatch.setattr(LocalPool, "_run_pool", staticmethod(flaky_pool))
    archive = MemoryArchive()
    ev = Evaluator(archive, parallelism=2)
    jobs = [job(rate=8.0), job(rate=9.0), job(rate=10.0)]
    try:
        results = ev.evaluate(jobs)
    finally:
        ev.close(cancel=True)
    assert len(calls) == 2 and calls[1] == [i for i in calls[0] if i != calls[0][0]]
    assert ev.ran == 3 and len(archive.rows) == 3
    assert [r["rate"] for r in results] == pytest.approx([8.0, 9.0, 10.0])


def test_untrusted_code_runs_in_the_sandbox_unless_a_test_says_otherwise():
    assert simulator_for() is sandboxed
    assert Evaluator(MemoryArchive(), parallelism=1).simulator is None


# ------------------------------------------------------------------------------- the ladder
def rung(goodput: float, growth: float = 0.0, limit: float = 0.02, **kw: Any) -> dict[str, Any]:
    return {"goodput_rps": goodput, "goodput_tok_s": goodput * 100, "attainment": 0.95,
            "rate": 1.0, "error": None, "backlog_growth": growth, "backlog_limit": limit,
            "slo_kind": "deadline"} | kw


def test_a_rung_whose_backlog_grows_earns_nothing():
    assert sustained_share(rung(10.0, growth=0.01)) == 1.0
    assert sustained_share(rung(10.0, growth=0.06)) == pytest.approx(0.5)
    assert sustained_share(rung(10.0, growth=0.10)) == 0.0
    assert sustained_share(rung(10.0, growth=None)) == 0.0  # a failed run, stored as null
    assert sustained_share(rung(10.0, growth=0.5, slo_kind="legacy")) == 1.0
    assert goodput_of(rung(10.0, growth=0.2), "requests") == 0.0
    assert goodput_of(rung(10.0), "tokens") == 1000.0


def test_ladder_scores_against_the_reference():
    cfg = CampaignConfig()
    insts = [Instance("chat", 1, 100), Instance("mixed", 1, 100)]
    ref = {"chat@1": [10.0, 10.0, 5.0], "mixed@1": [4.0, 4.0, 2.0]}
    honest = [rung(10.0), rung(12.0), rung(8.0), rung(4.0), rung(4.0), rung(2.0)]
    # the same goodput, but its top rungs are bought with a growing backlog
    deferring = [rung(10.0), rung(12.0, growth=0.2), rung(8.0, growth=0.4),
                 rung(4.0), rung(4.0), rung(2.0)]
    s = ladder_scores(honest, insts, ref, cfg)
    assert s.error is None and s.per_instance["chat@1"] == pytest.approx(0.2)
    assert s.objective == pytest.approx(1.2 ** 0.5 - 1)  # geometric, as the gate's capacity
    d = ladder_scores(deferring, insts, ref, cfg)
    assert d.per_instance["chat@1"] == pytest.approx(-0.6) and d.objective < s.objective
    broken = honest[:4] + [rung(0.0, error="boom")] + honest[5:]
    assert ladder_scores(broken, insts, ref, cfg).error == "mixed@1: boom"


def test_the_ladder_does_not_reward_the_long_prompt_deferrer_on_chat():
    """Simulated: the deferrer against the baseline on a ladder around the baseline's capacity.
    Under the share-only ladder it gained; here its overloaded rungs earn nothing."""
    cfg = CampaignConfig()
    inst = Instance("chat", 1, 2000)
    base_cap = execute_job(job(instance=inst, kind="capacity", rate=70.0), in_process)["capacity"]
    ladder = [base_cap * f for f in cfg.objective.ladder]
    base = [execute_job(job(instance=inst, rate=r), in_process) for r in ladder]
    defer = [execute_job(job(code=DEFER, params={}, instance=inst, rate=r), in_process)
             for r in ladder]
    ref = {inst.label: [goodput_of(r, "requests") for r in base]}
    score = ladder_scores(defer, [inst], ref, cfg)
    assert score.error is None and score.objective < 0.05
    # what a ladder of plain goodput credited it with
    plain = sum(r["goodput_rps"] for r in defer) / sum(r["goodput_rps"] for r in base) - 1
    assert plain > 0.2
