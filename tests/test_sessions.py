"""Sandbox sessions: many runs of one policy and params on one warm worker must judge every run
exactly as a lone worker would (byte for byte on the metrics), and a worker that dies mid-batch
must lose nothing: the run in flight is judged again alone, the rest go to a fresh worker, and no
failure of the worker is recorded as the policy's."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest

import autotuner.session as session_module
from autotuner.evaluate import TIMINGS, evaluate
from autotuner.isolation import get_backend
from autotuner.resources import baseline_path
from autotuner.scoring import Evaluator, Instance, Job, NoCache
from autotuner.session import Session
from autotuner.sim.metrics import SLO, run_metrics
from autotuner.sim.workload import make_workload

FIXED = baseline_path("fixed_chunk").read_text()
# Module state that a run changes: a session that reused the module would route differently.
STATEFUL = FIXED.replace(
    "def route(request, cluster, params):\n    return request.id % len(cluster.replicas)",
    "SEEN = []\n\n\ndef route(request, cluster, params):\n    SEEN.append(request.id)\n"
    "    return (len(SEEN) * 7 + len(SEEN) // 3) % len(cluster.replicas)")
CHAT = Instance("chat", 1, 200)


@pytest.fixture(scope="module")
def backend() -> Any:
    return get_backend(None)  # the strongest that works here, as a campaign gets


def workloads() -> list[Any]:
    base = make_workload("chat", 200, seed=3)
    return [base, make_workload("bursty", 150, seed=4), base.with_rate(base.rate * 3)]


def metrics_bytes(ev: Any, wl: Any) -> str:
    assert ev.ok, ev.reasons
    return json.dumps(run_metrics(wl, ev.result, SLO()).to_dict(), sort_keys=True)


def test_stateful_policy_differs_from_the_baseline() -> None:
    assert STATEFUL != FIXED  # the replacement above found its target


@pytest.mark.parametrize("code", [FIXED, STATEFUL], ids=["fixed_chunk", "stateful"])
def test_session_runs_equal_lone_runs_byte_for_byte(backend: Any, code: str) -> None:
    wls = workloads()
    alone = [evaluate(code, workload=wl, sandbox=backend) for wl in wls]
    with Session(code, sandbox=backend) as session:
        batched = [session.run(wl) for wl in wls]
        assert session.handle is not None and session.runs == len(wls)  # one worker for all
    for wl, a, b in zip(wls, alone, batched, strict=True):
        assert metrics_bytes(a, wl) == metrics_bytes(b, wl)
        assert (a.verdict, a.decisions, a.metrics, a.params, a.phase) == \
            (b.verdict, b.decisions, b.metrics, b.params, b.phase)


def test_a_rejected_file_is_rejected_for_every_run_without_a_worker(backend: Any) -> None:
    with Session("import os\n", sandbox=backend) as session:
        evs = [session.run(wl) for wl in workloads()[:2]]
        assert session.handle is None
    lone = evaluate("import os\n", workload=workloads()[0], sandbox=backend)
    assert [e.verdict for e in evs] == ["rejected", "rejected"] == [lone.verdict] * 2
    assert evs[0].reasons == lone.reasons


def test_a_policy_error_is_the_same_verdict_and_the_session_goes_on(backend: Any) -> None:
    code = FIXED.replace("    budget = params[\"chunk_size\"]",
                         "    if replica.decodes > 3:\n        raise ValueError('boom')\n"
                         "    budget = params[\"chunk_size\"]")
    wls = workloads()
    alone = [evaluate(code, workload=wl, sandbox=backend) for wl in wls]
    with Session(code, sandbox=backend) as session:
        batched = [session.run(wl) for wl in wls]
    assert [a.verdict for a in alone] == ["failed"] * 3
    for a, b in zip(alone, batched, strict=True):
        assert (a.verdict, a.reasons, a.decisions, a.phase) == \
            (b.verdict, b.reasons, b.decisions, b.phase)


def test_one_session_serves_runs_with_different_params_as_lone_workers(backend: Any) -> None:
    """A candidate's tuning trials share one worker: each run loads a fresh module with the
    params it names, judged exactly as a lone worker with those params; params the file refuses
    get the lone run's rejection, and the worker goes on."""
    wl = workloads()[0]
    sets = [{"chunk_size": 64}, {"chunk_size": 4096}, {"chunk_size": 64}]
    alone = [evaluate(FIXED, workload=wl, sandbox=backend, params=p) for p in sets]
    bad = {"chunk_size": 64, "no_such_tunable": 1}
    lone_bad = evaluate(FIXED, workload=wl, sandbox=backend, params=bad)
    with Session(FIXED, sandbox=backend) as session:
        batched = [session.run(wl, params=p) for p in sets]
        refused = session.run(wl, params=bad)
        last = session.run(wl)  # the session's own (default) params
        assert session.handle is not None and session.runs == len(sets) + 1  # one worker
    assert metrics_bytes(alone[0], wl) != metrics_bytes(alone[1], wl)  # params matter here
    for a, b in zip(alone, batched, strict=True):
        assert metrics_bytes(a, wl) == metrics_bytes(b, wl)
        assert (a.verdict, a.decisions, a.params) == (b.verdict, b.decisions, b.params)
    assert (refused.verdict, refused.reasons) == (lone_bad.verdict, lone_bad.reasons) == \
        ("rejected", lone_bad.reasons)
    assert metrics_bytes(last, wl) == metrics_bytes(evaluate(FIXED, workload=wl,
                                                             sandbox=backend), wl)


