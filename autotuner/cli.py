"""The ``autotuner`` command line. One function per subcommand; the work lives in the modules.

Every expected failure (a bad option, file, trace, policy or endpoint) ends as one line on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autotuner import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CLIError(Exception):
    """An expected failure with a message for the user."""


# ---------------------------------------------------------------------------- shared options
def add_cluster_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster")
    g.add_argument("--replicas", type=int, default=4, help="model replicas (default 4)")
    g.add_argument("--gpu", default="h100", help="GPU type (default h100; see --help of calibrate)")
    g.add_argument("--model", default="llama-3-8b", help="model (default llama-3-8b)")
    g.add_argument("--tp", type=int, default=1, help="tensor-parallel degree per replica")
    g.add_argument("--max-batch-tokens", type=int, default=16384, help="hard cap per iteration")


def add_workload_options(p: argparse.ArgumentParser, default_requests: int = 2000) -> None:
    g = p.add_argument_group("workload")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--workload", default="chat", help="built-in scenario (autotuner workloads)")
    src.add_argument("--trace", help="trace file: Azure CSV or Mooncake JSONL")
    g.add_argument("--requests", type=int, default=default_requests, help="number of requests")
    g.add_argument("--rate", type=float, help="mean arrival rate, requests/s")
    g.add_argument("--seed", type=int, default=0, help="workload seed")
    g.add_argument("--rate-scale", type=float, default=1.0, help="trace arrival-rate multiplier")
    g.add_argument("--window", help="trace time window START:END in seconds")


def add_slo_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SLO")
    g.add_argument("--ttft-slo", type=float, default=2.0, help="TTFT target, seconds")
    g.add_argument("--tpot-slo", type=float, default=0.1, help="TPOT target, seconds per token")


def cluster_from(args: argparse.Namespace) -> Any:
    from autotuner.sim.engine import ClusterSpec

    for name in ("replicas", "tp", "max_batch_tokens"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be at least 1")
    cluster = ClusterSpec(
        model=args.model, gpu=args.gpu, tp=args.tp, replicas=args.replicas,
        max_batch_tokens=args.max_batch_tokens,
    )
    cluster.cost_model()  # unknown names and models that do not fit fail here, clearly
    return cluster


def workload_spec_from(args: argparse.Namespace) -> Any:
    from autotuner.simulation import WorkloadSpec

    start = end = None
    if args.window:
        if not args.trace:
            raise CLIError("--window applies to --trace only")
        try:
            a, b = args.window.split(":")
            start = float(a) if a else None
            end = float(b) if b else None
        except ValueError:
            raise CLIError(f"--window must be START:END in seconds, got {args.window!r}") from None
    if args.rate_scale <= 0 or not math.isfinite(args.rate_scale):
        raise CLIError("--rate-scale must be a positive number")
    return WorkloadSpec(
        scenario=args.workload, trace=args.trace, requests=args.requests, rate=args.rate,
        seed=args.seed, rate_scale=args.rate_scale, start=start, end=end,
    )


def slo_from(args: argparse.Namespace) -> Any:
    from autotuner.sim.metrics import SLO

    if not (args.ttft_slo > 0 and args.tpot_slo > 0):
        raise CLIError("SLO targets must be positive")
    return SLO(ttft_s=args.ttft_slo, tpot_s=args.tpot_slo)


def parse_params(items: Sequence[str]) -> dict[str, float]:
    params: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise CLIError(f"--param takes NAME=VALUE, got {item!r}")
        try:
            number = float(value)
        except ValueError:
            raise CLIError(f"--param {key}: {value!r} is not a number") from None
        params[key] = int(number) if number.is_integer() and "." not in value else number
    return params


def resolve_policy_path(text: str) -> Path:
    """A policy file path, or the name of a shipped baseline (``fixed_chunk``)."""
    from autotuner.resources import baseline_path

    path = Path(text)
    if path.exists() or path.suffix == ".py" and "/" in text:
        return path
    try:
        return baseline_path(text)
    except FileNotFoundError as exc:
        if path.suffix == ".py":
            raise CLIError(f"{text}: no such policy file") from None
        raise CLIError(str(exc)) from None


# ---------------------------------------------------------------------------- formatting
def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf"
        if unit == "s":
            return f"{value * 1000:.1f} ms" if abs(value) < 1 else f"{value:.2f} s"
        if unit == "%":
            return f"{value * 100:.1f} %"
        return f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def format_metrics(m: dict[str, Any]) -> str:
    lines = []
    for key, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("tbt_s", "TBT"),
                       ("e2e_s", "end-to-end"), ("queue_s", "queueing delay")):
        s = m[key]
        lines.append(
            f"  {label:<16}" + "".join(
                f"{k} {_fmt(s[k], 's'):>10}   " for k in ("mean", "p50", "p90", "p99")
            ).rstrip()
        )
    slo = m["slo"]
    rows = [
        ("requests", f"{m['requests']:,} ({m['finished']:,} finished, {m['unfinished']:,} not)"),
        ("duration", _fmt(m["duration_s"], "s")),
        ("throughput", f"{_fmt(m['throughput_tok_s'])} output tok/s, "
                       f"{_fmt(m['total_throughput_tok_s'])} total tok/s"),
        (f"SLO attainment (TTFT<={slo['ttft_s']}s, TPOT<={slo['tpot_s']}s)",
         _fmt(m["slo_attainment"], "%")),
        ("goodput", f"{_fmt(m['goodput_tok_s'])} tok/s ({m['goodput_rps']:.2f} req/s)"),
        ("cost", f"${m['cost_per_mtok_usd']:.3f} per million output tokens"),
        ("preemptions", _fmt(m["preemptions"])),
        ("prefix-cache hits", f"{m['prefix_cached_tokens']:,} prompt tokens"),
        ("iterations", f"{m['iterations']:,} ({m['policy_calls']:,} policy calls)"),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(lines + [f"  {k:<{width}}  {v}" for k, v in rows])


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _clean(value: Any) -> Any:
    """NaN and inf are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def print_json(obj: Any) -> None:
    print(json.dumps(_clean(obj), indent=2, default=_json_default))


