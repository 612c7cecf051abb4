"""``autotuner bench``: the simulator's speed on the standard scenario, as figures and ratios;
``--capacity-length``: whether capacity depends on run length.

The standard scenario is the one the peer simulator Vidur was timed on: chat lengths, Poisson
arrivals at 8 requests/s, 4 replicas of Llama-3-8B, 10,000 requests, fixed-chunk 512 with round
robin. The reference in the same process is this simulator with decode fast-forward switched off
(one Python step per iteration), so the ratio shows what the closed-form stretches buy.

A capacity that is a property of the policy, not of the run, must not move with the number of
requests. Under a share-only yardstick it did: a short run absorbs a burst and drains it after the
last arrival, and a policy that defers long prompts lets their backlog grow without bound while its
share stays high, so its "capacity" fell from +56 % over the baseline at 2,000 requests to +7 % at
40,000. ``--capacity-length`` measures each policy's capacity at a short and a long run of the
same scenario and seed and prints their ratio: under the sustainable-capacity yardstick it should
stay within 5 % of 1, for the baseline and for the starvation policies in ``audit_policies/``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from typing import Any

from autotuner.policy import load_policy, read_policy_file
from autotuner.resources import asset_dir, baseline_path
from autotuner.sim.engine import ClusterSpec, simulate
from autotuner.sim.metrics import SLO, SLO_KINDS, capacity, slo_met
from autotuner.sim.workload import SCENARIOS, make_workload

VIDUR_SECONDS = 30.0  # Vidur on a 2-core machine for the standard scenario (issue 2, measured)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=10_000, help="requests (default 10,000)")
    p.add_argument("--rate", type=float, default=8.0, help="arrival rate (default 8 req/s)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs; the best is reported")
    p.add_argument("--large", action="store_true", help="also run 100,000 requests (memory)")
    p.add_argument("--no-reference", action="store_true", help="skip the step-by-step run")
    p.add_argument("--json", action="store_true")
    g = p.add_argument_group("capacity against run length (--capacity-length)")
    g.add_argument("--capacity-length", action="store_true",
                   help="measure each policy's capacity at a short and a long run and print the "
                        "ratio (instead of the speed benchmark)")
    g.add_argument("--policy", action="append", default=[], metavar="FILE",
                   help="policy file or baseline name (repeatable; default: fixed_chunk and the "
                        "audit policies shortest_first and defer_long)")
    g.add_argument("--scenarios", default="chat,bursty",
                   help="comma-separated scenarios (default chat,bursty)")
    g.add_argument("--lengths", default="6000,40000",
                   help="SHORT,LONG requests per run (default 6000,40000)")
    g.add_argument("--slo-kinds", default="deadline",
                   help="comma-separated SLO kinds to compare (deadline, legacy)")
    g.add_argument("--seed", type=int, default=1001, help="workload seed (default 1001)")


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
    if args.capacity_length:
        return run_capacity_length(args)
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


# ------------------------------------------------------------------------------- run length
DEFAULT_LENGTH_POLICIES = ("fixed_chunk", "shortest_first", "defer_long")


def _policy_path(text: str) -> Path:
    path = Path(text)
    if path.suffix == ".py" or path.exists():
        return path
    audit = asset_dir("audit_policies") / f"{text}.py"
    return audit if audit.is_file() else baseline_path(text)


def _bench_error(message: str) -> int:
    print(f"autotuner bench: {message}", file=sys.stderr)
    return 2


def run_capacity_length(args: argparse.Namespace) -> int:
    """Capacity at SHORT and LONG requests per policy, scenario and SLO kind, and the ratio.

    Each policy runs at its file's default parameters (the comparison is the same policy at two
    run lengths, not policies against each other). The long search starts from the short one's
    capacity, which only saves probes: the bisection still brackets it from both sides.
    """
    try:
        short, long_ = (int(x) for x in args.lengths.split(","))
    except ValueError:
        return _bench_error(f"--lengths must be SHORT,LONG, got {args.lengths!r}")
    scenarios = [s for s in args.scenarios.split(",") if s]
    kinds = [k for k in args.slo_kinds.split(",") if k]
    if not 10 <= short < long_:
        return _bench_error("--lengths needs 10 <= SHORT < LONG")
    for name in scenarios:
        if name not in SCENARIOS:
            return _bench_error(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    for kind in kinds:
        if kind not in SLO_KINDS:
            return _bench_error(f"unknown SLO kind {kind!r} (known: {', '.join(SLO_KINDS)})")
    try:
        sources = [read_policy_file(_policy_path(p))
                   for p in (args.policy or DEFAULT_LENGTH_POLICIES)]
    except (FileNotFoundError, ValueError) as exc:
        return _bench_error(str(exc))
    cluster = ClusterSpec()
    rows: list[dict[str, Any]] = []
    if not args.json:
        print(f"capacity (req/s, share 0.9) at {short:,} and {long_:,} requests, seed {args.seed}, "
              f"4 x llama-3-8b on h100; policies at their default parameters")
        print(f"  {'policy':<16} {'scenario':<10} {'SLO':<9} {short:>9,} {long_:>9,}  "
              f"{'long/short':>10}  {'seconds':>7}")
    for source in sources:
        name = Path(source.name).stem
        for scen in scenarios:
            for kind in kinds:
                slo = SLO(kind=kind)
                t0 = time.perf_counter()
                caps = []
                for n in (short, long_):
                    wl = make_workload(scen, n, seed=args.seed)
                    found = capacity(cluster, wl, lambda s=source: load_policy(s), slo,
                                     start=caps[0] if caps and caps[0] > 0 else None)
                    caps.append(found.rate)
                ratio = caps[1] / caps[0] if caps[0] > 0 else float("nan")
                row = {"policy": name, "scenario": scen, "slo": kind, "short": short,
                       "long": long_, "capacity_short": caps[0], "capacity_long": caps[1],
                       "ratio": ratio, "seconds": time.perf_counter() - t0}
                rows.append(row)
                if not args.json:
                    print(f"  {name:<16} {scen:<10} {kind:<9} {caps[0]:9.2f} {caps[1]:9.2f}  "
                          f"{ratio:10.3f}  {row['seconds']:7.1f}", flush=True)
    if args.json:
        from autotuner.commands.common import print_json

        print_json(rows)
    return 0