def test_session_simulator_keeps_one_worker_across_a_candidates_trials() -> None:
    from autotuner.scoring.evaluator import SessionSimulator

    simulator = SessionSimulator()
    jobs = [Job(FIXED, {"chunk_size": c}, CHAT, "run", 4.0) for c in (256, 512, 1024)]
    try:
        from autotuner.scoring import execute_job

        for job in jobs:
            execute_job(job, simulator)
        assert simulator.sessions_started == 1
        execute_job(Job(STATEFUL, {"chunk_size": 256}, CHAT, "run", 4.0), simulator)
        assert simulator.sessions_started == 2  # another policy file: another worker
    finally:
        simulator.close()


def _run_expecting(session: Session, wls: list[Any], params: list[Any] | None = None
                   ) -> list[Any]:
    """Each run with the next one expected (sent to the worker ahead), as the evaluator's
    sequential path does."""
    params = params or [None] * len(wls)
    out = []
    for n, (wl, p) in enumerate(zip(wls, params, strict=True)):
        if n + 1 < len(wls):
            session.expect(wls[n + 1], params=params[n + 1])
        out.append(session.run(wl, params=p))
    return out


@pytest.mark.parametrize("code", [FIXED, STATEFUL], ids=["fixed_chunk", "stateful"])
def test_runs_sent_ahead_equal_lone_runs_byte_for_byte(backend: Any, code: str) -> None:
    wls = workloads()
    sets = [{"chunk_size": 64}, {"chunk_size": 4096}, {"chunk_size": 256}]
    alone = [evaluate(code, workload=wl, sandbox=backend, params=p)
             for wl, p in zip(wls, sets, strict=True)]
    with Session(code, sandbox=backend) as session:
        session.expect(wls[1], params=sets[1])
        ahead = [session.run(wls[0], params=sets[0])]
        assert session._ahead is not None  # the worker holds the next run already
        ahead += _run_expecting(session, wls[1:], sets[1:])
        assert session.handle is not None and session.runs == len(wls)  # one worker, no waste
        assert session._ahead is None
    for wl, a, b in zip(wls, alone, ahead, strict=True):
        assert metrics_bytes(a, wl) == metrics_bytes(b, wl)
        assert (a.verdict, a.decisions, a.params) == (b.verdict, b.decisions, b.params)


def test_a_run_other_than_the_expected_one_gets_a_fresh_worker(backend: Any) -> None:
    """The worker started the expected run; asked for another, the session replaces it and
    the run asked for is judged as alone (so is the expected one when it comes later)."""
    wls = workloads()
    with Session(FIXED, sandbox=backend) as session:
        session.expect(wls[1])
        first = session.run(wls[0])  # sends wls[1] ahead
        worker = session.handle
        other = session.run(wls[2])  # not what was expected
        assert session.handle is not worker and session.runs == 1
        late = session.run(wls[1])
    for wl, ev in zip(wls, (first, late, other), strict=True):
        assert metrics_bytes(evaluate(FIXED, workload=wl, sandbox=backend), wl) == \
            metrics_bytes(ev, wl)


def test_a_policy_error_before_a_run_sent_ahead_leaves_it_judged_as_alone(backend: Any) -> None:
    code = FIXED.replace("    budget = params[\"chunk_size\"]",
                         "    if replica.decodes > 3 and params['chunk_size'] < 100:\n"
                         "        raise ValueError('boom')\n    budget = params[\"chunk_size\"]")
    wls = workloads()
    sets = [{"chunk_size": 64}, {"chunk_size": 512}, {"chunk_size": 64}]
    alone = [evaluate(code, workload=wl, sandbox=backend, params=p)
             for wl, p in zip(wls, sets, strict=True)]
    with Session(code, sandbox=backend) as session:
        ahead = _run_expecting(session, wls, sets)
        assert session.runs == len(wls)  # the policy's error did not cost the worker
    assert [a.verdict for a in alone] == ["failed", "ok", "failed"]
    for a, b in zip(alone, ahead, strict=True):
        assert (a.verdict, a.reasons, a.decisions, a.phase, a.metrics) == \
            (b.verdict, b.reasons, b.decisions, b.phase, b.metrics)


