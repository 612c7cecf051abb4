"""``autotuner simulate``: run a policy file on a workload and print its metrics (and capacity).

A user's policy file runs as a campaign's proposal does, checked and sandboxed with the trusted
side replaying its decisions; only ``--trusted`` or a shipped baseline named by name runs in this
process.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from autotuner.commands.common import (
    EXIT_FAILED,
    EXIT_OK,
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
    resolve_policy,
    slo_from,
    workload_spec_from,
)
from autotuner.config import GateConfig
from autotuner.evaluate import REJECTED, evaluate
from autotuner.isolation import Limits, SandboxUnavailable, get_backend
from autotuner.policy import PolicySource, read_policy_file
from autotuner.sim.engine import ClusterSpec
from autotuner.sim.measured import load_step_profile
from autotuner.sim.metrics import (
    SLO,
    RunMetrics,
    probe_horizon,
    run_metrics,
    search_capacity_settled,
)
from autotuner.sim.workload import MAX_REQUESTS
from autotuner.simulation import WorkloadSpec, metrics_of, run_policy

HELP = "run a policy file on a workload and print its metrics (checked and sandboxed unless " \
       "--trusted)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", default="fixed_chunk", help="policy file or baseline name")
    add_param_option(p)
    add_cluster_options(p)
    add_workload_options(p)
    add_slo_options(p)
    p.add_argument("--horizon", type=float, help="stop at this simulated time (s)")
    p.add_argument("--profile", metavar="FILE", help="cost the cluster with a step-time "
                   "profile of a live engine (autotuner profile) instead of --gpu's roofline")
    p.add_argument("--capacity", action="store_true",
                   help="also find the capacity: the highest sustainable rate with "
                        "--capacity-share of the window's requests in SLO")
    p.add_argument("--capacity-share", type=float, default=0.9)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_isolation_options(p)


def add_isolation_options(p: argparse.ArgumentParser) -> None:
    """How a command that runs a policy file isolates it: the sandbox, unless --trusted."""
    g = p.add_argument_group("isolation (a policy file is code: it runs checked and sandboxed)")
    add_sandbox_option(g)
    g.add_argument("--timeout", type=float, default=120.0,
                   help="wall-time limit of one sandboxed run, seconds (default 120)")
    g.add_argument("--trusted", action="store_true",
                   help="run the policy file in THIS process, without the static check or the "
                   "sandbox: it can then do anything you can (read and write your files, use "
                   "the network). Only for a file you wrote or have read. Shipped baselines "
                   "given by name (fixed_chunk, ...) always run this way: they are part of "
                   "autotuner")


RunOnce = Callable[[Any, float | None], tuple[Any, str | None]]


def policy_runner(args: argparse.Namespace, path: Path, shipped: bool, source: PolicySource,
                  params: dict[str, Any], cluster: ClusterSpec,
                  slo: SLO) -> tuple[RunOnce, str, Callable[[], None]]:
    """(run the policy on a workload -> (trusted SimResult or None, error), a line saying how it
    runs, a function releasing what the runs kept).

    A user's policy file goes through the static check and the sandbox, with the trusted side
    replaying its decisions (``autotuner.evaluate``), exactly as a campaign runs a proposal;
    only ``--trusted`` or a shipped baseline named by name runs in this process.
    """
    if args.trusted or shipped:
        def in_process(wl: Any, horizon: float | None) -> tuple[Any, str | None]:
            result = run_policy(source, cluster, wl, params=params, horizon=horizon)
            return result, result.error

        why = "a shipped baseline" if shipped and not args.trusted else "--trusted"
        return in_process, f"this process, no sandbox ({why})", lambda: None

    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        raise CLIError("--timeout must be a positive number of seconds")
    try:
        backend = get_backend(args.sandbox)
    except SandboxUnavailable as exc:
        raise CLIError(f"{exc} (or run a file you trust with --trusted)") from None
    limits = Limits(wall_s=args.timeout, cpu_s=max(1, math.ceil(args.timeout)))
    warm = bool(args.capacity)  # a capacity search runs many: keep a spare worker started

    def sandboxed(wl: Any, horizon: float | None) -> tuple[Any, str | None]:
        ev = evaluate(source.code, name=str(path), params=params, cluster=cluster, workload=wl,
                      slo=slo, horizon=horizon, sandbox=backend, limits=limits, warm=warm)
        if ev.verdict == REJECTED:
            raise CLIError(f"{path}: refused by the static check: " + "; ".join(ev.reasons))
        if not ev.ok:
            return None, "; ".join(ev.reasons) or ev.verdict
        return ev.result, None

    line = f"sandbox {backend.describe()}" + ("  [WEAKER]" if backend.weaker else "")
    return sandboxed, line, backend.release_spare


def run(args: argparse.Namespace) -> int:
    path, shipped = resolve_policy(args.policy)
    source = read_policy_file(path)  # syntax and TUNABLES, read without running the file
    params = source.resolve_params(parse_params(args.param))
    cluster = cluster_from(args)
    if args.profile:
        step = load_step_profile(args.profile)
        cluster = replace(cluster, profile=step, max_num_seqs=step.max_num_seqs)
    spec = workload_spec_from(args)
    slo = slo_from(args)
    if args.capacity and not 0 < args.capacity_share <= 1:
        raise CLIError("--capacity-share must be in (0, 1]")
    workload = spec.build()
    run_once, isolation, release = policy_runner(args, path, shipped, source, params, cluster,
                                                 slo)
    try:
        result, error = run_once(workload, args.horizon)
        report: dict[str, Any] = {
            "policy": source.name, "params": params, "workload": spec.label(),
            "rate": workload.rate, "cluster": cluster.__dict__, "isolation": isolation,
            "metrics": None if result is None else metrics_of(cluster, workload, result, slo),
        }
        if args.capacity and not error:
            report["capacity"] = _capacity(run_once, spec, workload, slo, args.capacity_share)
    finally:
        release()
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
        print(f"runs in   {isolation}")
        if report["metrics"] is not None:
            print(format_metrics(report["metrics"]))
        if "capacity" in report:
            c = report["capacity"]
            checked = {True: "held on a run twice as long", False: "still moving on the "
                       "longest run allowed", None: "not checked on a longer run"}[c["settled"]]
            print(f"  capacity: {c['rate']:.2f} req/s (the highest sustainable rate at which "
                  f">= {c['share']:.0%} of the window's requests meet the SLO; found on "
                  f"{c['requests']:,} requests, {checked})")
    if error:
        print(f"autotuner simulate: policy failed: {error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _capacity(run_once: RunOnce, spec: WorkloadSpec, workload: Any, slo: SLO, share: float
              ) -> dict[str, Any]:
    """The highest sustainable rate at which ``share`` of the window's requests meet the SLO,
    each probe run the same way (sandboxed or not) as the main run, and checked as the gate
    checks it on a scenario run twice as long (a trace holds what it holds)."""
    def probe_at(rate: float, multiple: int) -> RunMetrics:
        base = workload if multiple == 1 else replace(spec, requests=spec.requests * multiple,
                                                      rate=None).build()
        wl = base.with_rate(rate)
        result, err = run_once(wl, probe_horizon(wl, slo))
        if err or result is None:
            return RunMetrics.failed(wl, err or "the run failed", slo.kind)
        return run_metrics(wl, result, slo)

    longest = 1 if spec.trace else GateConfig.capacity_max_multiple
    while longest > 1 and spec.requests * longest > MAX_REQUESTS:
        longest //= 2
    cap = search_capacity_settled(probe_at, max(workload.rate, 1e-3), share,
                                  max_multiple=longest)
    return {"rate": cap.rate, "share": cap.share, "probes": cap.probes, "error": cap.error,
            "requests": spec.requests * cap.multiple if not spec.trace else len(workload),
            "settled": cap.settled}
