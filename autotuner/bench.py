"""Benchmarks, as figures and ratios against a reference in the same process: the simulator's
speed, what the sandbox costs on top of it, and whether capacity depends on run length.

The standard scenario is the one the peer simulator Vidur was timed on: chat lengths, Poisson
arrivals at 8 requests/s, 4 replicas of Llama-3-8B, 10,000 requests, fixed-chunk 512 with round
robin. The speed reference is this simulator with decode fast-forward switched off (one Python
step per iteration), so the ratio shows what the closed-form stretches buy; the sandbox's is the
same file run in process (load, simulate, metrics), as ``autotuner simulate`` runs it.

A capacity that is a property of the policy, not of the run, must not move with the number of
requests. Under a share-only yardstick it did: a short run absorbs a burst and drains it after the
last arrival, and a policy that defers long prompts lets their backlog grow without bound while its
share stays high, so its "capacity" fell from +56 % over the baseline at 2,000 requests to +7 % at
40,000. ``capacity_against_length`` measures each policy's capacity at a short and a long run of
the same scenario and seeds: under the sustainable-capacity yardstick their ratio should stay
within 5 % of 1, for the baseline and for the starvation policies in ``baselines/audit/``. With
several seeds each length's capacity pools them (``autotuner.sim.metrics.PooledRun``), which
the bursty and mixed workloads need (its docstring says why).
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autotuner.evaluate import evaluate
from autotuner.isolation import available_backends, get_backend
from autotuner.policy import PolicySource, load_policy, read_policy_file
from autotuner.resources import asset_dir, baseline_path
from autotuner.sim.engine import ClusterSpec, SimResult, simulate
from autotuner.sim.metrics import (
    SLO,
    CapacityResult,
    PooledRun,
    metrics_at,
    search_capacity_settled,
    slo_met,
)
from autotuner.sim.workload import Workload, make_workload
from autotuner.simulation import WorkloadSpec, metrics_of

VIDUR_SECONDS = 30.0  # Vidur on a 2-core machine for the standard scenario (issue 2, measured)
STANDARD_CLUSTER = ClusterSpec(model="llama-3-8b", gpu="h100", tp=1, replicas=4)
SANDBOX_TARGET_RATIO = 1.5  # sandboxed over in-process wall time a campaign can live with
DEFAULT_LENGTH_POLICIES = ("fixed_chunk", "shortest_first", "defer_long")


# ------------------------------------------------------------------------------- speed
def _timed(cluster: ClusterSpec, wl: Workload, fast: bool, repeat: int
           ) -> tuple[float, SimResult]:
    best, result = math.inf, None
    source = read_policy_file(baseline_path("fixed_chunk"))
    for _ in range(max(1, repeat)):
        policy = load_policy(source)
        t0 = time.perf_counter()
        result = simulate(cluster, wl, policy, fast_forward=fast)
        best = min(best, time.perf_counter() - t0)
    assert result is not None
    return best, result


def simulator_speed(requests: int = 10_000, rate: float = 8.0, repeat: int = 3,
                    reference: bool = True, large: bool = False) -> dict[str, Any]:
    """The standard scenario's wall time (best of ``repeat``) and what it means: simulated
    requests and iterations per second, the ratio to Vidur and, with ``reference``, to this
    simulator step by step (with the largest finish-time difference between the two); ``large``
    adds 100,000 requests' wall time and peak memory."""
    cluster = STANDARD_CLUSTER
    t0 = time.perf_counter()
    wl = make_workload("chat", requests, rate=rate, seed=0)
    gen_s = time.perf_counter() - t0
    wall, result = _timed(cluster, wl, True, repeat)
    out: dict[str, Any] = {
        "scenario": f"chat, Poisson {rate:g} req/s, 4 x llama-3-8b on h100, "
                    f"{requests:,} requests, fixed_chunk 512, round robin",
        "repeat": repeat,
        "workload_generation_s": gen_s,
        "wall_s": wall,
        "requests_per_s": requests / wall,
        "iterations": result.iterations,
        "iterations_per_s": result.iterations / wall,
        "policy_calls": result.policy_calls,
        "decode_stretches": result.decode_stretches,
        "simulated_s": result.end_time,
        "slo_attainment": float(slo_met(wl, result, SLO()).mean()),
        "speedup_vs_vidur_30s": VIDUR_SECONDS / wall,
    }
    if reference:
        ref_wall, ref = _timed(cluster, wl, False, 1)
        out["reference_step_by_step_s"] = ref_wall
        out["fast_forward_speedup"] = ref_wall / wall
        out["max_finish_time_difference_s"] = float(abs(ref.finish - result.finish).max())
    if large:
        big = make_workload("chat", 100_000, rate=rate, seed=0)
        t0 = time.perf_counter()
        simulate(cluster, big, load_policy(read_policy_file(baseline_path("fixed_chunk"))))
        out["large_100k_wall_s"] = time.perf_counter() - t0
        out["large_100k_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# ------------------------------------------------------------------------------- the sandbox
def sandbox_costs(requests: int = 10_000, rate: float = 8.0, repeat: int = 3) -> dict[str, Any]:
    """Each backend's fixed cost, and its sandboxed/in-process ratio, cold and with a warm spare.

    The in-process figure is what ``autotuner simulate`` does (load, simulate, metrics); the
    sandboxed one is a whole ``evaluate`` (check, worker, streamed trusted replay, metrics) of
    the same file on the same workload: cold (the worker starts with the evaluation) and with a
    warm spare (started ahead, as a campaign does). Fixed cost: a 10-request evaluation minus
    the same in process. Best of ``repeat`` each.
    """
    repeat = max(1, repeat)
    cluster, slo = STANDARD_CLUSTER, SLO()
    path = baseline_path("fixed_chunk")
    spec = WorkloadSpec(scenario="chat", requests=requests, rate=rate, seed=0)
    tiny = WorkloadSpec(scenario="chat", requests=10, rate=rate, seed=0)

    def in_process(s: WorkloadSpec) -> tuple[float, dict[str, Any]]:
        best, metrics = math.inf, {}
        for _ in range(repeat):
            t0 = time.perf_counter()
            wl = s.build()
            result = simulate(cluster, wl, load_policy(read_policy_file(path)))
            metrics = metrics_of(cluster, wl, result, slo)
            best = min(best, time.perf_counter() - t0)
        return best, metrics

    base_s, base_metrics = in_process(spec)
    tiny_s, _ = in_process(tiny)
    out: dict[str, Any] = {
        "scenario": f"chat, Poisson {rate:g} req/s, 4 x llama-3-8b on h100, {requests:,} "
                    "requests, fixed_chunk",
        "repeat": repeat, "in_process_s": base_s, "target_ratio": SANDBOX_TARGET_RATIO,
        "backends": {},
    }
    for name, ok, why in available_backends():
        out["backends"][name] = (
            _backend_costs(name, path, cluster, slo, spec, tiny, tiny_s, base_s, base_metrics,
                           repeat)
            if ok else {"available": False, "reason": why})
    return out


def _backend_costs(name: str, path: Path, cluster: ClusterSpec, slo: SLO, spec: WorkloadSpec,
                   tiny: WorkloadSpec, tiny_s: float, base_s: float,
                   base_metrics: dict[str, Any], repeat: int) -> dict[str, Any]:
    backend = get_backend(name, warn=False)
    code = path.read_text()
    row: dict[str, Any] = {"available": True, "detail": backend.describe()}
    fixed = cold = warm = math.inf
    same, error = True, None

    def run(workload: WorkloadSpec, warm_spare: bool = False) -> Any:
        return evaluate(code, name=str(path), cluster=cluster, workload=workload, slo=slo,
                        sandbox=backend, warm=warm_spare)

    for _ in range(repeat):
        fixed = min(fixed, run(tiny).wall_s - tiny_s)
        ev = run(spec)
        cold = min(cold, ev.wall_s)
        same = same and ev.metrics == base_metrics
        error = error or ("; ".join(ev.reasons) if not ev.ok else None)
    # Campaign mode: a spare worker is started while the previous evaluation finishes (and
    # while the proposer works), so its interpreter start-up is off the critical path.
    run(tiny, warm_spare=True)
    for _ in range(repeat):
        time.sleep(0.5)
        ev = run(spec, warm_spare=True)
        warm = min(warm, ev.wall_s)
        same = same and ev.metrics == base_metrics
    backend.release_spare()
    if error:
        row["error"] = error
    row.update(fixed_cost_s=fixed, cold_s=cold, warm_s=warm, ratio_cold=cold / base_s,
               ratio_warm=warm / base_s, metrics_identical=same)
    return row


# ------------------------------------------------------------------------------- run length
def length_policy_path(text: str) -> Path:
    """A policy named for ``capacity_against_length``: a path, an audit policy, or a baseline."""
    path = Path(text)
    if path.suffix == ".py" or path.exists():
        return path
    audit = (asset_dir("baselines") / "audit") / f"{text}.py"
    return audit if audit.is_file() else baseline_path(text)


def _capacity_at_length(source: PolicySource, scen: str, kind: str, n: int,
                        seeds: Sequence[int], max_multiple: int, start: float | None
                        ) -> CapacityResult:
    """One length's capacity, pooling the seeds' runs at each probed rate (``PooledRun``),
    checked on runs twice as long as the gate checks its own (``search_capacity_settled``)."""
    cluster, slo = ClusterSpec(), SLO(kind=kind)

    def probe_at(rate: float, multiple: int) -> PooledRun:
        return PooledRun(tuple(
            metrics_at(cluster, make_workload(scen, n * multiple, seed=seed),
                       lambda: load_policy(source), slo, rate)
            for seed in seeds), slo.max_backlog_growth)

    hint = start or float(np.mean([make_workload(scen, n, seed=s).rate for s in seeds]))
    return search_capacity_settled(probe_at, max(hint, 1e-3), 0.9, max_multiple=max_multiple)


def capacity_against_length(sources: Sequence[PolicySource], scenarios: Sequence[str],
                            slo_kinds: Sequence[str], short: int, long_: int,
                            seeds: Sequence[int], max_multiple: int = 1, per_seed: bool = False,
                            on_row: Callable[[dict[str, Any]], None] | None = None
                            ) -> list[dict[str, Any]]:
    """Capacity at ``short`` and ``long_`` requests per policy, scenario and SLO kind, and the
    ratio long/short (``on_row`` sees each row as it is measured: they take minutes).

    With several ``seeds``, each length's capacity pools one run per seed at every probed rate
    (``PooledRun``), so the ratio compares run lengths rather than two samples of a
    workload whose rare heavy requests or bursts differ by seed; ``per_seed`` instead finds each
    seed's capacity on its own and takes their geometric mean, as the gate judges each held-out
    instance on its own. ``max_multiple`` > 1 checks each capacity on a run twice as long, as
    the gate does (``gate.capacity_max_multiple``); the row says how long the runs became. Each
    policy runs at its file's default parameters (the comparison is the same policy at two run
    lengths, not policies against each other). The long search starts from the short one's
    capacity, which only saves probes: the bisection still brackets it from both sides.
    """
    rows: list[dict[str, Any]] = []
    groups = [[s] for s in seeds] if per_seed else [list(seeds)]
    for source in sources:
        for scen in scenarios:
            for kind in slo_kinds:
                t0 = time.perf_counter()
                caps: list[float] = []
                multiples: list[list[int]] = []
                for n in (short, long_):
                    found = [_capacity_at_length(source, scen, kind, n, group, max_multiple,
                                                 caps[0] if caps and caps[0] > 0 else None)
                             for group in groups]
                    rates = [f.rate for f in found]
                    caps.append(float(np.exp(np.mean(np.log(rates)))) if min(rates) > 0
                                else 0.0)
                    multiples.append([f.multiple for f in found])
                row = {"policy": Path(source.name).stem, "scenario": scen, "slo": kind,
                       "seeds": list(seeds), "per_seed": per_seed, "max_multiple": max_multiple,
                       "short": short, "long": long_, "capacity_short": caps[0],
                       "capacity_long": caps[1],
                       "multiples_short": multiples[0], "multiples_long": multiples[1],
                       "ratio": caps[1] / caps[0] if caps[0] > 0 else float("nan"),
                       "seconds": time.perf_counter() - t0}
                rows.append(row)
                if on_row:
                    on_row(row)
    return rows