class _KillOnce:
    """Kills the session's worker (SIGKILL to its process group, as from outside) when the
    trusted side has read ``after`` decision lines of the session, once."""

    def __init__(self, after: int):
        self.after, self.seen, self.done = after, 0, False

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        make = session_module._replay_class
        killer = self

        def replay_class() -> type:
            base = make()

            class Killing(base):  # type: ignore[misc, valid-type]
                def pull(self) -> None:
                    if self.session and not killer.done and self.state == "decisions":
                        killer.seen += 1
                        if killer.seen >= killer.after:
                            killer.done = True
                            os.killpg(self.handle.proc.pid, signal.SIGKILL)
                    super().pull()

            return Killing

        monkeypatch.setattr(session_module, "_replay_class", replay_class)


def test_a_worker_killed_mid_batch_loses_nothing(backend: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    wls = workloads()
    alone = [evaluate(FIXED, workload=wl, sandbox=backend) for wl in wls]
    killer = _KillOnce(after=3)  # inside the second run (the first has fewer lines)
    killer.install(monkeypatch)
    before = TIMINGS["alone"]
    with Session(FIXED, sandbox=backend, batch=64) as session:
        batched = [session.run(wl) for wl in wls]
    assert killer.done
    assert TIMINGS["alone"] == before + 1  # the run in flight was judged again, alone
    for wl, a, b in zip(wls, alone, batched, strict=True):
        assert metrics_bytes(a, wl) == metrics_bytes(b, wl)


def test_a_worker_killed_with_a_run_sent_ahead_loses_nothing(
        backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run in flight is judged again alone; the one queued behind it on the dead worker
    goes to a fresh one."""
    wls = workloads()
    alone = [evaluate(FIXED, workload=wl, sandbox=backend) for wl in wls]
    killer = _KillOnce(after=3)
    killer.install(monkeypatch)
    before = TIMINGS["alone"]
    with Session(FIXED, sandbox=backend, batch=64) as session:
        ahead = _run_expecting(session, wls)
    assert killer.done
    assert TIMINGS["alone"] == before + 1
    for wl, a, b in zip(wls, alone, ahead, strict=True):
        assert metrics_bytes(a, wl) == metrics_bytes(b, wl)


class _RecordingArchive(NoCache):
    def __init__(self) -> None:
        self.stored: list[tuple[str, dict[str, Any]]] = []

    def put_evaluation(self, key: str, **kwargs: Any) -> None:
        self.stored.append((key, kwargs["result"]))


def _jobs() -> list[Job]:
    params = {"chunk_size": 512}
    runs = [Job(FIXED, params, CHAT, "run", rate) for rate in (2.0, 4.0, 8.0)]
    return runs + [Job(FIXED, params, CHAT, "capacity", 6.0, rel_tol=0.25)]


def _plain(results: list[dict[str, Any]]) -> str:
    return json.dumps([{k: v for k, v in r.items() if k != "seconds"} for r in results],
                      sort_keys=True)


def test_evaluator_with_sessions_equals_one_worker_per_run() -> None:
    plain = Evaluator(NoCache(), parallelism=1, sessions=False)
    batched = Evaluator(NoCache(), parallelism=1, sessions=True)
    try:
        one = plain.evaluate(_jobs())
        many = batched.evaluate(_jobs())
    finally:
        plain.close()
        batched.close()
    assert not any(r.get("error") for r in one)
    assert _plain(one) == _plain(many)


def test_evaluator_killed_worker_mid_batch_stores_each_job_once_and_no_failure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    reference = Evaluator(NoCache(), parallelism=1, sessions=False)
    try:
        expected = reference.evaluate(_jobs())
    finally:
        reference.close()
    killer = _KillOnce(after=2)
    killer.install(monkeypatch)
    archive = _RecordingArchive()
    evaluator = Evaluator(archive, parallelism=1, sessions=True)
    try:
        got = evaluator.evaluate(_jobs())
    finally:
        evaluator.close()
    assert killer.done
    keys = [key for key, _ in archive.stored]
    assert sorted(keys) == sorted(job.key() for job in _jobs())  # each once
    assert not any(result.get("error") for _, result in archive.stored)
    assert _plain(got) == _plain(expected)


# ------------------------------------------------------------------------------- early rejection
def test_stage_ends_double_up_to_all() -> None:
    from autotuner.scoring import stage_ends

    assert stage_ends(5) == [1, 2, 4, 5]
    assert stage_ends(1) == [1]
    assert stage_ends(6, first=2) == [2, 4, 6]


def test_staged_ladder_rejects_a_poor_candidate_early_and_scores_a_good_one_in_full() -> None:
    from dataclasses import replace

    from autotuner.config import CampaignConfig
    from autotuner.scoring import (
        build_workload,
        goodput_of,
        in_process,
        ladder_jobs,
        ladder_scores,
        staged_ladder,
    )

    cfg = CampaignConfig()
    insts = [Instance(s, 1, 250) for s in ("chat", "bursty", "summarize", "mixed")]
    caps = {i.label: build_workload(i).rate for i in insts}
    evaluator = Evaluator(NoCache(), parallelism=1, simulator=in_process)
    good = {"chunk_size": 512}
    base = evaluator.evaluate(ladder_jobs(FIXED, good, insts, caps, cfg))
    rungs = len(cfg.objective.ladder)
    reference = {i.label: [goodput_of(r, cfg.objective.goodput)
                           for r in base[n * rungs:(n + 1) * rungs]]
                 for n, i in enumerate(insts)}
    ran: list[int] = []

    def run(jobs: list[Job]) -> list[dict[str, Any]]:
        ran.append(len(jobs))
        return evaluator.evaluate(jobs)

    full = ladder_scores(base, insts, reference, cfg)
    staged = staged_ladder(run, FIXED, good, insts, caps, reference, cfg, reject_below=-0.2)
    assert replace(staged, rejected_early=False) == full and not staged.rejected_early
    assert sum(ran) == len(insts) * rungs
    # A tiny chunk starves prefill: clearly worse than the baseline on the first instance.
    ran.clear()
    poor = staged_ladder(run, FIXED, {"chunk_size": 32}, insts, caps, reference, cfg,
                         reject_below=-0.2)
    assert poor.rejected_early and poor.objective < -0.2
    assert ran == [rungs]  # the first stage only: one instance of four
    assert list(poor.per_instance) == [insts[0].label]


# ------------------------------------------------------------------------------- the bench
def _bench(*args: str) -> Any:
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.run([sys.executable, "-m", "autotuner", "bench", "--campaign", *args],
                          capture_output=True, text=True, env=env, timeout=600)


def test_bench_job_mix_prints_both_paths_the_split_and_identical_results() -> None:
    proc = _bench("--job-mix", "--candidates", "1", "--instance-requests", "30", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out["paths"]) == {"one_worker_per_run", "sessions"}
    assert out["results_identical"] is True
    for row in out["paths"].values():
        assert row["evaluations"] > 20 and row["errors"] == 0
        assert set(row["split"]) == {"sandbox_start_and_ipc_s", "worker_simulation_s",
                                     "trusted_replay_s", "other_s"}
    assert out["ratio"] > 0


@pytest.mark.parametrize("args, key", [(("--job-mix", "--candidates", "0"), "--candidates"),
                                       (("--proposals", "0"), "--proposals"),
                                       (("--instance-requests", "5"), "--instance-requests")])
def test_bench_campaign_refuses_bad_counts_in_one_line(args, key) -> None:
    proc = _bench(*args)
    assert proc.returncode == 2
    assert key in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bench_campaign_times_each_path_of_a_small_campaign() -> None:
    """Every path runs the same small campaign's search and reports proposals per minute,
    simulations per second and the time split; the ratios are of the halving path to each."""
    proc = _bench("--proposals", "1", "--trials", "2", "--instance-requests", "30", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    paths = [row["path"] for row in out["paths"]]
    assert paths == ["one_worker_per_run", "sessions", "sessions_halving",
                     "sessions_halving_pruning"]
    for row in out["paths"]:
        assert row["proposals"] == 1 and row["simulations"] > 0 and row["wall_s"] > 0
        assert set(row["split"]) == {"sandbox_start_and_ipc_s", "worker_simulation_s",
                                     "trusted_replay_s", "tuner_s", "proposer_s"}
        assert row["split"]["worker_simulation_s"] > 0 and row["split"]["trusted_replay_s"] > 0
    assert set(out["ratios"]) == {"sessions_halving", "sessions_halving_pruning"}
    assert all(set(r) == {"one_worker_per_run", "sessions"} for r in out["ratios"].values())
    # the same proposal judged without halving both times: the same tuned outcome
    assert out["paths"][0]["tuned"] == out["paths"][1]["tuned"]
