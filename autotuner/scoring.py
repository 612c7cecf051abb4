"""Scoring policies on workload instances: single runs, capacity, and the ladder objective.

The unit of work is a ``Job``: one policy (code + parameter values) on one workload instance,
either at one arrival rate (``run``: the result is ``RunMetrics.to_dict()`` plus ``seconds``) or
searched for its capacity (``capacity``: the highest sustainable rate at which ``share`` of the
window's requests meet their SLO, by bisection over the instance's time-scaled arrivals; the
result is ``capacity``, ``probes`` as (rate, attainment, sustainable), ``at_capacity`` (the
``RunMetrics`` dict of the run at that rate, None when no rate qualified), ``error`` and
``seconds``). Jobs are plain picklable data, so a process pool runs them; every job goes through
``autotuner.evaluate`` (the sandbox with trusted replay) when it is available, for the baseline
exactly as for a proposal. Results are small JSON-able dicts, cached in the archive by
``Job.key()`` so nothing finished is ever run twice.

The objective (``ladder_scores``) is a cheap, smooth stand-in for capacity: for each instance, a
policy's goodput summed over a ladder of rates (factors of the tuned baseline's capacity on that
instance) divided by the tuned baseline's, paired on the same instance; the geometric mean of
those ratios over instances, minus one. It uses the
gate's yardstick: goodput counts requests meeting the same per-request SLO over the same window,
and a rung whose backlog grows earns nothing (``goodput_of``), so deferring work past the
sustainable rate, which raises goodput at an overloaded rung, does not raise the objective.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotuner.archive import canonical, evaluation_key, sha256
from autotuner.config import CampaignConfig, ClusterConfig, SandboxConfig, SLOConfig
from autotuner.sim.engine import ClusterSpec, SimResult
from autotuner.sim.metrics import SLO, RunMetrics, probe_horizon, run_metrics, search_capacity
from autotuner.sim.traces import window_seconds
from autotuner.sim.workload import Workload, load_trace, make_workload


# ------------------------------------------------------------------------------- instances
@dataclass(frozen=True)
class Instance:
    """One workload instance: a scenario with a seed, or a time window of a trace.

    ``window`` is a [start, end) pair of fractions of the trace's duration (how the campaign
    splits a trace); ``window_s`` one in seconds of the trace's clock (``replay --window``). A
    trace instance's ``seed`` is unused (kept 0). ``requests`` caps the instance's size.
    """

    scenario: str | None
    seed: int
    requests: int
    trace: str | None = None
    window: tuple[float, float] | None = None
    window_s: tuple[float, float] | None = None

    @property
    def label(self) -> str:
        if self.trace:
            if self.window_s:
                return f"{Path(self.trace).name}[{self.window_s[0]:g}s:{self.window_s[1]:g}s]"
            if self.window:
                return f"{Path(self.trace).name}[{self.window[0]:g}:{self.window[1]:g}]"
            return Path(self.trace).name
        return f"{self.scenario}@{self.seed}"

    @property
    def family(self) -> str:
        """What the instance is a sample of: the scenario or trace name (for per-workload
        summaries across seeds)."""
        return Path(self.trace).name if self.trace else str(self.scenario)

    def key(self) -> dict[str, Any]:
        d: dict[str, Any] = {"scenario": self.scenario, "seed": self.seed,
                             "requests": self.requests}
        if self.trace:
            d["trace"] = os.path.abspath(self.trace)
            d["window"] = list(self.window or (0.0, 1.0))
            if self.window_s:
                d["window_s"] = list(self.window_s)
        return d

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "seed": self.seed, "requests": self.requests,
                "trace": self.trace, "window": list(self.window) if self.window else None,
                "window_s": list(self.window_s) if self.window_s else None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Instance:
        window, window_s = d.get("window"), d.get("window_s")
        return cls(d.get("scenario"), int(d.get("seed", 0)), int(d["requests"]), d.get("trace"),
                   tuple(window) if window else None,  # type: ignore[arg-type]
                   tuple(window_s) if window_s else None)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=8)
def _trace_duration(path: str) -> float:
    wl = load_trace(path)
    return float(wl.arrival[-1]) if len(wl) else 0.0


@functools.lru_cache(maxsize=64)
def _build_cached(inst: Instance) -> Workload:
    if inst.trace and inst.window_s:
        lo_s, hi_s = inst.window_s
        wl = load_trace(inst.trace, start=lo_s, end=None if math.isinf(hi_s) else hi_s,
                        limit=inst.requests)
        if len(wl) < 2:
            raise ValueError(f"{inst.label}: the window holds fewer than 2 requests")
        return wl
    if inst.trace:
        start, end = window_seconds(_trace_duration(inst.trace), inst.window or (0.0, 1.0))
        wl = load_trace(inst.trace, start=start, end=end, limit=inst.requests)
        if len(wl) < 2:
            raise ValueError(f"{inst.label}: the window holds fewer than 2 requests")
        return wl
    return make_workload(str(inst.scenario), inst.requests, seed=inst.seed)


def build_workload(inst: Instance) -> Workload:
    """The instance's requests at their own (generated or recorded) rate. Cached per process."""
    return _build_cached(inst)


