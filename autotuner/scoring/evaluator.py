"""Running jobs: each through the sandbox (or, for trusted files in tests, in this process), one
at a time or on a process pool here (``LocalPool``; Ray tasks are ``ray_executor.RayTasks``),
through the archive's evaluation cache (``Evaluator``).

A ``run`` job's result is ``RunMetrics.to_dict()`` plus ``seconds``; a ``capacity`` job's is
``capacity`` (the highest sustainable rate at which ``share`` of the window's requests meet their
SLO, by bisection over the instance's time-scaled arrivals), ``probes`` as (rate, attainment,
sustainable), ``at_capacity`` (the ``RunMetrics`` dict of the run at that rate, None when no rate
qualified), ``error`` and ``seconds``. Results are small JSON-able dicts because they are the
archive's rows: cached by ``Job.key()``, so nothing finished is ever run twice, and stored one
transaction each as soon as they finish, so a kill loses at most the jobs in flight.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from autotuner.config import SandboxConfig
from autotuner.evaluate import Evaluation, evaluate
from autotuner.identity import sha256
from autotuner.isolation import Backend, Limits, SandboxBroken, get_backend
from autotuner.policy import PolicyFileError, read_policy_source
from autotuner.scoring.executors import Executor, Store, longest_first
from autotuner.scoring.jobs import Job, build_workload, extended, horizon_for
from autotuner.session import Session
from autotuner.sim.engine import ClusterSpec
from autotuner.sim.metrics import (
    SLO,
    CapacityResult,
    RunMetrics,
    run_metrics,
    search_capacity_settled,
)
from autotuner.sim.workload import Workload
from autotuner.simulation import run_policy

# The function that runs one policy on one workload and returns its trusted metrics. It is the
# sandbox (``sandboxed``) for every policy; tests may pass ``in_process`` for trusted files.
Simulator = Callable[[str, Mapping[str, Any], ClusterSpec, Workload, SLO, float, SandboxConfig,
                      str], RunMetrics]


RECENT_CALLS = 200  # evaluate() calls kept for the recent speed (a trial is one call)
# Decisions per line of a session worker's log. The trusted replay starts on the first line, so
# it runs beside the worker's simulation (on another core, or for a larger share of a busy one)
# instead of after it: a training run at the default sizes makes ~2,400 decisions, which the
# worker's default of 2,048 per line sent in one or two lines at the end.
SESSION_BATCH = 256

# ------------------------------------------------------------------------------- one run
@functools.lru_cache(maxsize=4)
def sandbox_backend(name: str) -> Backend:
    """The isolation backend a config names (``"auto"``: the strongest that works here), made
    once per process so its warm spare worker is reused."""
    return get_backend(None if name == "auto" else name)


def sandbox_description(name: str) -> tuple[str, bool]:
    """(one line naming the backend in use, whether it is the weaker last resort)."""
    backend = sandbox_backend(name)
    return backend.describe(), bool(backend.weaker)


def sandbox_limits(sandbox: SandboxConfig) -> Limits:
    """One run's limits under the configured sandbox."""
    return Limits(wall_s=sandbox.timeout_s, cpu_s=max(1, int(sandbox.timeout_s)),
                  memory_bytes=int(sandbox.memory_mb) << 20)


def sandboxed_evaluation(code: str, params: Mapping[str, Any], cluster: ClusterSpec,
                         wl: Workload, slo: SLO, horizon: float, sandbox: SandboxConfig,
                         name: str, warm: bool = False) -> Evaluation:
    """One policy run under the configured sandbox's limits, replayed and measured by the
    trusted side (``autotuner.evaluate``); ``warm`` keeps a spare worker started for the next."""
    return evaluate(code, name=name, params=params, cluster=cluster, workload=wl, slo=slo,
                    horizon=horizon, sandbox=sandbox_backend(sandbox.backend),
                    limits=sandbox_limits(sandbox), warm=warm)


def sandboxed(code: str, params: Mapping[str, Any], cluster: ClusterSpec, wl: Workload,
              slo: SLO, horizon: float, sandbox: SandboxConfig, name: str) -> RunMetrics:
    """The ``Simulator`` every policy runs through: the sandbox, then the trusted replay."""
    ev = sandboxed_evaluation(code, params, cluster, wl, slo, horizon, sandbox, name, warm=True)
    if not ev.ok:
        return RunMetrics.failed(wl, "; ".join(ev.reasons) or ev.verdict, slo.kind)
    return run_metrics(wl, ev.result, slo)


