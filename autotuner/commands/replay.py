"""``autotuner replay TARGET``: rerun a candidate or policy file beside the tuned baseline (a run,
or ``--capacity``), or re-check a promotion record's claim. Exit 0, 1 if a policy failed or the
record's gate no longer passes, 2 on a usage error."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from autotuner.commands.common import EXIT_FAILED, EXIT_OK, CLIError, add_sandbox_option, print_json
from autotuner.commands.views import guarded
from autotuner.review import (
    ReplayOptions,
    replay,
    replay_failed,
    replay_text,
    reproduce,
    reproduction_data,
    reproduction_text,
)

HELP = "rerun a candidate or policy file beside the tuned baseline (or re-check a promotion record)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="CAMPAIGN:CANDIDATE (e.g. default:promoted), a policy file, "
                   "or a promotion record (promotions/<id>.json) to re-check its claim")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workload", action="append", default=[], metavar="SCENARIO",
                   help="built-in scenario (repeatable; default: the campaign's scenarios)")
    g.add_argument("--trace", action="append", default=[], metavar="FILE",
                   help="trace file, Azure CSV or Mooncake JSONL (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="scenario seed (default: the "
                   "campaign's first held-out seed)")
    p.add_argument("--requests", type=int, help="requests per workload (trace: at most)")
    p.add_argument("--rate", type=float, help="arrival rate, req/s (default: the workload's own)")
    p.add_argument("--window", help="trace time window START:END in seconds")
    p.add_argument("--capacity", action="store_true",
                   help="measure the capacity under SLO of both, and the relative gain")
    p.add_argument("--ttft-slo", type=float, help="TTFT target, s (default: the campaign's)")
    p.add_argument("--tpot-slo", type=float, help="TPOT target, s (default: the campaign's)")
    p.add_argument("--share", type=float, help="share of requests in SLO that defines capacity "
                   "(default: the campaign's)")
    add_sandbox_option(p, default=None, help_text="isolation backend (default: the campaign's)")
    p.add_argument("--parallelism", type=int, default=None, help="simulations at once")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _window(text: str | None) -> tuple[float, float] | None:
    if not text:
        return None
    try:
        a, b = text.split(":")
        return float(a) if a else 0.0, float(b) if b else math.inf
    except ValueError:
        raise CLIError(f"--window must be START:END in seconds, got {text!r}") from None


def options_from(args: argparse.Namespace) -> ReplayOptions:
    return ReplayOptions(
        workloads=tuple(args.workload), traces=tuple(args.trace), seed=args.seed,
        requests=args.requests, rate=args.rate, window_s=_window(args.window),
        capacity=args.capacity, ttft_s=args.ttft_slo, tpot_s=args.tpot_slo, share=args.share,
        sandbox=args.sandbox, parallelism=args.parallelism)


def _reproduce(args: argparse.Namespace) -> int:
    rep = reproduce(Path(args.target), sandbox=args.sandbox, parallelism=args.parallelism)
    if args.json:
        print_json(reproduction_data(rep))
    else:
        sys.stdout.write(reproduction_text(rep))
    return EXIT_OK if rep.passed else EXIT_FAILED


def run(args: argparse.Namespace) -> int:
    def replay_or_reproduce() -> int:
        if args.target.endswith(".json") and Path(args.target).is_file():
            return _reproduce(args)
        report = replay(args.target, options_from(args))
        if args.json:
            print_json(report)
        else:
            sys.stdout.write(replay_text(report))
        return EXIT_FAILED if replay_failed(report) else EXIT_OK

    return guarded("replay", replay_or_reproduce)
