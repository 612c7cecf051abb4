"""``autotuner``: the parser built from the command modules, and the one place where an expected
failure (a bad option, file, trace, policy or endpoint) becomes one line on stderr and exit
status 2 (``common.EXIT_USAGE``), never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from autotuner import __version__
from autotuner.commands import (
    bench,
    calibrate,
    evaluate,
    observe,
    profile,
    resume,
    run,
    simulate,
    workloads,
)
from autotuner.commands.common import EXIT_INTERRUPTED, EXIT_USAGE, CLIError
from autotuner.isolation import SandboxUnavailable

# in the order ``autotuner --help`` lists them
COMMANDS = {
    "simulate": simulate, "workloads": workloads, "calibrate": calibrate, "bench": bench,
    "evaluate": evaluate, "run": run, "resume": resume, "profile": profile, "observe": observe,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autotuner",
        description="Search for LLM-serving heuristics with an LLM, scored in a cluster simulator.",
    )
    parser.add_argument("--version", action="version", version=f"autotuner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.HELP)
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    _add_campaign_commands(sub)
    return parser


def _add_campaign_commands(sub: Any) -> None:
    """The campaign loop's subcommands (autotuner.campaign, autotuner.review, autotuner.report),
    still wired from their own modules."""
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

    from autotuner import gate_cmd

    p = sub.add_parser("gate", help="run the promotion gate on a policy file against the tuned "
                       "baseline and print each condition with its figures")
    gate_cmd.add_gate_arguments(p)
    p.set_defaults(func=gate_cmd.run_gate_command)

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
        return EXIT_INTERRUPTED
    except (CLIError, SandboxUnavailable, ValueError, KeyError, FileNotFoundError,
            OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"autotuner {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
