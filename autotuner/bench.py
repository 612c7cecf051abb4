"""``autotuner bench``: the simulator's speed on the standard scenario, as figures and ratios.

The standard scenario is the one the peer simulator Vidur was timed on: chat lengths, Poisson
arrivals at 8 requests/s, 4 replicas of Llama-3-8B, 10,000 requests, fixed-chunk 512 with round
robin. The reference in the same process is this simulator with decode fast-forward switched off
(one Python step per iteration), so the ratio shows what the closed-form stretches buy.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from typing import Any

from autotuner.policy import load_policy, read_policy_file
from autotuner.resources import baseline_path
from autotuner.sim.engine import ClusterSpec, simulate
from autotuner.sim.metrics import SLO, slo_met
from autotuner.sim.workload import make_workload

VIDUR_SECONDS = 30.0  # Vidur on a 2-core machine for the standard scenario (issue 2, measured)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=10_000, help="requests (default 10,000)")
    p.add_argument("--rate", type=float, default=8.0, help="arrival rate (default 8 req/s)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs; the best is reported")
    p.add_argument("--large", action="store_true", help="also run 100,000 requests (memory)")
    p.add_argument("--no-reference", action="store_true", help="skip the step-by-step run")
    p.add_argument("--json", action="store_true")


def _timed(cluster: ClusterSpec, wl: Any, fast: bool, repeat: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    source = read_policy_file(baseline_path("fixed_chunk"))
    for _ in range(max(1, repeat)):
        policy = load_policy(source)
        t0 = time.perf_counter()
        result = simulate(cluster, wl, policy, fast_forward=fast)
        best = min(best, time.perf_counter() - t0)
    return best, result


def run_bench(args: argparse.Namespace) -> int:
    cluster = ClusterSpec(model="llama-3-8b", gpu="h100", tp=1, replicas=4)
    t0 = time.perf_counter()
    wl = make_workload("chat", args.requests, rate=args.rate, seed=0)
    gen_s = time.perf_counter() - t0
    wall, result = _timed(cluster, wl, True, args.repeat)
    out: dict[str, Any] = {
        "scenario": f"chat, Poisson {args.rate:g} req/s, 4 x llama-3-8b on h100, "
                    f"{args.requests:,} requests, fixed_chunk 512, round robin",
        "workload_generation_s": gen_s,
        "wall_s": wall,
        "requests_per_s": args.requests / wall,
        "iterations": result.iterations,
        "iterations_per_s": result.iterations / wall,
        "policy_calls": result.policy_calls,
        "decode_stretches": result.decode_stretches,
        "simulated_s": result.end_time,
        "slo_attainment": float(slo_met(wl, result, SLO()).mean()),
        "speedup_vs_vidur_30s": VIDUR_SECONDS / wall,
    }
    if not args.no_reference:
        ref_wall, ref = _timed(cluster, wl, False, 1)
        out["reference_step_by_step_s"] = ref_wall
        out["fast_forward_speedup"] = ref_wall / wall
        out["max_finish_time_difference_s"] = float(abs(ref.finish - result.finish).max())
    if args.large:
        big = make_workload("chat", 100_000, rate=args.rate, seed=0)
        t0 = time.perf_counter()
        simulate(cluster, big, load_policy(read_policy_file(baseline_path("fixed_chunk"))))
        out["large_100k_wall_s"] = time.perf_counter() - t0
        out["large_100k_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        from autotuner.commands.common import print_json

        print_json(out)
        return 0
    print(out["scenario"])
    print(f"  wall time            {wall:.3f} s (best of {args.repeat})")
    print(f"  simulated requests/s {out['requests_per_s']:,.0f}")
    print(f"  iterations/s         {out['iterations_per_s']:,.0f} "
          f"({result.iterations:,} iterations, {result.decode_stretches:,} decode stretches, "
          f"{result.policy_calls:,} policy calls)")
    print(f"  vs Vidur (~{VIDUR_SECONDS:.0f} s)    {out['speedup_vs_vidur_30s']:.0f}x faster")
    if "reference_step_by_step_s" in out:
        print(f"  vs step-by-step      {out['fast_forward_speedup']:.1f}x faster "
              f"({out['reference_step_by_step_s']:.2f} s; finish times differ by at most "
              f"{out['max_finish_time_difference_s']:.2e} s)")
    if args.large:
        print(f"  100,000 requests     {out['large_100k_wall_s']:.2f} s, "
              f"peak RSS {out['large_100k_peak_rss_mb']:.0f} MB")
    sys.stdout.flush()
    return 0