def split_instances(cfg: CampaignConfig) -> dict[str, list[Instance]]:
    """Training, validation and held-out instances, plus the cascade's screening ones."""
    w = cfg.workloads
    out: dict[str, list[Instance]] = {}
    for split, seeds, window in (
        ("train", w.train_seeds, w.train_window),
        ("validation", w.validation_seeds, w.validation_window),
        ("heldout", w.heldout_seeds, w.heldout_window),
    ):
        insts = [Instance(s, seed, w.requests_for(s, split)) for seed in seeds
                 for s in w.scenarios]
        insts += [Instance(None, 0, w.requests, trace, tuple(window))  # type: ignore[arg-type]
                  for trace in w.traces]
        out[split] = insts
    out["screen"] = [Instance(s, w.train_seeds[0], w.requests_for(s)) for s in w.screen]
    return out


# ------------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    """One unit of evaluation. ``kind`` is ``"run"`` (at ``rate``; None = the instance's own)
    or ``"capacity"`` (bisection; ``rate`` is a hint for the first bracket)."""

    code: str
    params: Mapping[str, Any]
    instance: Instance
    kind: str = "run"
    rate: float | None = None
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    slo: SLOConfig = field(default_factory=SLOConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    rel_tol: float = 0.02
    name: str = "<policy>"

    def key(self) -> str:
        """Identity for the evaluation cache: everything that changes the result, and nothing
        that does not (the sandbox backend and the display name do not)."""
        context = {"kind": self.kind, "cluster": asdict(self.cluster),
                   "slo": asdict(self.slo)}
        if self.kind == "capacity":
            context["rel_tol"] = self.rel_tol
            context["hint"] = None if self.rate is None else round(float(self.rate), 6)
        return evaluation_key(sha256(self.code), dict(self.params), self.instance.key(),
                              self.rate if self.kind == "run" else None, context)


# Probes and evaluations stop an overloaded run after the same generous drain.
horizon_for = probe_horizon


# The function that runs one policy on one workload and returns trusted metrics (``_metrics``
# keys). It is the sandbox (``autotuner.evaluate``) for every policy; tests may swap in the
# in-process path for trusted files.
Simulator = Callable[[str, Mapping[str, Any], ClusterSpec, Workload, SLO, float, SandboxConfig,
                      str], dict[str, Any]]


@functools.lru_cache(maxsize=4)
def _backend(name: str) -> Any:
    from autotuner.isolation import get_backend

    return get_backend(None if name == "auto" else name)


def sandbox_description(name: str) -> tuple[str, bool]:
    """(one line naming the backend in use, whether it is the weaker last resort)."""
    backend = _backend(name)
    return backend.describe(), bool(backend.weaker)


def sandboxed_evaluation(code: str, params: Mapping[str, Any], cluster: ClusterSpec,
                         wl: Workload, slo: SLO, horizon: float, sandbox: SandboxConfig,
                         name: str, warm: bool = False) -> Any:
    """One run through the configured sandbox and the trusted replay, as the whole
    ``autotuner.evaluate.Evaluation`` (its ``result`` keeps per-request timestamps, which the
    report's latency distributions need beyond the metrics a job returns)."""
    from autotuner.evaluate import evaluate
    from autotuner.isolation import Limits

    limits = Limits(wall_s=sandbox.timeout_s, cpu_s=max(1, int(sandbox.timeout_s)),
                    memory_bytes=int(sandbox.memory_mb) << 20)
    return evaluate(code, name=name, params=params, cluster=cluster, workload=wl, slo=slo,
                    horizon=horizon, sandbox=_backend(sandbox.backend), limits=limits, warm=warm)


def _sandboxed(code: str, params: Mapping[str, Any], cluster: ClusterSpec, wl: Workload,
               slo: SLO, horizon: float, sandbox: SandboxConfig, name: str) -> dict[str, Any]:
    from autotuner.evaluate import evaluate
    from autotuner.isolation import Limits

    limits = Limits(wall_s=sandbox.timeout_s, cpu_s=max(1, int(sandbox.timeout_s)),
                    memory_bytes=int(sandbox.memory_mb) << 20)
    ev = evaluate(code, name=name, params=params, cluster=cluster, workload=wl, slo=slo,
                  horizon=horizon, sandbox=_backend(sandbox.backend), limits=limits, warm=True)
    if not ev.ok:
        return _failure(wl, "; ".join(ev.reasons) or ev.verdict, slo)
    return _metrics(wl, ev.result, slo)


def in_process(code: str, params: Mapping[str, Any], cluster: ClusterSpec, wl: Workload,
                slo: SLO, horizon: float, sandbox: SandboxConfig, name: str) -> dict[str, Any]:
    """Trusted files only (tests): runs the policy in this process, no sandbox."""
    from autotuner.policy import PolicyFileError, read_policy_source
    from autotuner.simulation import run_policy

    try:
        source = read_policy_source(code, name)
        result = run_policy(source, cluster, wl, params=params, horizon=horizon)
    except PolicyFileError as exc:
        return _failure(wl, str(exc), slo)
    except Exception as exc:  # noqa: BLE001 - the policy raised while loading
        return _failure(wl, f"policy error: {type(exc).__name__}: {exc}", slo)
    return _metrics(wl, result, slo)


def simulator_for(backend: str) -> Simulator:
    """The sandbox, always: untrusted code never runs in this process by configuration.
    (``in_process`` exists for tests of trusted files, passed explicitly.)"""
    return _sandboxed


def _failure(wl: Workload, reason: str, slo: SLO | None = None) -> dict[str, Any]:
    return RunMetrics.failed(wl, reason, slo.kind if slo else "deadline").to_dict()


def _metrics(wl: Workload, result: SimResult, slo: SLO) -> dict[str, Any]:
    """Trusted metrics from a trusted SimResult: ``RunMetrics`` as a dict (archive rows)."""
    return run_metrics(wl, result, slo).to_dict()


def run_at(job: Job, rate: float | None, simulator: Simulator) -> dict[str, Any]:
    base = build_workload(job.instance)
    wl = base if rate is None else base.with_rate(rate)
    slo = job.slo.slo()
    return simulator(job.code, job.params, job.cluster.spec(), wl, slo, horizon_for(wl, slo),
                     job.sandbox, job.name)


def execute_job(job: Job, simulator: Simulator | None = None) -> dict[str, Any]:
    """Run one job (in a pool worker). Never raises for a policy's failure: the reason is the
    result's ``error``. Infrastructure failures (the sandbox itself broken) do raise."""
    simulator = simulator or simulator_for(job.sandbox.backend)
    t0 = time.perf_counter()
    if job.kind == "run":
        out = run_at(job, job.rate, simulator)
    elif job.kind == "capacity":
        start = job.rate or build_workload(job.instance).rate
        found = search_capacity(lambda rate: RunMetrics.from_dict(run_at(job, rate, simulator)),
                                start, job.slo.share, job.rel_tol)
        out = {"error": found.error, "capacity": found.rate,
               "probes": [list(p) for p in found.probes],
               "at_capacity": found.at_capacity.to_dict() if found.at_capacity else None}
    else:
        raise ValueError(f"unknown job kind {job.kind!r}")
    out["seconds"] = time.perf_counter() - t0
    return out


def _execute_in_worker(job: Job) -> dict[str, Any]:
    return execute_job(job)


def _ignore_sigint() -> None:
    """Pool workers leave Ctrl-C to the campaign loop, which stops them in order, and exit as
    soon as the campaign process is gone (``kill -9``): otherwise they would run what is left
    of their queue, with sandboxes, for nobody."""
    import multiprocessing
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the pid the pool was started from (the parent may already be gone when this runs)
    started_by = multiprocessing.parent_process()
    parent = started_by.pid if started_by is not None else os.getppid()

    def watch() -> None:
        while os.getppid() == parent:  # reparented once the parent died
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


# ------------------------------------------------------------------------------- the evaluator
class NoCache:
    """Stands in for the archive where nothing is cached (``autotuner replay``)."""

    def get_evaluations(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {}

    def put_evaluation(self, key: str, **kwargs: Any) -> None:
        pass


class Evaluator:
    """Runs jobs on a process pool, through the archive's evaluation cache.

    ``evaluate(jobs)`` returns results in order; cached results come back without running, new
    ones are stored (one transaction each) as soon as they finish, so a kill loses at most the
    jobs in flight.
    """

    def __init__(self, archive: Any, parallelism: int = 2,
                 simulator: Simulator | None = None):
        self.archive = archive
        self.parallelism = max(1, parallelism)
        self.simulator = simulator
        self._pool: Any = None
        self.ran = 0  # jobs run (not from the cache)
        self.cached = 0
        self.seconds = 0.0  # summed job seconds (inside the workers)
        self.sims = 0  # simulations run: one per run job, one per capacity probe
        self.wall = 0.0  # wall seconds spent in evaluate() running jobs

    def wall_per_sim(self, default: float = 0.3) -> float:
        """Measured wall seconds per simulation at this parallelism (for budgeting)."""
        return self.wall / self.sims if self.sims >= 20 else default

    def _get_pool(self) -> Any:
        if self._pool is None and self.parallelism > 1 and self.simulator is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(
                max_workers=self.parallelism, mp_context=multiprocessing.get_context("spawn"),
                initializer=_ignore_sigint,
            )
        return self._pool

    def start(self) -> None:
        """Start the workers now (before any threads exist in this process)."""
        self._get_pool()

    def close(self, cancel: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=not cancel, cancel_futures=cancel)
            self._pool = None

    @staticmethod
    def _run_pool(pool: Any, jobs: Sequence[Job], run: Sequence[int],
                  store: Callable[[int, dict[str, Any]], None]) -> None:
        from concurrent.futures import FIRST_COMPLETED, wait

        # longest first (capacity jobs, then the highest rates) so the pool's tail is short
        order = sorted(run, key=lambda i: (jobs[i].kind != "capacity", -(jobs[i].rate or 0.0)))
        futures = {pool.submit(_execute_in_worker, jobs[i]): i for i in order}
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
        run = []
        for i in todo:
            if keys[i] not in first:
                first[keys[i]] = i
                run.append(i)

        def store(i: int, result: dict[str, Any]) -> None:
            job = jobs[i]
            self.archive.put_evaluation(
                keys[i], candidate_id=candidate_id, code_sha=sha256(job.code),
                params=dict(job.params), workload=job.instance.label,
                rate=job.rate, result=result, seconds=float(result.get("seconds", 0.0)),
            )
            self.ran += 1
            self.seconds += float(result.get("seconds", 0.0))
            self.sims += len(result.get("probes") or ()) if jobs[i].kind == "capacity" else 1
            results[i] = result
            if on_result:
                on_result(i, result)

        pool = self._get_pool()
        if pool is None or len(run) <= 1:
            for i in run:
                store(i, execute_job(jobs[i], self.simulator))
        else:
            from concurrent.futures.process import BrokenProcessPool

            left = list(run)
            for attempt in range(2):
                try:
                    self._run_pool(self._get_pool(), jobs, left, store)
                    break
                except BrokenProcessPool:
                    # a worker died (killed from outside, out of memory): start a fresh pool
                    # once and run what has no result yet; a second death is an error
                    self.close(cancel=True)
                    left = [i for i in left if results[i] is None]
                    if attempt:
                        from autotuner.isolation import SandboxBroken

                        raise SandboxBroken(
                            "an evaluation process died twice in a row (killed from outside, "
                            "or out of memory); the evaluations it was running were not "
                            "recorded, and `autotuner resume` runs them again") from None
        for i in todo:
            if results[i] is None:
                results[i] = results[first[keys[i]]]
        if run:
            self.wall += time.perf_counter() - t_start
        return [r if r is not None else {} for r in results]


# ------------------------------------------------------------------------------- objective
# A rung's goodput is credited in full up to the backlog limit, and not at all from this multiple
# of it (linearly in between): a cliff at the limit would make the objective jump on noise (the
# gate applies the limit itself), and a starvation policy's overloaded rungs grow their backlog
# far past it (chat, deferring the longest 7 % at 1.2x the baseline's capacity: ~15 %).
FADE_MULTIPLE = 5.0


def sustained_share(result: Mapping[str, Any]) -> float:
    """How much of a run's goodput the objective credits (see ``FADE_MULTIPLE``). Legacy runs
    and results from before the sustainability test are credited in full."""
    if result.get("slo_kind") == "legacy" or "backlog_growth" not in result:
        return 1.0
    growth, limit = result["backlog_growth"], result.get("backlog_limit") or 0.0
    if growth is None:  # a failed run (infinite growth, stored as null)
        return 0.0
    if growth <= limit:
        return 1.0
    if limit <= 0:
        return 0.0
    return min(1.0, max(0.0, (FADE_MULTIPLE - growth / limit) / (FADE_MULTIPLE - 1.0)))


def goodput_of(result: Mapping[str, Any], kind: str) -> float:
    """A ladder rung's credit: goodput (requests/s or tokens/s meeting the SLO, over the window)
    times ``sustained_share``."""
    good = float(result["goodput_rps" if kind == "requests" else "goodput_tok_s"])
    return good * sustained_share(result)


def ladder_jobs(code: str, params: Mapping[str, Any], instances: Sequence[Instance],
                capacities: Mapping[str, float], cfg: CampaignConfig, name: str = "<policy>"
                ) -> list[Job]:
    """One ``run`` job per instance and ladder rung, at ``factor * capacity[instance]``."""
    return [
        Job(code, dict(params), inst, "run", capacities[inst.label] * f, cfg.cluster, cfg.slo,
            cfg.sandbox, name=name)
        for inst in instances for f in cfg.objective.ladder
    ]


def capacity_jobs(code: str, params: Mapping[str, Any], instances: Sequence[Instance],
                  cfg: CampaignConfig, hints: Mapping[str, float] | None = None,
                  name: str = "<policy>") -> list[Job]:
    return [
        Job(code, dict(params), inst, "capacity", (hints or {}).get(inst.label), cfg.cluster,
            cfg.slo, cfg.sandbox, rel_tol=cfg.gate.capacity_rel_tol, name=name)
        for inst in instances
    ]


MIN_RATIO = 0.01


@dataclass
class LadderScore:
    """The objective on a set of instances, with its evidence."""

    objective: float  # geometric mean over instances of (ladder goodput / reference), minus 1
    per_instance: dict[str, float]
    detail: dict[str, dict[str, Any]]
    error: str | None = None


def ladder_scores(results: Sequence[Mapping[str, Any]], instances: Sequence[Instance],
                  reference: Mapping[str, Sequence[float]], cfg: CampaignConfig) -> LadderScore:
    """Score ladder results (as ``ladder_jobs`` ordered them) against reference goodputs per
    instance and rung. An error anywhere fails the whole score with that reason.

    Instances are combined as the gate combines capacity ratios, by a geometric mean (a ratio
    below ``MIN_RATIO`` counts as that, so one lost instance weighs heavily but finitely): one
    workload with a large ratio cannot carry the mean."""
    rungs = len(cfg.objective.ladder)
    per: dict[str, float] = {}
    detail: dict[str, dict[str, Any]] = {}
    for n, inst in enumerate(instances):
        chunk = results[n * rungs:(n + 1) * rungs]
        for r in chunk:
            if r.get("error"):
                return LadderScore(-1.0, per, detail, f"{inst.label}: {r['error']}")
        good = [goodput_of(r, cfg.objective.goodput) for r in chunk]
        ref = list(reference[inst.label])
        total_ref = sum(ref)
        per[inst.label] = (sum(good) / total_ref - 1.0) if total_ref > 0 else 0.0
        detail[inst.label] = {
            "goodput": good, "reference": ref,
            "attainment": [r["attainment"] for r in chunk],
            "rates": [r["rate"] for r in chunk],
        }
    ratios = np.maximum(1.0 + np.array(list(per.values())), MIN_RATIO)
    objective = float(np.exp(np.log(ratios).mean()) - 1.0) if per else 0.0
    return LadderScore(objective, per, detail)


def describe_params(params: Mapping[str, Any]) -> str:
    return canonical(params)