# ---------------------------------------------------------------------------- commands
def cmd_simulate(args: argparse.Namespace) -> int:
    from autotuner.policy import read_policy_file
    from autotuner.sim.metrics import capacity
    from autotuner.simulation import load_policy, metrics_of, run_policy

    source = read_policy_file(resolve_policy_path(args.policy))
    params = source.resolve_params(parse_params(args.param))
    cluster = cluster_from(args)
    if args.profile:
        from dataclasses import replace

        from autotuner.sim.measured import load_step_profile

        step = load_step_profile(args.profile)
        cluster = replace(cluster, profile=step, max_num_seqs=step.max_num_seqs)
    spec = workload_spec_from(args)
    slo = slo_from(args)
    workload = spec.build()
    result = run_policy(source, cluster, workload, params=params, horizon=args.horizon)
    metrics = metrics_of(cluster, workload, result, slo)
    report: dict[str, Any] = {
        "policy": source.name, "params": params, "workload": spec.label(),
        "rate": workload.rate, "cluster": cluster.__dict__, "metrics": metrics,
    }
    if args.capacity and not result.error:
        cap = capacity(cluster, workload, lambda: load_policy(source, params), slo,
                       share=args.capacity_share)
        report["capacity"] = {"rate": cap.rate, "share": cap.share, "probes": cap.probes,
                              "error": cap.error}
    if args.json:
        print_json(report)
    else:
        print(f"policy    {source.name}  {params}")
        print(f"workload  {spec.label()}: {len(workload):,} requests at {workload.rate:.2f} req/s")
        what = (
            f"{cluster.profile.name} (measured step profile)"
            if cluster.profile is not None
            else f"{cluster.model} on {cluster.gpu} (tp={cluster.tp})"
        )
        print(f"cluster   {cluster.replicas} x {what}")
        print(format_metrics(metrics))
        if "capacity" in report:
            c = report["capacity"]
            print(f"  capacity: {c['rate']:.2f} req/s with >= {c['share']:.0%} of requests in SLO")
    if result.error:
        print(f"autotuner simulate: policy failed: {result.error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_workloads(args: argparse.Namespace) -> int:
    from autotuner.sim.workload import SCENARIOS

    rows = [(s.name, f"{s.default_rate:g} req/s", s.description) for s in SCENARIOS.values()]
    if args.json:
        print_json([{"name": n, "default_rate": SCENARIOS[n].default_rate, "description": d}
                    for n, _, d in rows])
        return EXIT_OK
    width = max(len(r[0]) for r in rows)
    for name, rate, desc in rows:
        print(f"{name:<{width}}  {rate:>10}  {desc}")
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    from autotuner.sim.calibrate import run_calibrate

    return run_calibrate(args)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.sandbox:
        from autotuner.evaluate import bench_sandbox

        return bench_sandbox(args)
    from autotuner.bench import run_bench

    return run_bench(args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from autotuner.evaluate import run_evaluate

    return run_evaluate(args)


Command = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autotuner",
        description="Search for LLM-serving heuristics with an LLM, scored in a cluster simulator.",
    )
    parser.add_argument("--version", action="version", version=f"autotuner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("simulate", help="run a policy file on a workload and print its metrics")
    p.add_argument("--policy", default="fixed_chunk", help="policy file or baseline name")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="set a declared tunable (repeatable)")
    add_cluster_options(p)
    add_workload_options(p)
    add_slo_options(p)
    p.add_argument("--horizon", type=float, help="stop at this simulated time (s)")
    p.add_argument("--profile", metavar="FILE", help="cost the cluster with a step-time "
                   "profile of a live engine (autotuner profile) instead of --gpu's roofline")
    p.add_argument("--capacity", action="store_true",
                   help="also find the capacity: highest rate with --capacity-share in SLO")
    p.add_argument("--capacity-share", type=float, default=0.9)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("workloads", help="list the built-in workload scenarios")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_workloads)

    p = sub.add_parser("calibrate", help="fit the cost model to a measured GPU profile")
    from autotuner.sim.calibrate import add_calibrate_arguments

    add_calibrate_arguments(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("bench", help="measure the simulator's speed on the standard scenario")
    from autotuner.bench import add_bench_arguments

    add_bench_arguments(p)
    p.add_argument("--sandbox", action="store_true",
                   help="measure the sandbox instead: fixed cost per backend, overhead ratio")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("evaluate", help="check, sandbox and score a policy file")
    from autotuner.evaluate import add_evaluate_arguments

    add_evaluate_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    from autotuner.commands import observe as observe_command
    from autotuner.commands import profile as profile_command

    profile_command.register(sub)
    observe_command.register(sub)
    _add_campaign_commands(sub)
    return parser


def _add_campaign_commands(sub: Any) -> None:
    """The campaign loop's subcommands (autotuner.campaign and autotuner.review)."""
    from autotuner import campaign

    p = sub.add_parser("run", help="run a search campaign (defaults: offline proposer, minutes)")
    campaign.add_run_arguments(p)
    p.set_defaults(func=campaign.run_run)

    p = sub.add_parser("resume", help="continue a stopped or killed campaign")
    campaign.add_resume_arguments(p)
    p.set_defaults(func=campaign.run_resume)

    from autotuner import review

    p = sub.add_parser("status", help="a campaign's candidates as a table")
    review.add_status_arguments(p)
    p.set_defaults(func=review.run_status)

    p = sub.add_parser("diff", help="a candidate's code and tuned parameters as a unified diff")
    review.add_diff_arguments(p)
    p.set_defaults(func=review.run_diff)

    p = sub.add_parser("show", help="a candidate's code, scores, failures, lineage and cost")
    review.add_show_arguments(p)
    p.set_defaults(func=review.run_show)

    p = sub.add_parser("replay", help="rerun a candidate or policy file beside the tuned "
                       "baseline (or re-check a promotion record)")
    review.add_replay_arguments(p)
    p.set_defaults(func=review.run_replay)

    from autotuner import report

    p = sub.add_parser("report", help="write a campaign's report.html (plots) and report.md")
    report.add_report_arguments(p)
    p.set_defaults(func=report.run_report)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"autotuner {args.command}: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, KeyError, FileNotFoundError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"autotuner {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
