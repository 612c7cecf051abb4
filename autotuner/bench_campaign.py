"""The campaign's speed, as ratios against a reference in the same process: proposals per minute
and simulations per second of a small campaign's search through one sandbox worker per run (the
main of the issue that asked for speed), warm-worker sessions, and sessions with early rejection
(and trial pruning), with the time split (sandbox start and IPC, worker simulation, trusted
replay, tuner, proposer); ``--job-mix`` times a fixed job mix instead (``campaign_throughput``).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autotuner.resources import baseline_path


def campaign_jobs(candidates: int = 3, requests: int | None = None) -> list[Any]:
    """The standard small campaign-like job mix: for each of ``candidates`` tuning trials (the
    fixed-chunk baseline at different chunk sizes, so each is its own policy and params), one
    capacity job (bisection) and one ladder run per rung on every default training instance, at
    the rung's factor of the instance's own rate. ``requests`` caps each instance's size."""
    from dataclasses import replace as with_fields

    from autotuner.config import CampaignConfig
    from autotuner.scoring.jobs import Job, build_workload, split_instances
    from autotuner.scoring.ladder import ladder_jobs

    cfg = CampaignConfig()
    instances = split_instances(cfg)["train"]
    if requests:
        instances = [with_fields(i, requests=min(i.requests, requests)) for i in instances]
    code = baseline_path("fixed_chunk").read_text()
    rates = {i.label: build_workload(i).rate for i in instances}
    jobs: list[Any] = []
    for n in range(candidates):
        params = {"chunk_size": 256 * (n + 1)}
        jobs += [Job(code, params, i, "capacity", rates[i.label], cfg.cluster, cfg.slo,
                     cfg.sandbox, name=f"trial{n}") for i in instances]
        jobs += ladder_jobs(code, params, instances, rates, cfg, name=f"trial{n}")
    return jobs


def _cpu_seconds() -> float:
    """CPU time of this process and of the sandbox workers (as they report it, from start to
    their last result; a killed worker is never reaped by us, so rusage cannot say): on a
    machine others load, what an evaluation costs is its CPU. With parallelism 1 only."""
    from autotuner.evaluate import TIMINGS

    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime + TIMINGS["worker_cpu_s"]


def _campaign_pass(jobs: Sequence[Any], sessions: bool, parallelism: int) -> dict[str, Any]:
    from autotuner.evaluate import TIMINGS, reset_timings
    from autotuner.scoring.evaluator import Evaluator, NoCache

    evaluator = Evaluator(NoCache(), parallelism=parallelism, sessions=sessions)
    reset_timings()
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    try:
        results = evaluator.evaluate(jobs)
    finally:
        evaluator.close()
    wall = time.perf_counter() - t0
    row: dict[str, Any] = {"wall_s": wall, "cpu_s": _cpu_seconds() - cpu0, "jobs": len(jobs),
                           "evaluations": evaluator.sims,
                           "evaluations_per_s": evaluator.sims / wall,
                           "errors": sum(1 for r in results if r.get("error")),
                           "results": results}
    if parallelism == 1:  # the split is measured in this process only
        # CPU seconds, which add up (the worker's and the replay's wall times overlap): the
        # worker's start (interpreter, imports, workload, pipe) is its CPU beyond its simulation
        own = row["cpu_s"] - TIMINGS["worker_cpu_s"]
        split = {"sandbox_start_and_ipc_s": max(0.0, TIMINGS["worker_cpu_s"]
                                                - TIMINGS["worker_sim_s"]),
                 "worker_simulation_s": TIMINGS["worker_sim_s"],
                 "trusted_replay_s": TIMINGS["replay_s"],
                 "other_s": max(0.0, own - TIMINGS["replay_s"])}
        row["split"] = split
        row["runs_alone"] = int(TIMINGS["alone"])
    return row


def campaign_throughput(candidates: int = 3, requests: int | None = None, rounds: int = 1,
                        parallelism: int = 1) -> dict[str, Any]:
    """Evaluations per second of the campaign job mix, today's path (a fresh sandbox worker per
    run) against sessions (one warm worker per policy and params), in alternating passes in this
    process so that machine load hits both alike; the ratio is of summed evaluations over summed
    wall time. Also whether both paths produced the same results (they must)."""
    jobs = campaign_jobs(candidates, requests)
    passes: dict[str, list[dict[str, Any]]] = {"one_worker_per_run": [], "sessions": []}
    for _ in range(max(1, rounds)):
        passes["one_worker_per_run"].append(_campaign_pass(jobs, False, parallelism))
        passes["sessions"].append(_campaign_pass(jobs, True, parallelism))
    out: dict[str, Any] = {
        "mix": f"{candidates} trials of fixed_chunk x (capacity + ladder) on the default "
               f"training instances ({len(jobs)} jobs), parallelism {parallelism}, "
               f"{rounds} round(s)",
        "paths": {},
    }
    for path, rows in passes.items():
        wall = sum(r["wall_s"] for r in rows)
        evals = sum(r["evaluations"] for r in rows)
        cpu = sum(r["cpu_s"] for r in rows) if parallelism == 1 else None  # others: not seen
        summary: dict[str, Any] = {"wall_s": wall, "evaluations": evals,
                                   "evaluations_per_s": evals / wall, "cpu_s": cpu,
                                   "evaluations_per_cpu_s": evals / cpu if cpu else None,
                                   "errors": sum(r["errors"] for r in rows)}
        if "split" in rows[0]:
            summary["split"] = {k: sum(r["split"][k] for r in rows) for k in rows[0]["split"]}
            summary["runs_alone"] = sum(r["runs_alone"] for r in rows)
        out["paths"][path] = summary
    old, new = out["paths"]["one_worker_per_run"], out["paths"]["sessions"]
    out["ratio"] = new["evaluations_per_s"] / old["evaluations_per_s"]
    out["cpu_ratio"] = (new["evaluations_per_cpu_s"] / old["evaluations_per_cpu_s"]
                        if parallelism == 1 else None)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in
             passes["one_worker_per_run"][0]["results"]]
    out["results_identical"] = strip == [{k: v for k, v in r.items() if k != "seconds"}
                                         for r in passes["sessions"][0]["results"]]
    return out


