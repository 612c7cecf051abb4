"""``autotuner gate --policy FILE``: the promotion gate on any policy file
(``autotuner.gate_file``), every condition printed with the figures that decided it.

Exit status: 0 the gate passes, 1 it refuses, 2 usage or bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from autotuner.commands.common import EXIT_FAILED, EXIT_OK, add_sandbox_option
from autotuner.commands.views import guarded
from autotuner.gate_file import GateFileVerdict, judge_policy_file
from autotuner.review import fairness_lines

HELP = ("run the promotion gate on a policy file against the tuned baseline and print each "
        "condition with its figures")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True, metavar="FILE",
                   help="the policy file to judge (it runs at its declared defaults)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", metavar="TOML", help="campaign file: cluster, SLO, workloads, "
                   "budget and gate settings (default: the built-in defaults); the baseline and "
                   "references are tuned here with its budget")
    g.add_argument("--campaign", metavar="NAME", help="judge against this campaign's tuned "
                   "baseline and references, on its held-out workloads")
    add_sandbox_option(p, default=None, help_text="isolation backend (default: the config's)")
    p.add_argument("--parallelism", type=int, help="simulations at once (default: the "
                   "config's)")
    p.add_argument("--json", action="store_true", help="the full gate result as JSON")


def run(args: argparse.Namespace, out: TextIO | None = None, log: TextIO | None = None,
        simulator: Any = None) -> int:
    """``out``: the verdict (stdout); ``log``: progress (stderr); ``simulator``: tests only."""
    out, log = out or sys.stdout, log or sys.stderr

    def progress(text: str) -> None:
        log.write(f"gate: {text}\n")
        log.flush()

    def judge() -> int:
        verdict = judge_policy_file(args.policy, config=args.config, campaign=args.campaign,
                                    sandbox=args.sandbox, parallelism=args.parallelism,
                                    simulator=simulator, log=progress)
        if args.json:
            out.write(json.dumps({"policy": args.policy, "params": dict(verdict.params),
                                  "baseline": {"name": verdict.baseline.name,
                                               "params": dict(verdict.baseline.params),
                                               "from": verdict.where},
                                  "result": verdict.result.to_dict()},
                                 indent=2, default=str) + "\n")
        else:
            print_verdict(out, verdict)
        return EXIT_OK if verdict.result.passed else EXIT_FAILED

    return guarded("gate", judge)


def _params(p: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in sorted(p.items())) or "no tunables"


def print_verdict(out: TextIO, verdict: GateFileVerdict) -> None:
    """Each condition with its figures, then the claim per instance beside the fairness
    figures a capacity alone hides."""
    result, baseline = verdict.result, verdict.baseline
    out.write(f"policy     {verdict.policy} ({_params(verdict.params)})\n")
    out.write(f"baseline   {baseline.name} ({_params(baseline.params)}), {verdict.where}\n")
    for stem, row in result.references.items():
        mark = "  <- best" if stem == result.reference else ""
        err = f"  error: {row['error']}" if row.get("error") else ""
        out.write(f"reference  {stem} ({_params(row['params'])}): {row['mean_gain']:+.1%} over "
                  f"the baseline{mark}{err}\n")
    out.write(f"held-out   {len(result.instances)} instances; SLO share "
              f"{verdict.cfg.slo.share:g}\n\n")
    out.write("conditions (judged at the candidate's own claimed capacity, then across "
              "workloads):\n")
    for condition in result.conditions:
        out.write(f"  {condition.line()}\n")
    out.write("\nat the claimed capacity, per instance:\n")
    for line in fairness_lines(result.baseline.capacities, result.at_claim):
        out.write(f"  {line}\n")
    verdict_line = "PASSES" if result.passed else f"REFUSED ({', '.join(result.failed())})"
    out.write(f"\ngate: {verdict_line}\n")
    if verdict.copy_of:
        out.write(f"note: {verdict.policy} is the reference policy {verdict.copy_of} (the same "
                  "program up to names, docstrings and tunable defaults): not a discovery\n")
