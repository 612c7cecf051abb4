"""What every command shares: the exit codes, the sandbox choices, the options that several
commands take (and their reading into the stages' records), and the output formats.

Each is written here once so that two commands cannot drift apart on what ``--sandbox`` accepts,
what exit status 2 means, or how a TTFT target is spelt on the command line.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autotuner.identity import json_safe
from autotuner.isolation import BACKEND_ORDER
from autotuner.resources import baseline_path
from autotuner.sim.engine import ClusterSpec
from autotuner.sim.metrics import SLO
from autotuner.simulation import WorkloadSpec

# Exit statuses, the same for every command. EXIT_USAGE covers every expected failure (a bad
# option, file, trace, policy or endpoint): one line on stderr, never a traceback.
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and its subject failed (a policy broke, a gate refused)
EXIT_USAGE = 2
EXIT_REJECTED = 3  # ``evaluate``: the static check refused the policy file; nothing ran
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT

# What ``--sandbox`` accepts wherever it appears: a backend by name, or the strongest that works.
SANDBOX_CHOICES = ("auto", *BACKEND_ORDER)


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


def add_param_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="set a declared tunable (repeatable)")


def add_sandbox_option(g: Any, *, default: str | None = "auto",
                       help_text: str = "isolation backend (default: the strongest that works "
                       "here)") -> None:
    """``--sandbox`` on a parser or group; ``default=None`` leaves the choice to a config."""
    g.add_argument("--sandbox", default=default, choices=SANDBOX_CHOICES, help=help_text)


def cluster_from(args: argparse.Namespace) -> ClusterSpec:
    for name in ("replicas", "tp", "max_batch_tokens"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be at least 1")
    cluster = ClusterSpec(
        model=args.model, gpu=args.gpu, tp=args.tp, replicas=args.replicas,
        max_batch_tokens=args.max_batch_tokens,
    )
    cluster.cost_model()  # unknown names and models that do not fit fail here, clearly
    return cluster


def workload_spec_from(args: argparse.Namespace) -> WorkloadSpec:
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


def slo_from(args: argparse.Namespace) -> SLO:
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
    return resolve_policy(text)[0]


def resolve_policy(text: str) -> tuple[Path, bool]:
    """(the policy file, whether it is a shipped baseline named by name).

    Only a baseline given by its name is package data, installed with autotuner itself; any
    path the user gives is user input, wherever it points.
    """
    path = Path(text)
    if path.exists() or path.suffix == ".py" and "/" in text:
        return path, False
    try:
        return baseline_path(text), True
    except FileNotFoundError as exc:
        if path.suffix == ".py":
            raise CLIError(f"{text}: no such policy file") from None
        raise CLIError(str(exc)) from None


def number_list(kind: type) -> Callable[[str], tuple[Any, ...]]:
    """An argparse type for comma-separated numbers of ``kind`` (``int`` or ``float``)."""
    what = "whole numbers" if kind is int else "numbers"

    def parse(text: str) -> tuple[Any, ...]:
        try:
            values = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError("expected at least one number")
        return values

    return parse


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
        if unit == "x":
            return f"{value:.2f}"
        return f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _ids(ids: Sequence[int], total: int) -> str:
    shown = ", ".join(str(i) for i in ids)
    return f" (requests {shown}{', ...' if total > len(ids) else ''}; worst first)" if ids else ""


def format_metrics(m: dict[str, Any]) -> str:
    """``summarize``'s dict as the table ``simulate`` and ``evaluate`` print."""
    from autotuner.sim.metrics import SLO

    lines = []
    for key, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("tbt_s", "TBT (iterations)"),
                       ("max_gap_s", "longest gap/req"), ("e2e_s", "end-to-end"),
                       ("queue_s", "queueing delay")):
        s = m[key]
        lines.append(
            f"  {label:<18}" + "".join(
                f"{k} {_fmt(s[k], 's'):>10}   " for k in ("mean", "p50", "p90", "p99")
            ).rstrip()
        )
    slo = SLO(**m["slo"])
    growth = m["backlog_growth"]
    rows = [
        ("requests", f"{m['requests']:,} ({m['finished']:,} finished, {m['unfinished']:,} not "
                     f"by the cut-off at {_fmt(m['cutoff_s'], 's')})"),
        ("scored window", f"{m['window_requests']:,} requests over {_fmt(m['window_s'], 's')} "
                          f"(warm-up excluded, up to the last arrival)"),
        ("duration", _fmt(m["duration_s"], "s")),
        ("throughput", f"{_fmt(m['throughput_tok_s'])} output tok/s in the window, "
                       f"{_fmt(m['total_throughput_tok_s'])} total tok/s over the run"),
        ("SLO per request", slo.describe()),
        ("SLO attainment", _fmt(m["attainment"], "%")),
        ("  each condition", f"TTFT {_fmt(m['ttft_ok'], '%')}, TPOT {_fmt(m['tpot_ok'], '%')}, "
                             f"longest gap {_fmt(m['tbt_ok'], '%')}"),
        ("sustainable", f"{'yes' if m['sustainable'] else 'NO'} (waiting backlog grew by "
                        f"{_fmt(growth, '%')} of the window's prompt tokens; limit "
                        f"{_fmt(slo.max_backlog_growth, '%')})"),
        ("goodput", f"{_fmt(m['goodput_tok_s'])} tok/s ({m['goodput_rps']:.2f} req/s)"),
        ("longest wait", f"{_fmt(m['longest_wait_s'], 's')} (at worst "
                         f"{m['max_wait_over_deadline']:.2f}x a deadline; p99 "
                         f"{_fmt(m['ttft_over_deadline_p99'], 'x')}x)"),
        ("finished after last arrival", _fmt(m["late_finish_share"], "%")),
        ("fairness (Jain, deciles)", f"{m['jain_slowdown']:.3f} (1 = every prompt-length decile "
                                     "waits the same share of its deadline)"),
        ("starved", f"{m['starved']:,}{_ids(m['starved_ids'], m['starved'])}"),
        ("priority inversions", f"{m['priority_inversions']:,}"
                                f"{_ids(m['inversion_ids'], m['priority_inversions'])}"),
        ("cost", "-" if m["cost_per_mtok_usd"] is None
         else f"${m['cost_per_mtok_usd']:.3f} per million output tokens"),
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


def print_json(obj: Any) -> None:
    """``obj`` as indented JSON, NaN and inf as null."""
    print(json.dumps(json_safe(obj), indent=2, default=_json_default))
