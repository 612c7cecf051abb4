"""`autotuner observe`: the command line of ``autotuner.observe``."""

from __future__ import annotations

import argparse
import sys

from autotuner.commands.common import (
    EXIT_OK,
    EXIT_USAGE,
    CLIError,
    add_slo_options,
    add_workload_options,
    number_list,
    print_json,
    slo_from,
    workload_spec_from,
)
from autotuner.live import EndpointError, parse_endpoint
from autotuner.observe import ObserveSettings, format_report, observe
from autotuner.sim.measured import StepProfileError, load_step_profile

HELP = "replay a workload on live servers and print it beside the simulator's prediction"


float_list = number_list(float)
int_list = number_list(int)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Replay a workload against live OpenAI-compatible servers (round robin, "
        "streamed), simulate the same cluster with a step-time profile (autotuner profile), and "
        "print TTFT, TPOT, inter-token gap and end-to-end quantiles measured vs predicted."
    )
    p.add_argument(
        "--endpoint",
        action="append",
        required=True,
        metavar="URL",
        help="server base URL (repeat for several servers, used round robin)",
    )
    p.add_argument(
        "--profile",
        required=True,
        metavar="FILE",
        help="step-time profile written by autotuner profile",
    )
    add_workload_options(p, default_requests=60)
    p.add_argument(
        "--max-prompt-tokens", type=int, default=256, help="cap on prompt lengths (default 256)"
    )
    p.add_argument(
        "--max-output-tokens", type=int, default=64, help="cap on output lengths (default 64)"
    )
    add_slo_options(p)
    p.add_argument(
        "--capacity-rates",
        type=float_list,
        default=(),
        metavar="R,R,...",
        help="also sweep these rates (req/s) for the capacity under the SLO",
    )
    p.add_argument(
        "--capacity-requests", type=int, default=40, help="requests per swept rate (default 40)"
    )
    p.add_argument(
        "--capacity-share",
        type=float,
        default=0.9,
        help="share of requests in SLO that defines capacity (default 0.9)",
    )
    p.add_argument(
        "--eos-token-id",
        type=int_list,
        action="append",
        default=[],
        metavar="ID",
        help="token id(s) to suppress so outputs reach their length (repeatable)",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    try:
        endpoints = [parse_endpoint(u) for u in args.endpoint]
        profile = load_step_profile(args.profile)
        spec = workload_spec_from(args)
        settings = ObserveSettings(
            max_prompt_tokens=args.max_prompt_tokens,
            max_output_tokens=args.max_output_tokens,
            slo=slo_from(args),
            share=args.capacity_share,
            capacity_rates=tuple(args.capacity_rates),
            capacity_requests=args.capacity_requests,
            eos_token_ids=tuple(i for ids in args.eos_token_id for i in ids),
            timeout_s=args.timeout,
            seed=args.seed,
        )
        workload = spec.build()
        report = observe(endpoints, workload, profile, settings, spec.label())
    except (CLIError, EndpointError, StepProfileError, ValueError, OSError) as exc:
        print(f"autotuner observe: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print_json(report.as_dict())
    else:
        print(format_report(report))
    return EXIT_OK