class SessionSimulator:
    """The sandbox as ``sandboxed`` runs it, but consecutive runs of the same policy file share
    one warm worker (``autotuner.session.Session``), whatever their params: a candidate's
    screening, every tuning trial's ladder rungs and its capacity probes pay one interpreter
    start instead of one per run (or per trial). Every run still loads a fresh policy module
    with its own params, is replayed and measured by the trusted side, and gets the same
    ``RunMetrics`` as alone."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._session: Session | None = None
        self._next: tuple[tuple[Any, ...], Workload, float, Mapping[str, Any]] | None = None
        self.sessions_started = 0  # workers' policy files taken up (tests count them)

    @staticmethod
    def _key_of(code: str, cluster: ClusterSpec, sandbox: SandboxConfig, name: str
                ) -> tuple[Any, ...]:
        return (sha256(code), repr(cluster), repr(sandbox), name)

    def expect(self, job: Job) -> None:
        """``job``, a run job, is what the call after the next one runs: the next call queues
        it on the worker behind its own run (``Session.expect``) when both share a worker."""
        wl, _, horizon = run_inputs(job, job.rate)
        self._next = (self._key_of(job.code, job.cluster.spec(), job.sandbox, job.name), wl,
                      horizon, job.params)

    def __call__(self, code: str, params: Mapping[str, Any], cluster: ClusterSpec,
                 wl: Workload, slo: SLO, horizon: float, sandbox: SandboxConfig,
                 name: str) -> RunMetrics:
        key = self._key_of(code, cluster, sandbox, name)
        expected, self._next = self._next, None
        if self._session is None or key != self._key:
            self.close()
            self._session = Session(code, name=name, params=params, cluster=cluster,
                                    sandbox=sandbox_backend(sandbox.backend),
                                    limits=sandbox_limits(sandbox), with_metrics=False,
                                    batch=SESSION_BATCH)
            self._key = key
            self.sessions_started += 1
        if expected is not None and expected[0] == key:
            self._session.expect(expected[1], horizon=expected[2], params=expected[3])
        ev = self._session.run(wl, slo=slo, horizon=horizon, params=params)
        if not ev.ok:
            return RunMetrics.failed(wl, "; ".join(ev.reasons) or ev.verdict, slo.kind)
        return run_metrics(wl, ev.result, slo)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session, self._key = None, None


def in_process(code: str, params: Mapping[str, Any], cluster: ClusterSpec, wl: Workload,
               slo: SLO, horizon: float, sandbox: SandboxConfig, name: str) -> RunMetrics:
    """Trusted files only (tests): runs the policy in this process, no sandbox."""
    try:
        source = read_policy_source(code, name)
        result = run_policy(source, cluster, wl, params=params, horizon=horizon)
    except PolicyFileError as exc:
        return RunMetrics.failed(wl, str(exc), slo.kind)
    except Exception as exc:  # noqa: BLE001 - the policy raised while loading
        return RunMetrics.failed(wl, f"policy error: {type(exc).__name__}: {exc}", slo.kind)
    return run_metrics(wl, result, slo)


def simulator_for() -> Simulator:
    """The sandbox, always: untrusted code never runs in this process by configuration.
    (``in_process`` exists for tests of trusted files, passed explicitly.)"""
    return sandboxed


def run_inputs(job: Job, rate: float | None, multiple: int = 1) -> tuple[Workload, SLO, float]:
    """(workload, SLO, horizon) of the job's policy on its instance at ``rate`` (None: the
    instance's own), the instance extended to ``multiple`` times its requests."""
    inst = extended(job.instance, multiple)
    if inst is None:
        raise ValueError(f"{job.instance.label}: a trace window cannot be extended")
    base = build_workload(inst)
    wl = base if rate is None else base.with_rate(rate)
    slo = job.slo.slo()
    return wl, slo, horizon_for(wl, slo)


def run_at(job: Job, rate: float | None, simulator: Simulator, multiple: int = 1
           ) -> RunMetrics:
    """The job's policy run as ``run_inputs`` says."""
    wl, slo, horizon = run_inputs(job, rate, multiple)
    return simulator(job.code, job.params, job.cluster.spec(), wl, slo, horizon, job.sandbox,
                     job.name)


def execute_job(job: Job, simulator: Simulator | None = None) -> dict[str, Any]:
    """Run one job (in a pool worker) and return its archive row: the typed result
    (``RunMetrics``, or ``CapacityResult`` for a capacity job) as plain data, plus ``seconds``.
    Never raises for a policy's failure: the reason is the result's ``error``. Infrastructure
    failures (the sandbox itself broken) do raise."""
    simulator = simulator or simulator_for()
    t0 = time.perf_counter()
    if job.kind == "run":
        out = run_at(job, job.rate, simulator).to_dict()
    elif job.kind == "capacity":
        start = job.rate or build_workload(job.instance).rate
        multiple = 1  # the longest run the instance can grow to, within the job's allowance
        while 2 * multiple <= job.max_multiple and extended(job.instance, 2 * multiple):
            multiple *= 2
        found = search_capacity_settled(
            lambda rate, m: run_at(job, rate, simulator, m), start, job.slo.share, job.rel_tol,
            max_multiple=multiple, first_multiple=job.first_multiple)
        out = _capacity_row(found)
    else:
        raise ValueError(f"unknown job kind {job.kind!r}")
    out["seconds"] = time.perf_counter() - t0
    return out


