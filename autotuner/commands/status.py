"""``autotuner status CAMPAIGN``: a campaign's candidates as a table (or JSON)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

from autotuner.commands.common import EXIT_OK, print_json
from autotuner.commands.views import guarded
from autotuner.review import open_campaign, status_data, status_text

HELP = "a campaign's candidates as a table"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("campaign", help="campaign name (under results/) or folder")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def terminal_width(out: TextIO) -> int:
    """The terminal's width, or 160 columns when the output is not a terminal."""
    try:
        return os.get_terminal_size(out.fileno()).columns if out.isatty() else 160
    except (OSError, ValueError, AttributeError):
        return 160


def run(args: argparse.Namespace) -> int:
    def status() -> int:
        folder, cfg, archive = open_campaign(args.campaign)
        with archive:
            if args.json:
                print_json(status_data(folder, cfg, archive))
            else:
                sys.stdout.write(status_text(folder, cfg, archive, terminal_width(sys.stdout)))
        return EXIT_OK

    return guarded("status", status)
