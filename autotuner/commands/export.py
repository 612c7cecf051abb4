"""``autotuner export CAMPAIGN:CANDIDATE --target T``: the candidate compiled to what each serving
engine can express, each projection re-simulated with the campaign's yardstick, and the share of
the simulated gain that survives printed per target (``autotuner.export``).

Exit status: 0 written, 2 usage or bad input (one line on stderr; nothing written).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from autotuner.commands.common import EXIT_OK, EXIT_USAGE, CLIError, add_sandbox_option
from autotuner.commands.views import guarded
from autotuner.export import (
    TARGETS,
    ExportError,
    ExportResult,
    TargetResult,
    campaign_subject,
    export,
    file_subject,
    parse_targets,
)

HELP = ("compile a candidate to vLLM, SGLang, llm-d, Dynamo or production-stack configuration "
        "and re-simulate how much of its gain survives")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("subject", nargs="?", metavar="CAMPAIGN:CANDIDATE",
                   help="the candidate (e.g. default:promoted, default:c0012)")
    p.add_argument("--policy", metavar="FILE", help="a policy file instead (runs at its "
                   "declared defaults), judged under --config")
    p.add_argument("--config", metavar="TOML", help="with --policy: the campaign file whose "
                   "cluster, SLO and held-out workloads are the yardstick (default: the "
                   "built-in defaults); its baseline is tuned here with its budget")
    p.add_argument("--target", action="append", default=[], metavar="TARGET",
                   help=f"one of {', '.join(TARGETS)}, or all (repeatable, or comma-separated)")
    p.add_argument("--out", metavar="DIR", help="folder for the files, one subfolder per target, "
                   "replaced as a whole (default: results/<campaign>/exports/<candidate>, or "
                   "exports/<file stem> for --policy)")
    add_sandbox_option(p, default=None, help_text="isolation backend (default: the config's)")
    p.add_argument("--parallelism", type=int, help="simulations at once (default: the config's)")
    p.add_argument("--json", action="store_true", help="the result as JSON")


def _default_out(campaign: str | None, name: str) -> Path:
    if campaign:
        from autotuner.campaign import campaign_dir

        return campaign_dir(campaign) / "exports" / name
    return Path("exports") / name


def run(args: argparse.Namespace, out: TextIO | None = None, log: TextIO | None = None,
        simulator: object = None) -> int:
    """``out``: the result (stdout); ``log``: progress (stderr); ``simulator``: tests only."""
    out, log = out or sys.stdout, log or sys.stderr

    def progress(text: str) -> None:
        log.write(f"export: {text}\n")
        log.flush()

    def body() -> int:
        targets = parse_targets(args.target)
        if bool(args.subject) == bool(args.policy):
            raise CLIError("give either CAMPAIGN:CANDIDATE or --policy FILE")
        if args.config and not args.policy:
            raise CLIError("--config applies to --policy only (a candidate is judged by its "
                           "own campaign)")
        if args.subject:
            campaign, subject = campaign_subject(args.subject)
        else:
            campaign, subject = None, file_subject(args.policy)
        where = Path(args.out) if args.out else _default_out(campaign, subject.name)
        result = export(subject, targets, where, config=args.config, campaign=campaign,
                        sandbox=args.sandbox, parallelism=args.parallelism,
                        simulator=simulator, log=progress)
        if args.json:
            out.write(json.dumps(result_data(result), indent=2, default=str) + "\n")
        else:
            out.write(result_text(result))
        return EXIT_OK

    def guarded_body() -> int:
        try:
            return body()
        except (ExportError, CLIError) as exc:
            print(f"autotuner export: error: {exc}", file=sys.stderr)
            return EXIT_USAGE

    return guarded("export", guarded_body)


def files_of(t: TargetResult) -> list[str]:
    """The files written for a target, by name."""
    return sorted([*t.projection.files, "policy.py", "projection.py", "NOTES.txt",
                   *(f"projection-{n + 1}.py" for n in range(len(t.alternatives)))])


def result_data(r: ExportResult) -> dict[str, object]:
    return {
        "subject": r.subject.origin, "params": dict(r.subject.params), "baseline": r.baseline,
        "baseline_from": r.where, "probe": r.probe,
        "policy_gain": {"mean": r.policy_gain.mean, "lower": r.policy_gain.lower},
        "capacities": {"baseline": r.base_caps, "policy": dict(r.policy_gain.capacities)},
        "targets": {t.projection.target: {
            "line": t.line, "gain": {"mean": t.gain.mean, "lower": t.gain.lower},
            "error": t.gain.error, "capacities": dict(t.gain.capacities),
            "knobs": dict(t.projection.knobs), "lost": list(t.projection.lost),
            "fit": list(t.projection.fit), "folder": str(t.folder),
            "alternatives": [{"label": label, "line": line, "gain": {"mean": g.mean,
                                                                     "lower": g.lower},
                              "capacities": dict(g.capacities), "error": g.error}
                             for label, g, line in t.alternatives],
            "files": files_of(t)} for t in r.targets},
    }


def result_text(r: ExportResult) -> str:
    lines = [f"policy     {r.subject.origin}",
             f"baseline   {r.baseline}, {r.where}",
             f"gain       {r.policy_gain.mean * 100:+.1f} % over the tuned baseline "
             f"(geometric mean of held-out capacity ratios; lower bound "
             f"{r.policy_gain.lower * 100:+.1f} %)",
             f"observed   decisions on {r.probe}", "", "capacity, req/s:",
             *(f"  {row}" for row in r.table()), ""]
    for t in r.targets:
        lines.append(t.line)
        lines += [line for _, _, line in t.alternatives]
        lines += [f"  knob  {f}" for f in t.projection.fit]
        lines += [f"  lost  {x}" for x in t.projection.lost]
        lines.append(f"  files {t.folder}/: " + ", ".join(files_of(t)))
        lines.append("")
    return "\n".join(lines)
