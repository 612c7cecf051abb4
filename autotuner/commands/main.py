"""``autotuner``: the parser built from the command modules, and the one place where an expected
failure (a bad option, file, trace, policy or endpoint) becomes one line on stderr and exit
status 2 (``common.EXIT_USAGE``), never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from autotuner import __version__
from autotuner.commands import (
    bench,
    calibrate,
    diff,
    evaluate,
    export,
    gate,
    observe,
    profile,
    replay,
    report,
    resume,
    router,
    run,
    show,
    simulate,
    status,
    workloads,
)
from autotuner.commands.common import EXIT_INTERRUPTED, EXIT_USAGE, CLIError
from autotuner.isolation import SandboxUnavailable

# in the order ``autotuner --help`` lists them
COMMANDS = {
    "simulate": simulate, "workloads": workloads, "calibrate": calibrate, "bench": bench,
    "evaluate": evaluate, "run": run, "resume": resume, "status": status, "diff": diff,
    "show": show, "replay": replay, "gate": gate, "report": report, "profile": profile,
    "observe": observe, "router": router, "export": export,
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
    return parser


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