# ------------------------------------------------------------------------------- a small campaign
CAMPAIGN_PATHS = (
    # name, warm-worker sessions, early rejection in screening, pruned trials; what the path is
    ("one_worker_per_run", False, False, False,
     "main when issue 12 was filed: a fresh sandbox worker per run, every trial in full"),
    ("sessions", True, False, False, "warm-worker sessions, every trial in full"),
    ("sessions_halving", True, True, False,
     "the default: sessions and early rejection in screening"),
    ("sessions_halving_pruning", True, True, True,
     "opt-in: also prune trials (search.prune_trials; changes tuned results)"),
)


def small_campaign_config(results_dir: str, proposals: int, trials: int,
                          requests: int | None, seed: int, early_rejection: bool,
                          prune_trials: bool = False) -> Any:
    """The standard small campaign: the default config (offline proposer, the five built-in
    scenarios, one seed island, the default ladder and thresholds) with fewer proposals and
    trials, each training instance capped at ``requests``, parallelism 1 (the time split is
    measured in this process), and no finalisation (the bench times the search), so no gate
    references either (a campaign measures them before its search)."""
    from autotuner.config import CampaignConfig, load_config

    w = CampaignConfig().workloads
    sizes = {s: min(n, requests) if requests else n for s, n in w.scenario_requests.items()}
    return load_config(**{
        "name": "bench", "results_dir": results_dir, "seed": seed, "parallelism": 1,
        "proposer.kind": "offline", "budget.proposals": proposals, "budget.trials": trials,
        "budget.min_proposals": proposals, "budget.wall_time_s": 86400.0,
        "workloads.scenario_requests": sizes,
        "search.early_rejection": early_rejection, "search.prune_trials": prune_trials,
        "search.in_flight": 1, "gate.references": [],
    })


