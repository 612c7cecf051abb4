"""``autotuner evaluate``: check, sandbox and score one policy file, as a campaign scores a
proposal (``autotuner.evaluate``), and say how it ended: exit 0 ok, 1 failed, 3 rejected by the
static check, 2 a usage or setup error."""

from __future__ import annotations

import argparse
import sys

from autotuner.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REJECTED,
    CLIError,
    add_cluster_options,
    add_param_option,
    add_sandbox_option,
    add_slo_options,
    add_workload_options,
    cluster_from,
    format_metrics,
    parse_params,
    print_json,
    resolve_policy_path,
    slo_from,
    workload_spec_from,
)
from autotuner.evaluate import FAILED, OK, REJECTED, evaluate_file
from autotuner.isolation import Limits, SandboxUnavailable, get_backend

HELP = "check, sandbox and score a policy file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True, help="policy file (or a shipped baseline's name)")
    add_param_option(p)
    add_cluster_options(p)
    add_workload_options(p)
    add_slo_options(p)
    p.add_argument("--horizon", type=float, help="stop at this simulated time (s)")
    g = p.add_argument_group("sandbox")
    add_sandbox_option(g)
    g.add_argument("--timeout", type=float, default=Limits.wall_s,
                   help=f"wall-time limit, seconds (default {Limits.wall_s:g})")
    g.add_argument("--cpu-limit", type=int, default=Limits.cpu_s,
                   help=f"CPU-time limit, seconds (default {Limits.cpu_s})")
    g.add_argument("--memory-limit", type=int, default=Limits.memory_bytes >> 20,
                   help=f"memory limit, MiB (default {Limits.memory_bytes >> 20})")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    path = resolve_policy_path(args.policy)
    if not path.is_file():
        raise CLIError(f"{args.policy}: no such policy file")
    if not (args.timeout > 0 and args.cpu_limit > 0 and args.memory_limit >= 64):
        raise CLIError("--timeout and --cpu-limit must be positive, --memory-limit >= 64 MiB")
    limits = Limits(wall_s=args.timeout, cpu_s=args.cpu_limit,
                    memory_bytes=args.memory_limit << 20)
    params = parse_params(args.param)
    cluster, spec, slo = cluster_from(args), workload_spec_from(args), slo_from(args)
    try:
        backend = get_backend(args.sandbox)
    except SandboxUnavailable as exc:
        raise CLIError(str(exc)) from None
    try:
        ev = evaluate_file(path, params=params, cluster=cluster, workload=spec, slo=slo,
                           horizon=args.horizon, sandbox=backend, limits=limits)
    except SandboxUnavailable as exc:  # SandboxBroken: the sandbox, not the policy, failed
        raise CLIError(str(exc)) from None
    if args.json:
        report = ev.to_dict()
        report["sandbox"] = backend.describe()
        report["workload"] = spec.label()
        print_json(report)
    else:
        print(f"policy    {ev.policy}  {ev.params}")
        print(f"sandbox   {backend.describe()}" + ("  [WEAKER]" if backend.weaker else ""))
        print(f"workload  {spec.label()}: {spec.requests:,} requests"
              + (f" at {spec.rate:g} req/s" if spec.rate else ""))
        print(f"verdict   {ev.verdict}  ({ev.wall_s:.2f} s, {ev.decisions:,} decisions replayed)")
        for reason in ev.reasons:
            print(f"  - {reason}")
        if ev.metrics:
            print(format_metrics(ev.metrics))
    sys.stdout.flush()
    return {OK: EXIT_OK, FAILED: EXIT_FAILED, REJECTED: EXIT_REJECTED}[ev.verdict]
