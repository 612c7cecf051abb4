"""``autotuner run``: start a new campaign from a campaign file and the overrides given here."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from autotuner.campaign import Campaign, CampaignError, one_line
from autotuner.commands.common import EXIT_USAGE, add_sandbox_option
from autotuner.config import EXECUTORS, ConfigError, load_config

HELP = "run a search campaign (defaults: offline proposer, minutes)"

# option (its argparse dest) -> the config field it overrides
OVERRIDES = {
    "name": "name", "results_dir": "results_dir", "seed": "seed", "parallelism": "parallelism",
    "proposals": "budget.proposals", "trials": "budget.trials", "wall_time": "budget.wall_time_s",
    "tokens": "budget.tokens", "usd": "budget.usd", "proposer": "proposer.kind",
    "llm_model": "proposer.llm.model", "base_url": "proposer.llm.base_url",
    "sandbox": "sandbox.backend", "requests": "workloads.requests",
    "executor": "executor", "storage": "optuna_storage",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """A campaign file plus overrides of its common fields."""
    p.add_argument("--config", metavar="FILE", help="campaign file (TOML); built-in defaults "
                   "for everything it leaves out (see campaign.example.toml)")
    g = p.add_argument_group("overrides (win over the campaign file)")
    g.add_argument("--name", help="campaign name; results go to RESULTS_DIR/NAME")
    g.add_argument("--results-dir", help="where campaign folders live (default results)")
    g.add_argument("--seed", type=int, help="campaign seed")
    g.add_argument("--parallelism", type=int, help="evaluations at once (default 2)")
    add_execution_options(g)
    g.add_argument("--proposals", type=int, help="proposal budget")
    g.add_argument("--trials", type=int, help="Optuna trials per candidate (and the baseline)")
    g.add_argument("--wall-time", type=float, metavar="SECONDS", help="wall-time budget")
    g.add_argument("--tokens", type=int, help="LLM token budget")
    g.add_argument("--usd", type=float, help="LLM dollar budget")
    g.add_argument("--proposer", choices=["auto", "offline", "llm"], help="who writes proposals")
    g.add_argument("--llm-model", metavar="NAME",
                   help="the proposer's LLM, as its endpoint names it (else $OPENAI_MODEL)")
    g.add_argument("--model", dest="deprecated_model", help=argparse.SUPPRESS)
    g.add_argument("--base-url", help="OpenAI-compatible endpoint URL (else $OPENAI_BASE_URL)")
    add_sandbox_option(g, default=None, help_text="isolation backend")
    g.add_argument("--requests", type=int,
                   help="requests per workload instance, for every scenario")
    g.add_argument("--scenarios", help="comma-separated built-in scenarios")


def add_execution_options(g: argparse._ArgumentGroup) -> None:
    """Where evaluations run and where Optuna's studies live (``run`` and ``resume``)."""
    g.add_argument("--executor", choices=EXECUTORS,
                   help="where evaluations run: local processes (default), or Ray tasks on the "
                   "cluster at $RAY_ADDRESS (else the one `ray start` began on this machine)")
    g.add_argument("--storage", metavar="URL",
                   help="Optuna's studies in an RDB (sqlite:///file.db, "
                   "postgresql://user@host/db) instead of the campaign folder's journal")


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields the options given set (dotted names, as ``load_config`` takes them)."""
    out = {dotted: getattr(args, attr, None) for attr, dotted in OVERRIDES.items()}
    if getattr(args, "deprecated_model", None) is not None:
        print("autotuner run: --model is deprecated here, use --llm-model (in simulate, --model "
              "is the served model)", file=sys.stderr)
        out["proposer.llm.model"] = out["proposer.llm.model"] or args.deprecated_model
    if getattr(args, "requests", None) is not None:
        out["workloads.scenario_requests"] = {}  # one count for every scenario
        out["workloads.heldout_requests"] = {}
    if getattr(args, "scenarios", None):
        out["workloads.scenarios"] = [s.strip() for s in args.scenarios.split(",") if s.strip()]
        out["workloads.screen"] = [s for s in ("mixed",) if s in out["workloads.scenarios"]] or \
            out["workloads.scenarios"][:1]
    return {k: v for k, v in out.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(getattr(args, "config", None), **overrides(args))
        return Campaign(cfg).run()
    except (ConfigError, CampaignError) as exc:
        print(f"autotuner run: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