class _TimedProposer:
    """The campaign's proposer, with the wall time spent inside ``propose`` added up."""

    def __init__(self, inner: Any):
        self.inner, self.seconds = inner, 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def propose(self, request: Any, check: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.inner.propose(request, check)
        finally:
            self.seconds += time.perf_counter() - t0


def _timed_tune(counter: dict[str, float]) -> Callable[..., Any]:
    """``autotuner.tune.tune`` adding up its own wall time and its objective's: their
    difference is the tuner's (Optuna's sampler and journal)."""
    from autotuner.tune import tune

    def timed(**kwargs: Any) -> Any:
        objective = kwargs["objective"]

        def counted(params: dict[str, Any]) -> Any:
            t0 = time.perf_counter()
            try:
                return objective(params)
            finally:
                counter["objective_s"] += time.perf_counter() - t0

        t0 = time.perf_counter()
        try:
            return tune(**{**kwargs, "objective": counted})
        finally:
            counter["tune_s"] += time.perf_counter() - t0

    return timed


def _search_campaign(row: dict[str, Any], tuning: dict[str, float]) -> type:
    """A ``Campaign`` that runs the baseline and seeds phases (when the folder has not yet)
    and then the search alone, timed into ``row``."""
    from autotuner import archive as A
    from autotuner.campaign import core, lifecycle
    from autotuner.campaign.baseline import baseline_phase, stored_baseline
    from autotuner.campaign.search import search_phase
    from autotuner.campaign.seeds import seeds_phase
    from autotuner.evaluate import TIMINGS, reset_timings

    class Timed(core.Campaign):
        def _run(self) -> int:
            lifecycle.open_folder(self)
            assert self.evaluator is not None and self.archive is not None
            if self.archive.get_meta("phase") != "search":
                self.baseline = baseline_phase(self)
                seeds_phase(self)
                self.advance("search")
                return core.EXIT_OK
            self.baseline = stored_baseline(self)
            self.proposer = proposer = _TimedProposer(self.proposer)
            reset_timings()
            sims0, cpu0, t0 = self.evaluator.sims, _cpu_seconds(), time.perf_counter()
            search_phase(self)
            wall = time.perf_counter() - t0
            cands = self.archive.candidates(origin="proposal")
            row.update(
                wall_s=wall, cpu_s=_cpu_seconds() - cpu0, proposals=len(cands),
                simulations=self.evaluator.sims - sims0,
                statuses={s: sum(1 for c in cands if c.status == s) for s in A.STATUSES
                          if any(c.status == s for c in cands)},
                tuned={c.id: [c.train_score, c.params] for c in cands
                       if c.train_score is not None},
                split={"sandbox_start_and_ipc_s": max(0.0, TIMINGS["worker_cpu_s"]
                                                      - TIMINGS["worker_sim_s"]),
                       "worker_simulation_s": TIMINGS["worker_sim_s"],
                       "trusted_replay_s": TIMINGS["replay_s"],
                       "tuner_s": max(0.0, tuning["tune_s"] - tuning["objective_s"]),
                       "proposer_s": proposer.seconds})
            return core.EXIT_OK

    return Timed


def campaign_search(name: str, sessions: bool, halving: bool, pruning: bool, setup: Any,
                    folder: Any, proposals: int, trials: int, requests: int | None, seed: int
                    ) -> dict[str, Any]:
    """One path's search of the small campaign, resumed from a copy of the ``setup`` folder
    (its tuned baseline and seeds, made once for every path): proposals per minute and
    simulations per second of the search phase, with its time split. The split's CPU seconds
    are this process's and the sandbox workers' own, so other load on the machine does not
    enter them; the wall times do."""
    import io
    import shutil

    from autotuner.campaign import candidate as candidate_module
    from autotuner.scoring.evaluator import SessionSimulator, sandboxed

    simulator = SessionSimulator() if sessions else sandboxed
    tuning = {"objective_s": 0.0, "tune_s": 0.0}
    row: dict[str, Any] = {"path": name}
    cfg = small_campaign_config(str(folder), proposals, trials, requests, seed, halving,
                                pruning)
    shutil.copytree(setup, cfg.campaign_dir)
    original = candidate_module.tune
    candidate_module.tune = _timed_tune(tuning)  # type: ignore[assignment]
    try:
        _search_campaign(row, tuning)(cfg, resume=True, simulator=simulator,
                                      stream=io.StringIO(), tty=False).run()
    finally:
        candidate_module.tune = original  # type: ignore[assignment]
        if isinstance(simulator, SessionSimulator):
            simulator.close()
    if "wall_s" not in row:
        raise RuntimeError(f"the {name} path's campaign did not reach its search")
    wall = row["wall_s"]
    row["proposals_per_min"] = 60.0 * row["proposals"] / wall
    row["simulations_per_s"] = row["simulations"] / wall
    row["proposals_per_cpu_min"] = 60.0 * row["proposals"] / row["cpu_s"]
    return row


def campaign_speed(proposals: int = 6, trials: int = 4, requests: int | None = 500,
                   seed: int = 0) -> dict[str, Any]:
    """The small campaign's search through each of ``CAMPAIGN_PATHS`` in turn, in this
    process, each resumed from the same tuned baseline and seeds (set up once, untimed), and
    the ratios of this branch's paths to the two mains': proposals per minute (what a
    campaign's quality is bounded by) and simulations per second (what the sandbox and
    simulator deliver). The paths start from the same archive with the same seed, so their
    first proposal is the same program; later ones follow what each path's scores made of
    the earlier ones."""
    import io
    import tempfile

    from autotuner.scoring.evaluator import SessionSimulator

    with tempfile.TemporaryDirectory(prefix="autotuner-bench-") as tmp:
        cfg = small_campaign_config(str(Path(tmp) / "setup"), proposals, trials, requests, seed,
                                    False)
        sessions = SessionSimulator()
        try:
            _search_campaign({}, {})(cfg, simulator=sessions, stream=io.StringIO(),
                                     tty=False).run()
        finally:
            sessions.close()
        rows = [campaign_search(name, with_sessions, halving, pruning, cfg.campaign_dir,
                                Path(tmp) / name, proposals, trials, requests, seed)
                for name, with_sessions, halving, pruning, _ in CAMPAIGN_PATHS]
    by_name = {row["path"]: row for row in rows}

    def ratio(new: dict[str, Any], old: dict[str, Any]) -> dict[str, float]:
        return {key: new[key] / old[key] for key in
                ("proposals_per_min", "proposals_per_cpu_min", "simulations_per_s")}

    return {
        "campaign": f"{proposals} proposals x {trials} trials, offline proposer, seed {seed}, "
                    f"default scenarios" + (f" capped at {requests} requests" if requests
                                            else "") + ", parallelism 1",
        "paths": rows,
        "about": {name: what for name, *_, what in CAMPAIGN_PATHS},
        "ratios": {row["path"]: {ref: ratio(row, by_name[ref])
                                 for ref in ("one_worker_per_run", "sessions")}
                   for row in rows[2:]},
    }
