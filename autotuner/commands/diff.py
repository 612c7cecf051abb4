"""``autotuner diff CAMPAIGN CANDIDATE``: a candidate's code and tuned parameters as a unified
diff, coloured on a terminal."""

from __future__ import annotations

import argparse
import os
import sys

from autotuner.commands.common import EXIT_OK
from autotuner.commands.views import guarded
from autotuner.review import colorize, diff_text, open_campaign

HELP = "a candidate's code and tuned parameters as a unified diff"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("campaign", help="campaign name (under results/) or folder")
    p.add_argument("candidate", help="candidate id (c0012, 12), 'promoted' or 'best'")
    p.add_argument("--against", default="parent",
                   help="parent (default), baseline, promoted, or a candidate id")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                   help="colour the diff (auto: only on a terminal)")


def _use_color(mode: str) -> bool:
    if mode == "always":
        return True
    if mode == "never" or os.environ.get("NO_COLOR"):
        return False
    return sys.stdout.isatty()


def run(args: argparse.Namespace) -> int:
    def diff() -> int:
        _, _, archive = open_campaign(args.campaign)
        with archive:
            text = diff_text(archive, args.candidate, args.against)
        sys.stdout.write(colorize(text) if _use_color(args.color) else text)
        return EXIT_OK

    return guarded("diff", diff)
