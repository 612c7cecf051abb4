"""The evaluate stage: benign policies score exactly as in-process; forged logs never score.

Scores come only from the trusted replay, so a benign policy's metrics through any sandbox must
equal ``autotuner simulate``'s to the last bit, and a worker that lies about its decisions (too
many, too few, out of order, garbage, another workload) gets a failed evaluation, never a score.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import pytest
from decision_logs import decisions, joined, record
from sandbox_support import assert_no_leftovers, backend_params, make_subreaper

from autotuner.commands.common import EXIT_FAILED, EXIT_OK, EXIT_REJECTED
from autotuner.commands.evaluate import add_arguments as add_evaluate_arguments
from autotuner.commands.evaluate import run as run_evaluate
from autotuner.evaluate import evaluate, untrusted_text, workload_fingerprint
from autotuner.isolation import Limits, SandboxBroken
from autotuner.isolation.base import Backend
from autotuner.isolation.handle import PopenWorker
from autotuner.isolation.limits import WORKER_ENV
from autotuner.policy import load_policy, read_policy_file
from autotuner.resources import asset_dir, baseline_path
from autotuner.sim.engine import ClusterSpec
from autotuner.sim.metrics import SLO
from autotuner.sim.workload import make_workload
from autotuner.simulation import WorkloadSpec, metrics_of, run_policy

SPEC = WorkloadSpec(scenario="chat", requests=300, seed=3)
CLUSTER = ClusterSpec(replicas=3)
LIMITS = Limits(wall_s=30.0, cpu_s=20, memory_bytes=1 << 30)
BASELINES = sorted(p.stem for p in asset_dir("baselines").glob("*.py"))


def trusted(name: str, workload, cluster=CLUSTER, params=None) -> dict:
    wl = workload.build() if isinstance(workload, WorkloadSpec) else workload
    source = read_policy_file(baseline_path(name))
    return metrics_of(cluster, wl, run_policy(source, cluster, wl, params=params), SLO())


@pytest.fixture()
def scratch_root(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    make_subreaper()
    return tmp_path


# ------------------------------------------------------------------------------ benign
@pytest.mark.parametrize("backend", backend_params())
def test_baselines_score_exactly_as_in_process(backend, scratch_root):
    for name in BASELINES:
        ev = evaluate(baseline_path(name).read_text(), name=name, workload=SPEC,
                      cluster=CLUSTER, sandbox=backend, limits=LIMITS, warm=True)
        assert ev.verdict == "ok", (name, ev.reasons)
        assert ev.metrics == trusted(name, SPEC), name
        assert ev.decisions == ev.metrics["policy_calls"]
        assert ev.backend == backend
    assert_no_leftovers(scratch_root, backend)


@pytest.mark.parametrize("backend", backend_params())
def test_workload_given_as_data_with_prefixes_and_params(backend, scratch_root):
    wl = make_workload("multiturn", 200, seed=5)
    assert wl.prefix is not None
    params = {"balance_abs": 4, "balance_rel": 2.0, "min_hit_tokens": 128}
    ev = evaluate(baseline_path("prefix_aware").read_text(), name="prefix_aware", workload=wl,
                  cluster=CLUSTER, params=params, sandbox=backend, limits=LIMITS)
    assert ev.verdict == "ok", ev.reasons
    assert ev.params == {**params, "chunk_size": 512}  # its partition's inherited tunable
    assert ev.metrics == trusted("prefix_aware", wl, params=params)
    assert_no_leftovers(scratch_root, backend)


def test_horizon_is_applied_on_both_sides():
    spec = WorkloadSpec(scenario="chat", requests=400, rate=40.0, seed=1)
    ev = evaluate(baseline_path("fixed_chunk").read_text(), workload=spec, cluster=CLUSTER,
                  horizon=5.0, limits=LIMITS)
    wl = spec.build()
    source = read_policy_file(baseline_path("fixed_chunk"))
    expect = metrics_of(CLUSTER, wl, run_policy(source, CLUSTER, wl, horizon=5.0), SLO())
    assert ev.ok and ev.metrics == expect
    assert expect["unfinished"] > 0


def test_cli_evaluate_matches_cli_simulate(capsys, tmp_path):
    from autotuner.commands.main import main

    common = ["--requests", "250", "--seed", "2", "--replicas", "2", "--json"]
    parser = argparse.ArgumentParser()
    add_evaluate_arguments(parser)
    args = parser.parse_args(["--policy", "sarathi_shrinking", *common])
    assert run_evaluate(args) == EXIT_OK
    evaluated = json.loads(capsys.readouterr().out)
    assert main(["simulate", "--policy", "sarathi_shrinking", *common]) == 0
    simulated = json.loads(capsys.readouterr().out)
    assert evaluated["verdict"] == "ok"
    assert evaluated["metrics"] == simulated["metrics"]

    bad = tmp_path / "bad.py"
    bad.write_text("import os\nTUNABLES = {}\n\ndef route(request, cluster, params):\n"
                   "    return 0\n")
    assert run_evaluate(parser.parse_args(["--policy", str(bad), *common])) == EXIT_REJECTED
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "rejected" and "import" in out["constructs"]

    broken = tmp_path / "broken.py"
    broken.write_text("TUNABLES = {}\n\ndef route(request, cluster, params):\n    return -1\n")
    assert run_evaluate(parser.parse_args(["--policy", str(broken), *common])) == EXIT_FAILED
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "failed" and "does not exist" in out["reasons"][0]


def test_bad_input_is_a_result_not_an_exception():
    for code in (None, b"bytes", "", "def (:", "x" * 200_000, "\x00"):
        ev = evaluate(code, workload=SPEC, limits=LIMITS)  # type: ignore[arg-type]
        assert ev.verdict == "rejected" and ev.reasons, code
    ev = evaluate(baseline_path("fixed_chunk").read_text(), params={"chunk_size": 10**9},
                  workload=SPEC, limits=LIMITS)
    assert ev.verdict == "rejected" and "outside" in ev.reasons[0]


# ------------------------------------------------------------------------------ forged workers
class CannedBackend(Backend):
    """A 'worker' that ignores its request and prints canned lines: a worker that lies."""

    def __init__(self, lines: list[bytes], status: int = 0):
        super().__init__(name="canned", same_runtime=True)
        self.lines, self.status = lines, status

    def spawn(self, limits: Limits) -> PopenWorker:
        path = Path(tempfile.mkdtemp()) / "out"
        path.write_bytes(b"".join(self.lines))
        script = (f"import sys, os; sys.stdin.buffer.readline(); "
                  f"sys.stdout.buffer.write(open({str(path)!r}, 'rb').read()); "
                  f"sys.stdout.flush(); os.unlink({str(path)!r}); os.rmdir({str(path.parent)!r}); "
                  f"sys.exit({self.status})")
        return PopenWorker([sys.executable, "-I", "-c", script], limits, env=dict(WORKER_ENV))


def honest_lines(spec=SPEC, name="fixed_chunk") -> tuple[list, str]:
    """The policy's log, cut into its decisions, and the workload's fingerprint."""
    wl = spec.build()
    log = record(CLUSTER, wl, load_policy(read_policy_file(baseline_path(name))))
    return decisions(log), workload_fingerprint(wl)


def msg(obj) -> bytes:
    return (json.dumps(obj) + "\n").encode()


def run_canned(lines: list[bytes], status: int = 0):
    return evaluate(baseline_path("fixed_chunk").read_text(), workload=SPEC, cluster=CLUSTER,
                    sandbox=CannedBackend(lines, status), limits=LIMITS.with_(wall_s=10.0))


def test_an_honest_log_from_anyone_scores_as_the_policy():
    log, fp = honest_lines()
    ev = run_canned([msg({"hello": {"workload": fp}}), msg({"f": joined(log[:100])}),
                     msg({"f": joined(log[100:])}), msg({"end": {"error": None}})])
    assert ev.verdict == "ok", ev.reasons
    assert ev.metrics == trusted("fixed_chunk", SPEC)


@pytest.mark.parametrize("case, reason", [
    ("extra", "more entries than the simulation asked for"),
    ("short", "ended before the simulation did"),
    ("short_no_end", "without sending its result"),
    ("garbage", "garbage output"),
    ("after_end", "wrote more after its result"),
    ("reordered", "illegal decision"),
    ("bad_entry", "illegal decision"),
    ("not_ints", "garbage output"),
    ("fraction", "garbage output"),
    ("past_64_bits", "garbage output"),
    ("claims_error", "policy error: it says so"),
    ("exit_status", "status 3"),
    ("nested", "garbage output"),
])
def test_a_lying_worker_never_scores(case, reason):
    log, fp = honest_lines()
    hello, end = msg({"hello": {"workload": fp}}), msg({"end": {"error": None}})
    status = 0
    lines = {
        "extra": [hello, msg({"f": joined(log + [[-1]])}), end],
        "short": [hello, msg({"f": joined(log[:-5])}), end],
        "short_no_end": [hello, msg({"f": joined(log[:-5])})],
        "garbage": [hello, b"{not json\n", end],
        "after_end": [hello, msg({"f": joined(log)}), end, msg({"f": []})],
        "reordered": [hello, msg({"f": joined(log[1:2] + log[:1] + log[2:])}), end],
        "bad_entry": [hello, msg({"f": joined([[1, 1, 0, 1]] + log)}), end],
        "not_ints": [hello, msg({"f": ["lots", "of"] + joined(log)}), end],
        "fraction": [hello, msg({"f": joined(log)[:7] + [0.5] + joined(log)[8:]}), end],
        "past_64_bits": [hello, msg({"f": [-2**64] + joined(log)}), end],
        "claims_error": [hello, msg({"f": joined(log)}), msg({"end": {"error": "it says so"}})],
        "exit_status": [hello, msg({"f": joined(log)}), end],
        "nested": [hello, b"[" * 100_000 + b"\n", end],
    }[case]
    if case == "exit_status":
        status = 3
    ev = run_canned(lines, status)
    assert ev.verdict == "failed", (case, ev)
    assert reason in ev.reasons[0], (case, ev.reasons)
    assert ev.metrics is None


@pytest.mark.parametrize("case, reason", [
    ("no_hello", "garbage output"),
    ("fingerprint", "different workload"),
    ("silent", "without sending its result"),
])
def test_a_worker_broken_before_its_hello_is_the_sandboxs_fault(case, reason):
    # Nothing of the policy runs before the worker's hello: what goes wrong there is no verdict.
    log, fp = honest_lines()
    end = msg({"end": {"error": None}})
    lines = {
        "no_hello": [msg({"f": joined(log)}), end],
        "fingerprint": [msg({"hello": {"workload": "0" * 32}}), msg({"f": joined(log)}), end],
        "silent": [],
    }[case]
    with pytest.raises(SandboxBroken, match=reason):
        run_canned(lines)


def test_worker_text_is_scrubbed_of_the_parents_secrets(monkeypatch):
    monkeypatch.setenv("SOME_API_KEY", "sk-very-secret-value-123")
    text = untrusted_text("leak: sk-very-secret-value-123\x1b[31m" + "z" * 5000)
    assert "sk-very-secret" not in text and "[redacted]" in text
    assert "\x1b" not in text and len(text) <= 400


def test_fingerprint_matches_the_workers():
    spec = importlib.util.spec_from_file_location("sandbox_worker",
                                                  asset_dir("sandbox") / "worker.py")
    worker = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(worker)
    for wl in (SPEC.build(), make_workload("mixed", 100, seed=1)):
        assert worker.fingerprint(wl) == workload_fingerprint(wl)


# ------------------------------------------------------------------------------ infrastructure
class DyingBackend(Backend):
    """A worker killed before it says anything (as a spare whose parent thread ended was), the
    first ``deaths`` times; after that, the real sandbox."""

    def __init__(self, deaths: int):
        super().__init__(name="dying", same_runtime=True)
        self.deaths, self.started = deaths, 0

    def spawn(self, limits: Limits) -> PopenWorker:
        self.started += 1
        if self.started > self.deaths:
            from autotuner.isolation import detect_backend

            return detect_backend().spawn(limits)
        script = "import os, sys; sys.stdin.buffer.readline(); os.kill(os.getpid(), 9)"
        return PopenWorker([sys.executable, "-I", "-c", script], limits, env=dict(WORKER_ENV))


def test_a_worker_killed_before_the_policy_ran_is_retried_not_blamed():
    backend = DyingBackend(deaths=1)
    ev = evaluate(baseline_path("fixed_chunk").read_text(), workload=SPEC, cluster=CLUSTER,
                  sandbox=backend, limits=LIMITS, warm=True)
    assert ev.verdict == "ok", ev.reasons
    assert ev.metrics == trusted("fixed_chunk", SPEC)
    assert backend.started >= 2
    backend.release_spare()


def test_a_sandbox_that_keeps_failing_is_an_error_not_a_verdict():
    backend = DyingBackend(deaths=10**6)
    with pytest.raises(SandboxBroken, match=r"failed 3 times .*before the policy ran.*SIGKILL"):
        evaluate(baseline_path("fixed_chunk").read_text(), workload=SPEC, cluster=CLUSTER,
                 sandbox=backend, limits=LIMITS)
    assert backend.started == 3


def test_infrastructure_faults_are_never_cached_as_results(tmp_path, monkeypatch):
    from autotuner import scoring
    from autotuner.archive import Archive

    backend = DyingBackend(deaths=10**6)
    monkeypatch.setattr(scoring.evaluator, "sandbox_backend", lambda name: backend)
    archive = Archive(tmp_path / "archive.sqlite")
    job = scoring.Job(baseline_path("fixed_chunk").read_text(), {},
                      scoring.Instance("chat", 0, 50))
    evaluator = scoring.Evaluator(archive, parallelism=1, simulator=scoring.sandboxed)
    try:
        with pytest.raises(SandboxBroken):
            evaluator.evaluate([job])
    finally:
        backend.release_spare()  # the warm spare it prepared would otherwise outlive the test
    assert archive.get_evaluations([job.key()]) == {}
    archive.close()


def test_cli_reports_a_broken_sandbox_in_one_line(capsys, monkeypatch):
    from autotuner.commands.main import main
    backend = DyingBackend(deaths=10**6)
    monkeypatch.setattr("autotuner.commands.evaluate.get_backend", lambda *a, **k: backend)
    try:
        code = main(["evaluate", "--policy", "fixed_chunk", "--requests", "20"])
    finally:
        backend.release_spare()
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "before the policy ran" in err and "Traceback" not in err


def test_evaluation_processes_lost_twice_is_one_clear_error(tmp_path, monkeypatch):
    from concurrent.futures.process import BrokenProcessPool

    from autotuner import scoring
    from autotuner.archive import Archive

    def lost(*args, **kwargs):
        raise BrokenProcessPool("a child process terminated abruptly")

    monkeypatch.setattr(scoring.LocalPool, "_run_pool", staticmethod(lost))
    archive = Archive(tmp_path / "archive.sqlite")
    code = baseline_path("fixed_chunk").read_text()
    jobs = [scoring.Job(code, {}, scoring.Instance("chat", seed, 50)) for seed in (0, 1)]
    evaluator = scoring.Evaluator(archive, parallelism=2)
    try:
        with pytest.raises(SandboxBroken, match="died twice in a row.*resume"):
            evaluator.evaluate(jobs)
    finally:
        evaluator.close(cancel=True)
    assert archive.get_evaluations([job.key() for job in jobs]) == {}
    archive.close()
