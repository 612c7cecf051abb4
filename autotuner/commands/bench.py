"""``autotuner bench``: the simulator's speed (``autotuner.bench``) or, with ``--sandbox``, what
the sandbox costs on top of it."""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

from autotuner import bench
from autotuner.commands.common import EXIT_OK, print_json
from autotuner.evaluate import evaluate
from autotuner.isolation import available_backends, get_backend
from autotuner.policy import load_policy, read_policy_file
from autotuner.resources import baseline_path
from autotuner.sim.engine import ClusterSpec, simulate
from autotuner.sim.metrics import SLO
from autotuner.simulation import WorkloadSpec, metrics_of

HELP = "measure the simulator's speed on the standard scenario"


def add_arguments(p: argparse.ArgumentParser) -> None:
    bench.add_bench_arguments(p)
    p.add_argument("--sandbox", action="store_true",
                   help="measure the sandbox instead: fixed cost per backend, overhead ratio")


def run(args: argparse.Namespace) -> int:
    if args.sandbox:
        return run_sandbox_bench(args)
    return bench.run_bench(args)


def run_sandbox_bench(args: argparse.Namespace) -> int:
    """``autotuner bench --sandbox``: each backend's fixed cost, and sandboxed/in-process ratio.

    The in-process figure is what ``autotuner simulate`` does (load, simulate, metrics); the
    sandboxed one is a whole ``evaluate`` (check, worker, streamed trusted replay, metrics) of
    the same file on the same workload: cold (the worker starts with the evaluation) and with a
    warm spare (started ahead, as a campaign does). Fixed cost: a 10-request evaluation minus
    the same in-process. Best of ``--repeat`` each.
    """
    requests = int(getattr(args, "requests", 10_000) or 10_000)
    rate = float(getattr(args, "rate", 8.0) or 8.0)
    repeat = max(1, int(getattr(args, "repeat", 3) or 3))
    cluster = ClusterSpec(model="llama-3-8b", gpu="h100", tp=1, replicas=4)
    slo = SLO()
    path = baseline_path("fixed_chunk")
    code = path.read_text()
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
        "in_process_s": base_s, "target_ratio": 1.5, "backends": {},
    }
    for name, ok, why in available_backends():
        if not ok:
            out["backends"][name] = {"available": False, "reason": why}
            continue
        backend = get_backend(name, warn=False)
        row: dict[str, Any] = {"available": True, "detail": backend.describe()}
        fixed = cold = warm = math.inf
        same, error = True, None
        for _ in range(repeat):
            ev = evaluate(code, name=str(path), cluster=cluster, workload=tiny, slo=slo,
                          sandbox=backend)
            fixed = min(fixed, ev.wall_s - tiny_s)
            ev = evaluate(code, name=str(path), cluster=cluster, workload=spec, slo=slo,
                          sandbox=backend)
            cold = min(cold, ev.wall_s)
            same = same and ev.metrics == base_metrics
            error = error or ("; ".join(ev.reasons) if not ev.ok else None)
        # Campaign mode: a spare worker is started while the previous evaluation finishes (and
        # while the proposer works), so its interpreter start-up is off the critical path.
        evaluate(code, name=str(path), cluster=cluster, workload=tiny, slo=slo, sandbox=backend,
                 warm=True)
        for _ in range(repeat):
            time.sleep(0.5)
            ev = evaluate(code, name=str(path), cluster=cluster, workload=spec, slo=slo,
                          sandbox=backend, warm=True)
            warm = min(warm, ev.wall_s)
            same = same and ev.metrics == base_metrics
        backend.release_spare()
        if error:
            row["error"] = error
        row.update(fixed_cost_s=fixed, cold_s=cold, warm_s=warm, ratio_cold=cold / base_s,
                   ratio_warm=warm / base_s, metrics_identical=same)
        out["backends"][name] = row
    if getattr(args, "json", False):
        print_json(out)
        return EXIT_OK
    print(out["scenario"])
    print(f"  in-process (load, simulate, metrics)  {base_s:.3f} s (best of {repeat})")
    for name, row in out["backends"].items():
        if not row.get("available"):
            print(f"  {name:<8} unavailable: {row['reason']}")
        elif "error" in row:
            print(f"  {name:<8} failed: {row['error']}")
        else:
            print(f"  {name:<8} fixed cost {row['fixed_cost_s'] * 1000:5.0f} ms   "
                  f"cold {row['cold_s']:.3f} s = {row['ratio_cold']:.2f}x   "
                  f"warm spare {row['warm_s']:.3f} s = {row['ratio_warm']:.2f}x   "
                  f"(target < 1.5x; metrics identical: "
                  f"{'yes' if row['metrics_identical'] else 'NO'})")
    sys.stdout.flush()
    return EXIT_OK
