"""``autotuner resume CAMPAIGN``: continue a stopped or killed campaign, optionally with a
larger budget (the rest of its config is kept as it was run)."""

from __future__ import annotations

import argparse
import sys

from autotuner.campaign import Campaign, CampaignError, campaign_dir, one_line
from autotuner.commands.common import EXIT_USAGE
from autotuner.commands.run import add_execution_options
from autotuner.config import ConfigError, load_config

HELP = "continue a stopped or killed campaign"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("campaign", help="campaign name (under results/) or folder")
    g = p.add_argument_group("budget changes (the rest of the config is kept as run)")
    g.add_argument("--proposals", type=int, help="new proposal budget (total, not extra); a "
                   "finished campaign searches on only when given a larger budget")
    g.add_argument("--wall-time", type=float, metavar="SECONDS",
                   help="new wall-time budget (total, counting the time already spent)")
    g.add_argument("--parallelism", type=int, help="evaluations at once")
    h = p.add_argument_group("execution changes (default: as the campaign was run)")
    add_execution_options(h)


def run(args: argparse.Namespace) -> int:
    try:
        folder = campaign_dir(args.campaign)
        overrides = {"budget.proposals": getattr(args, "proposals", None),
                     "budget.wall_time_s": getattr(args, "wall_time", None),
                     "parallelism": getattr(args, "parallelism", None),
                     "executor": getattr(args, "executor", None),
                     "optuna_storage": getattr(args, "storage", None),
                     # the folder is where it is, whatever name/results_dir the file says
                     "name": folder.name, "results_dir": str(folder.parent)}
        cfg = load_config(folder / "config.toml", **overrides)
        extend = overrides["budget.proposals"] is not None or \
            overrides["budget.wall_time_s"] is not None
        return Campaign(cfg, resume=True, extend=extend).run()
    except (ConfigError, CampaignError) as exc:
        print(f"autotuner resume: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
