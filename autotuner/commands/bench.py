"""``autotuner bench``: the simulator's speed on the standard scenario; with ``--sandbox``, what
the sandbox costs on top of it; with ``--capacity-length``, whether capacity depends on run
length (the measuring is ``autotuner.bench``)."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from autotuner import bench, bench_campaign
from autotuner.commands.common import EXIT_OK, CLIError, print_json
from autotuner.config import GateConfig
from autotuner.policy import read_policy_file
from autotuner.sim.metrics import SLO_KINDS
from autotuner.sim.workload import SCENARIOS

HELP = "measure the simulator's speed on the standard scenario"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=10_000, help="requests (default 10,000)")
    p.add_argument("--rate", type=float, default=8.0, help="arrival rate (default 8 req/s)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs; the best is reported")
    p.add_argument("--large", action="store_true", help="also run 100,000 requests (memory)")
    p.add_argument("--no-reference", action="store_true", help="skip the step-by-step run")
    p.add_argument("--json", action="store_true")
    p.add_argument("--sandbox", action="store_true",
                   help="measure the sandbox instead: fixed cost per backend, overhead ratio")
    g = p.add_argument_group("campaign speed (--campaign)")
    g.add_argument("--campaign", action="store_true",
                   help="proposals per minute and simulations per second of a small campaign's "
                        "search, with the time split: a fresh sandbox worker per run, warm "
                        "worker sessions, and sessions with successive halving, in the same "
                        "process")
    g.add_argument("--proposals", type=int, default=6, help="proposals (default 6)")
    g.add_argument("--trials", type=int, default=4, help="trials per candidate (default 4)")
    g.add_argument("--campaign-seed", type=int, default=0, help="campaign seed (default 0)")
    g.add_argument("--job-mix", action="store_true",
                   help="with --campaign: evaluations per second of a fixed job mix instead (one "
                        "worker per run against sessions; --candidates, --rounds, --parallelism)")
    g.add_argument("--candidates", type=int, default=3,
                   help="tuning trials in the job mix (default 3)")
    g.add_argument("--rounds", type=int, default=1,
                   help="alternating passes of each path (default 1)")
    g.add_argument("--parallelism", type=int, default=1,
                   help="evaluation processes (default 1: the time split is shown only then)")
    g.add_argument("--instance-requests", type=int, default=None, metavar="N",
                   help="cap each training instance at N requests (default: 500 for the "
                        "campaign, the config's own sizes for the job mix)")
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
    g.add_argument("--seeds", default="1001", help="comma-separated workload seeds; with several, "
                   "each length's capacity pools one run per seed (default 1001)")
    g.add_argument("--per-seed", action="store_true",
                   help="with several --seeds: each seed's capacity on its own, then their "
                        "geometric mean, as the gate judges each held-out instance")
    g.add_argument("--max-multiple", type=int, default=GateConfig.capacity_max_multiple,
                   metavar="M", help="check each capacity on a run twice as long, searching "
                   "again on longer runs up to M times the length, as the gate does (default "
                   f"{GateConfig.capacity_max_multiple}, gate.capacity_max_multiple; 1: the "
                   "plain bisection)")


def run(args: argparse.Namespace) -> int:
    if args.requests < 10 or args.repeat < 1 or not 0 < args.rate < math.inf:
        raise CLIError("--requests must be at least 10, --repeat at least 1, --rate a positive "
                       "number of requests/s")
    if args.sandbox:
        return _sandbox(args)
    if args.campaign and args.job_mix:
        return _job_mix(args)
    if args.campaign:
        return _campaign(args)
    if args.capacity_length:
        return _capacity_length(args)
    return _speed(args)


def _speed(args: argparse.Namespace) -> int:
    out = bench.simulator_speed(args.requests, args.rate, args.repeat,
                                reference=not args.no_reference, large=args.large)
    if args.json:
        print_json(out)
        return EXIT_OK
    print(out["scenario"])
    print(f"  wall time            {out['wall_s']:.3f} s (best of {args.repeat})")
    print(f"  simulated requests/s {out['requests_per_s']:,.0f}")
    print(f"  iterations/s         {out['iterations_per_s']:,.0f} "
          f"({out['iterations']:,} iterations, {out['decode_stretches']:,} decode stretches, "
          f"{out['policy_calls']:,} policy calls)")
    print(f"  vs Vidur (~{bench.VIDUR_SECONDS:.0f} s)    {out['speedup_vs_vidur_30s']:.0f}x faster")
    if "reference_step_by_step_s" in out:
        print(f"  vs step-by-step      {out['fast_forward_speedup']:.1f}x faster "
              f"({out['reference_step_by_step_s']:.2f} s; finish times differ by at most "
              f"{out['max_finish_time_difference_s']:.2e} s)")
    if args.large:
        print(f"  100,000 requests     {out['large_100k_wall_s']:.2f} s, "
              f"peak RSS {out['large_100k_peak_rss_mb']:.0f} MB")
    sys.stdout.flush()
    return EXIT_OK


def _sandbox(args: argparse.Namespace) -> int:
    out = bench.sandbox_costs(args.requests, args.rate, args.repeat)
    if args.json:
        print_json(out)
        return EXIT_OK
    print(out["scenario"])
    print(f"  in-process (load, simulate, metrics)  {out['in_process_s']:.3f} s "
          f"(best of {out['repeat']})")
    for name, row in out["backends"].items():
        if not row.get("available"):
            print(f"  {name:<8} unavailable: {row['reason']}")
        elif "error" in row:
            print(f"  {name:<8} failed: {row['error']}")
        else:
            print(f"  {name:<8} fixed cost {row['fixed_cost_s'] * 1000:5.0f} ms   "
                  f"cold {row['cold_s']:.3f} s = {row['ratio_cold']:.2f}x   "
                  f"warm spare {row['warm_s']:.3f} s = {row['ratio_warm']:.2f}x   "
                  f"(target < {out['target_ratio']:g}x; metrics identical: "
                  f"{'yes' if row['metrics_identical'] else 'NO'})")
    sys.stdout.flush()
    return EXIT_OK


def _campaign(args: argparse.Namespace) -> int:
    requests = 500 if args.instance_requests is None else args.instance_requests
    if args.proposals < 1 or args.trials < 1 or requests < 10:
        raise CLIError("--proposals and --trials must be at least 1, --instance-requests at "
                       "least 10")
    out = bench_campaign.campaign_speed(args.proposals, args.trials, requests, args.campaign_seed)
    if args.json:
        print_json(out)
        return EXIT_OK
    print(f"small campaign's search: {out['campaign']}")
    for row in out["paths"]:
        print(f"  {row['path']:<19} {row['proposals_per_min']:5.2f} proposals/min "
              f"({row['proposals']} in {row['wall_s']:.0f} s; "
              f"{row['proposals_per_cpu_min']:.2f} per CPU min), "
              f"{row['simulations_per_s']:5.2f} simulations/s ({row['simulations']})")
        print(f"    {out['about'][row['path']]}")
        print("    time: " + ", ".join(f"{k[:-2].replace('_', ' ')} {v:.1f} s"
                                       for k, v in row["split"].items()))
        print("    outcome: " + ", ".join(f"{k} {v}" for k, v in row["statuses"].items())
              + "; training scores: " + (", ".join(
                  f"{cid} {score:+.1%}" for cid, (score, _) in row["tuned"].items()) or "none"))
    for new, against in out["ratios"].items():
        for old, ratio in against.items():
            print(f"  {new} / {old}: {ratio['proposals_per_min']:.2f}x proposals/min "
                  f"({ratio['proposals_per_cpu_min']:.2f}x per CPU min), "
                  f"{ratio['simulations_per_s']:.2f}x simulations/s")
    sys.stdout.flush()
    return EXIT_OK


def _job_mix(args: argparse.Namespace) -> int:
    if args.candidates < 1 or args.rounds < 1 or args.parallelism < 1 or (
            args.instance_requests is not None and args.instance_requests < 10):
        raise CLIError("--candidates, --rounds and --parallelism must be at least 1, "
                       "--instance-requests at least 10")
    out = bench_campaign.campaign_throughput(args.candidates, args.instance_requests, args.rounds,
                                    args.parallelism)
    if args.json:
        print_json(out)
        return EXIT_OK
    print(out["mix"])
    for path, row in out["paths"].items():
        print(f"  {path:<20} {row['evaluations_per_s']:6.2f} evaluations/s "
              f"({row['evaluations']} in {row['wall_s']:.1f} s, {row['errors']} failed)"
              + (f"; {row['evaluations_per_cpu_s']:.2f} per CPU second ({row['cpu_s']:.1f} s)"
                 if row["cpu_s"] else ""))
        if "split" in row:
            print("    CPU: " + ", ".join(f"{k[:-2].replace('_', ' ')} {v:.1f} s"
                                     for k, v in row["split"].items())
                  + (f"; {row['runs_alone']} runs re-run alone" if row.get("runs_alone")
                     else ""))
    cpu = f", {out['cpu_ratio']:.2f}x per CPU second" if out["cpu_ratio"] else ""
    print(f"  ratio (sessions / one worker per run)  {out['ratio']:.2f}x per wall second{cpu}; "
          f"results identical: {'yes' if out['results_identical'] else 'NO'}")
    sys.stdout.flush()
    return EXIT_OK


def _capacity_length(args: argparse.Namespace) -> int:
    try:
        short, long_ = (int(x) for x in args.lengths.split(","))
    except ValueError:
        raise CLIError(f"--lengths must be SHORT,LONG, got {args.lengths!r}") from None
    scenarios = [s for s in args.scenarios.split(",") if s]
    kinds = [k for k in args.slo_kinds.split(",") if k]
    if not 10 <= short < long_:
        raise CLIError("--lengths needs 10 <= SHORT < LONG")
    for name in scenarios:
        if name not in SCENARIOS:
            raise CLIError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    for kind in kinds:
        if kind not in SLO_KINDS:
            raise CLIError(f"unknown SLO kind {kind!r} (known: {', '.join(SLO_KINDS)})")
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise CLIError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise CLIError(f"--seeds needs at least one seed, none negative, got {args.seeds!r}")
    if args.max_multiple not in (1, 2, 4, 8, 16):
        raise CLIError(f"--max-multiple must be 1, 2, 4, 8 or 16, got {args.max_multiple}")
    sources = [read_policy_file(bench.length_policy_path(p))
               for p in (args.policy or bench.DEFAULT_LENGTH_POLICIES)]

    def show(row: dict[str, Any]) -> None:
        grew = "/".join(",".join(f"x{m}" for m in ms)
                        for ms in (row["multiples_short"], row["multiples_long"]))
        print(f"  {row['policy']:<16} {row['scenario']:<10} {row['slo']:<9} "
              f"{row['capacity_short']:9.2f} {row['capacity_long']:9.2f}  "
              f"{row['ratio']:10.3f}  {row['seconds']:7.1f}  {grew}", flush=True)

    if not args.json:
        how = (" each on its own, geometric mean" if args.per_seed else " pooled") \
            if len(seeds) > 1 else ""
        check = (f"each checked on a run twice as long, up to x{args.max_multiple}"
                 if args.max_multiple > 1 else "no length check")
        print(f"capacity (req/s, share 0.9) at {short:,} and {long_:,} requests, "
              f"seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}{how}, "
              f"{check}; 4 x llama-3-8b on h100; policies at their default parameters")
        print(f"  {'policy':<16} {'scenario':<10} {'SLO':<9} {short:>9,} {long_:>9,}  "
              f"{'long/short':>10}  {'seconds':>7}  runs grew (short/long)")
    rows = bench.capacity_against_length(sources, scenarios, kinds, short, long_, seeds,
                                         args.max_multiple, args.per_seed,
                                         on_row=None if args.json else show)
    if args.json:
        print_json(rows)
    return EXIT_OK
