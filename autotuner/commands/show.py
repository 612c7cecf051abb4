"""``autotuner show CAMPAIGN CANDIDATE``: a candidate's code, scores, failures, lineage and
cost."""

from __future__ import annotations

import argparse
import sys

from autotuner.commands.common import EXIT_OK
from autotuner.commands.views import guarded
from autotuner.review import open_campaign, resolve, show_text

HELP = "a candidate's code, scores, failures, lineage and cost"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("campaign", help="campaign name (under results/) or folder")
    p.add_argument("candidate", help="candidate id (c0012, 12), 'promoted', 'best' or 'baseline'")


def run(args: argparse.Namespace) -> int:
    def show() -> int:
        _, _, archive = open_campaign(args.campaign)
        with archive:
            sys.stdout.write(show_text(archive, resolve(archive, args.candidate)))
        return EXIT_OK

    return guarded("show", show)