def _capacity_row(found: CapacityResult) -> dict[str, Any]:
    return {"error": found.error, "capacity": found.rate,
            "probes": [list(p) for p in found.probes],
            "requests_multiple": found.multiple, "settled": found.settled,
            "length_checks": [list(c) for c in found.length_checks],
            "at_capacity": found.at_capacity.to_dict() if found.at_capacity else None}


# ------------------------------------------------------------------------------- the pool
_POOL_SESSIONS: SessionSimulator | None = None  # a pool process's warm worker, kept across jobs


def execute_in_worker(job: Job, sessions: bool = False) -> dict[str, Any]:
    """One job in a pool process or a Ray worker, which keeps its warm sandbox worker (when
    ``sessions``) for the next job of the same policy and params."""
    global _POOL_SESSIONS
    if not sessions:
        return execute_job(job)
    if _POOL_SESSIONS is None:
        _POOL_SESSIONS = SessionSimulator()
    return execute_job(job, _POOL_SESSIONS)


def _ignore_sigint() -> None:
    """Pool workers leave Ctrl-C to the campaign loop, which stops them in order, and exit as
    soon as the campaign process is gone (``kill -9``): otherwise they would run what is left
    of their queue, with sandboxes, for nobody."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the pid the pool was started from (the parent may already be gone when this runs)
    started_by = multiprocessing.parent_process()
    parent = started_by.pid if started_by is not None else os.getppid()

    def watch() -> None:
        while os.getppid() == parent:  # reparented once the parent died
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class NoCache:
    """Stands in for the archive where nothing is cached (``autotuner replay``)."""

    def get_evaluations(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {}

    def put_evaluation(self, key: str, **kwargs: Any) -> None:
        pass


class LocalPool(Executor):
    """A process pool on this machine (``parallelism`` spawned processes), or this process
    alone when the parallelism is 1, a batch holds one job, or a test passes its own
    ``simulator``. A pool whose worker died (killed from outside, out of memory) is replaced
    once. ``sessions``: each process keeps one warm sandbox worker for consecutive runs of the
    same policy and params (``SessionSimulator``)."""

    def __init__(self, parallelism: int = 2, simulator: Simulator | None = None,
                 sessions: bool = True):
        self.parallelism = max(1, parallelism)
        self.sessions = sessions
        self.simulator = simulator
        self._local_sessions: SessionSimulator | None = None
        if simulator is None and sessions:
            self._local_sessions = SessionSimulator()
            self._simulator_here: Simulator | None = self._local_sessions
        else:
            self._simulator_here = simulator  # what runs jobs in this process
        self._pool: ProcessPoolExecutor | None = None
        self.description = (f"local, {self.parallelism} evaluation process(es)"
                            if self.parallelism > 1 and simulator is None else "local, in process")

    def _get_pool(self) -> ProcessPoolExecutor | None:
        if self._pool is None and self.parallelism > 1 and self.simulator is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.parallelism, mp_context=multiprocessing.get_context("spawn"),
                initializer=_ignore_sigint,
            )
        return self._pool

    def start(self) -> None:
        self._get_pool()

    def close(self, cancel: bool = False) -> None:
        if self._local_sessions is not None:
            self._local_sessions.close()
        if self._pool is not None:
            self._pool.shutdown(wait=not cancel, cancel_futures=cancel)
            self._pool = None

    def _run_pool(self, pool: ProcessPoolExecutor, jobs: Sequence[Job], run: Sequence[int],
                  store: Store) -> None:
        futures = {pool.submit(execute_in_worker, jobs[i], self.sessions): i
                   for i in longest_first(jobs, run)}
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    store(futures[fut], fut.result())
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise

    def run(self, jobs: Sequence[Job], indices: Sequence[int], store: Store) -> None:
        pool = self._get_pool()
        if pool is None or len(indices) <= 1:
            expect = getattr(self._simulator_here, "expect", None)  # a SessionSimulator's
            for n, i in enumerate(indices):
                after = jobs[indices[n + 1]] if n + 1 < len(indices) else None
                if (expect is not None and after is not None and jobs[i].kind == "run"
                        and after.kind == "run"):
                    expect(after)  # one simulator call each: the next one runs ahead
                store(i, execute_job(jobs[i], self._simulator_here))
            return
        done: set[int] = set()

        def keep(i: int, result: dict[str, Any]) -> None:
            done.add(i)
            store(i, result)

        left = list(indices)
        for attempt in range(2):
            try:
                self._run_pool(self._get_pool(), jobs, left, keep)
                return
            except BrokenProcessPool:
                # a worker died (killed from outside, out of memory): start a fresh pool once
                # and run what has no result yet; a second death is an error
                self.close(cancel=True)
                left = [i for i in left if i not in done]
                if attempt:
                    raise SandboxBroken(
                        "an evaluation process died twice in a row (killed from outside, or "
                        "out of memory); the evaluations it was running were not recorded, and "
                        "`autotuner resume` runs them again") from None


class Evaluator:
    """Runs jobs on an executor (``LocalPool`` unless given one: ``RayTasks`` on a cluster),
    through the archive's evaluation cache.

    ``evaluate(jobs)`` returns results in order; cached results come back without running, a job
    repeated within one call runs once, and new results are stored (by key, once, here on the
    driver) as soon as they finish.
    """

    def __init__(self, archive: Any, parallelism: int = 2,
                 simulator: Simulator | None = None, sessions: bool = True,
                 executor: Executor | None = None):
        self.archive = archive
        self.simulator = simulator
        self.executor = executor or LocalPool(parallelism, simulator, sessions)
        self.ran = 0  # jobs run (not from the cache)
        self.cached = 0
        self.seconds = 0.0  # summed job seconds (inside the workers)
        self.sims = 0  # simulations run: one per run job, one per capacity probe
        self.wall = 0.0  # wall seconds spent in evaluate() running jobs
        # (wall seconds, runs) of the latest calls that ran single runs (a ladder, a trial): the
        # speed now, on a machine whose load changes (``campaign.reserve``)
        self.recent: deque[tuple[float, int]] = deque(maxlen=RECENT_CALLS)

    def wall_per_sim(self, default: float = 0.3) -> float:
        """Measured wall seconds per simulation at this parallelism (for budgeting)."""
        return self.wall / self.sims if self.sims >= 20 else default

    def recent_wall_per_sim(self, at_least: int = 60) -> float | None:
        """Wall seconds per run over the latest calls of single runs (at least ``at_least``
        runs of them; None before that many ran)."""
        wall, sims = 0.0, 0
        for call_wall, call_sims in reversed(self.recent):
            wall, sims = wall + call_wall, sims + call_sims
            if sims >= at_least:
                return wall / sims
        return None

    def start(self) -> None:
        """Start the workers now (before any threads exist in this process)."""
        self.executor.start()

    def close(self, cancel: bool = False) -> None:
        self.executor.close(cancel)

    def evaluate(self, jobs: Sequence[Job], candidate_id: str | None = None,
                 on_result: Callable[[int, dict[str, Any]], None] | None = None
                 ) -> list[dict[str, Any]]:
        t_start = time.perf_counter()
        keys = [job.key() for job in jobs]
        found = self.archive.get_evaluations(keys)
        results: list[dict[str, Any] | None] = [found.get(k) for k in keys]
        todo = [i for i, r in enumerate(results) if r is None]
        self.cached += len(jobs) - len(todo)
        # first occurrence runs; duplicates within one call share its result
        first: dict[str, int] = {}
        for i in todo:
            first.setdefault(keys[i], i)
        run = list(first.values())
        sims0 = self.sims

        def store(i: int, result: dict[str, Any]) -> None:
            if results[i] is not None:
                return  # an executor that reported a job twice: the first result stands
            self._store(jobs[i], keys[i], result, candidate_id)
            results[i] = result
            if on_result:
                on_result(i, result)

        if run:
            self.executor.run(jobs, run, store)
        for i in todo:
            if results[i] is None:
                results[i] = results[first[keys[i]]]
        if run:
            self.wall += time.perf_counter() - t_start
            if all(jobs[i].kind == "run" for i in run):  # capacity probes differ in size
                self.recent.append((time.perf_counter() - t_start, self.sims - sims0))
        return [r if r is not None else {} for r in results]

    def _store(self, job: Job, key: str, result: dict[str, Any],
               candidate_id: str | None) -> None:
        """Archive one new result (one transaction) and count it."""
        seconds = float(result.get("seconds", 0.0))
        self.archive.put_evaluation(
            key, candidate_id=candidate_id, code_sha=sha256(job.code), params=dict(job.params),
            workload=job.instance.label, rate=job.rate, result=result, seconds=seconds,
        )
        self.ran += 1
        self.seconds += seconds
        self.sims += len(result.get("probes") or ()) if job.kind == "capacity" else 1
