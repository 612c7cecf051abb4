"""``autotuner workloads``: the built-in workload scenarios, one line each."""

from __future__ import annotations

import argparse

from autotuner.commands.common import EXIT_OK, print_json
from autotuner.sim.workload import SCENARIOS

HELP = "list the built-in workload scenarios"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    rows = [(s.name, f"{s.default_rate:g} req/s", s.description) for s in SCENARIOS.values()]
    if args.json:
        print_json([{"name": n, "default_rate": SCENARIOS[n].default_rate, "description": d}
                    for n, _, d in rows])
        return EXIT_OK
    width = max(len(r[0]) for r in rows)
    for name, rate, desc in rows:
        print(f"{name:<{width}}  {rate:>10}  {desc}")
    return EXIT_OK
