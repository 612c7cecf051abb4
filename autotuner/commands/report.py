"""``autotuner report CAMPAIGN``: write a campaign's report.html (plots) and report.md, and print
the headline: exit 0 with the report written, 2 on a usage error."""

from __future__ import annotations

import argparse
from pathlib import Path

from autotuner.campaign import campaign_dir
from autotuner.commands.common import EXIT_OK, add_sandbox_option
from autotuner.commands.views import guarded
from autotuner.report import ReportOptions, render_headline, write_report

HELP = "write a campaign's report.html (plots) and report.md"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("campaign", help="campaign name (under results/) or folder")
    p.add_argument("--out", metavar="DIR", help="where report.html and report.md go "
                   "(default: the campaign folder)")
    p.add_argument("--reference-seeds", type=int, default=1, metavar="N",
                   help="held-out seeds the reference-policy comparison uses (default 1; "
                   "0 skips it; -1 uses all, as the gate)")
    p.add_argument("--parallelism", type=int, help="simulations at once (default: the "
                   "campaign's)")
    add_sandbox_option(p, default=None, help_text="isolation backend (default: the campaign's)")


def run(args: argparse.Namespace) -> int:
    return guarded("report", lambda: _report(args))


def _report(args: argparse.Namespace) -> int:
    folder = campaign_dir(args.campaign)
    n = args.reference_seeds
    opts = ReportOptions(parallelism=args.parallelism,
                         reference_seeds=None if n is not None and n < 0 else n,
                         sandbox=args.sandbox)
    html_path, md_path, report = write_report(folder, Path(args.out) if args.out else None, opts)
    comp = report.compute
    print(render_headline(report))
    print(f"wrote {html_path} and {md_path} in {comp.seconds:.0f} s "
          f"({comp.simulations} simulations run, {comp.cached} from cache)")
    return EXIT_OK
