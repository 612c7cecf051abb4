"""Reviewing a campaign: ``status``, ``diff``, ``show`` and ``replay``.

Everything here reads the archive without changing it, so it is safe to run while a campaign is
running (SQLite WAL lets readers in beside the writer). ``replay`` re-runs a policy with its tuned
parameters through the same sandbox and trusted scorer the campaign uses, beside the tuned
baseline on the same requests; given a promotion record (``promotions/<id>.json``) it repeats the
gate's whole measurement and says whether the claim holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from autotuner import archive as A
from autotuner.archive import Archive, Candidate, failure_category
from autotuner.campaign import CampaignError, campaign_dir
from autotuner.config import CampaignConfig, ConfigError, SandboxConfig, load_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# "At saturation": this multiple of the tuned baseline's capacity, where every policy is
# overloaded and output tokens/s shows what it really delivers.
SATURATION_FACTOR = 2.0


class ReviewError(RuntimeError):
    pass


# ------------------------------------------------------------------------------- helpers
def _open(name: str) -> tuple[Path, CampaignConfig, Archive]:
    folder = campaign_dir(name)
    db = folder / "archive.sqlite"
    if not db.is_file():
        raise ReviewError(f"{folder}: no archive.sqlite (the campaign never started)")
    cfg = load_config(folder / "config.toml", name=folder.name, results_dir=str(folder.parent))
    return folder, cfg, Archive(db)


def _resolve(archive: Archive, ref: str) -> Candidate:
    """A candidate by id, by number (``12`` for c0012), or ``promoted``/``baseline``/``best``."""
    if ref == "promoted":
        pid = archive.get_meta("promoted")
        if not pid:
            raise ReviewError("nothing has been promoted in this campaign")
        return archive.get(pid)
    if ref == "best":
        scored = [c for c in archive.candidates() if c.train_score is not None and c.promotable]
        if not scored:
            raise ReviewError("no candidate has a training score yet")
        return max(scored, key=lambda c: c.train_score or 0.0)
    found = archive.find(ref)
    if found is None and ref.isdigit():
        found = archive.find(f"c{int(ref):04d}")
    if found is None:
        raise ReviewError(f"no candidate {ref!r} (see `autotuner status`)")
    return found


def _gain(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:+.1%}"


def _short(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _params_text(params: Mapping[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={fmt(v)}" for k, v in sorted(params.items()))


# Fairness beside capacity: what a share-of-requests capacity hides (run metrics keys).
FAIRNESS_COLUMNS = (
    ("goodput_tok_s", "tok goodput", "{:,.0f}/s"),
    ("longest_wait_s", "longest wait", "{:.3g} s"),
    ("max_wait_over_deadline", "wait/deadline", "{:.3g}x"),
    ("late_finish_share", "late finish", "{:.0%}"),
    ("jain_slowdown", "Jain", "{:.3f}"),
    ("starved", "starved", "{:d}"),
    ("priority_inversions", "inversions", "{:d}"),
)


def _fmt_or_dash(value: Any, fmt: str) -> str:
    if value is None or isinstance(value, float) and not math.isfinite(value):
        return "-"
    try:
        return fmt.format(int(value) if fmt.endswith("d}") else value)
    except (TypeError, ValueError):
        return "-"


def fairness_row(metrics: Mapping[str, Any]) -> list[str]:
    """The fairness columns of one run's metrics, formatted ('-' where not measured)."""
    return [_fmt_or_dash(metrics.get(key), fmt) for key, _, fmt in FAIRNESS_COLUMNS]


def named_requests(metrics: Mapping[str, Any]) -> str:
    """The starved requests and priority inversions a run names (request ids, worst first)."""
    parts = []
    if metrics.get("starved"):
        ids = ", ".join(f"#{i}" for i in (metrics.get("starved_ids") or [])[:10])
        parts.append(f"starved {metrics['starved']}" + (f" ({ids})" if ids else ""))
    if metrics.get("priority_inversions"):
        ids = ", ".join(f"#{i}" for i in (metrics.get("inversion_ids") or [])[:10])
        parts.append(f"inversions {metrics['priority_inversions']}" + (f" ({ids})" if ids
                                                                         else ""))
    return "; ".join(parts)


def fairness_lines(capacities: Mapping[str, Any], at_claim: Mapping[str, Mapping[str, Any]],
                   sides: tuple[str, str] = ("candidate", "baseline")) -> list[str]:
    """A table: per instance, each side's capacity and its fairness figures at that capacity,
    then the requests it starved or overtook, by id."""
    head = [f"{'instance':<24} {'':<9} {'capacity':>10}"] + [
        f"{label:>13}" for _, label, _ in FAIRNESS_COLUMNS]
    lines = [" ".join(head)]
    for label, caps in capacities.items():
        rows = at_claim.get(label) or {}
        for n, side in enumerate(sides):
            metrics = rows.get(side) or {}
            cap = caps[n] if n < len(caps) else None
            cells = [f"{label if n == 0 else '':<24} {side:<9} "
                     f"{_fmt_or_dash(cap, '{:.3g} r/s'):>10}"]
            cells += [f"{c:>13}" for c in fairness_row(metrics)]
            lines.append(" ".join(cells))
            if named := named_requests(metrics):
                lines.append(f"{'':<24} {'':<9} {named}")
    return lines


def _use_color(mode: str, stream: TextIO) -> bool:
    if mode == "always":
        return True
    if mode == "never" or os.environ.get("NO_COLOR"):
        return False
    return stream.isatty()


def _heldout_gain(c: Candidate) -> float | None:
    comps = (c.gate or {}).get("comparisons") or []
    return comps[0].get("mean_gain") if comps else None


def attempt_outcomes(archive: Archive, cand: Candidate) -> list[str]:
    """What each of a proposal's replies came to, one line per attempt, for a failed proposal
    with more than one reply (else ``[]``).

    The archive keeps the proposer's raw replies but only the last attempt's reasons, and an
    earlier attempt (a refused escape, say) matters to a reviewer as much as the last: so each
    reply is parsed against what it edited and checked again here, as the proposer did.
    """
    if cand.status != A.PROPOSAL_FAILED or len(cand.raw) < 2:
        return []
    from autotuner.check import check_policy
    from autotuner.proposers.edits import UNCHANGED, parse_reply

    parent = archive.find(cand.parent_id) if cand.parent_id else None
    base = (parent.code if parent is not None else None) or ""
    rejected = False
    outcomes = []
    for reply in cand.raw:
        code, why = parse_reply(str(reply), base)
        if code is None:
            outcomes.append("repeated the refused file unchanged"
                            if why == UNCHANGED and rejected else why)
            continue
        reasons = check_policy(code).reasons()
        if reasons:
            outcomes.append("refused by the check: " + "; ".join(reasons))
            base, rejected = code, True
        else:
            outcomes.append("passed the check")
    return outcomes


# ------------------------------------------------------------------------------- status
def status_rows(archive: Archive) -> list[dict[str, Any]]:
    rows = []
    for c in archive.candidates():
        rows.append({
            "id": c.id, "parent": c.parent_id, "island": c.island, "origin": c.origin,
            "status": c.status, "screen": c.screen_score, "train": c.train_score,
            "validation": c.validation_score, "heldout": _heldout_gain(c),
            "params": c.params, "failure": c.failure,
            "category": failure_category(c.status, c.failure) if c.status in (
                A.PROPOSAL_FAILED, A.FAILED, A.SCREENED_OUT) else "",
            "tokens": c.prompt_tokens + c.completion_tokens, "cost_usd": c.cost_usd,
            "attempts": attempt_outcomes(archive, c),
        })
    return rows


def print_status(folder: Path, cfg: CampaignConfig, archive: Archive, out: TextIO,
                 width: int = 0) -> None:
    width = width or _width(out)
    phase = archive.get_meta("phase", "?")
    base = archive.get_meta("baseline") or {}
    promoted = archive.get_meta("promoted")
    spend = archive.spend()
    props = archive.count(origin="proposal")
    elapsed = float(archive.get_meta("elapsed_s", 0.0))
    out.write(f"campaign {cfg.name} ({folder}): phase {phase}, {props}/{cfg.budget.proposals} "
              f"proposals, {int(elapsed) // 60}:{int(elapsed) % 60:02d} spent\n")
    if base:
        out.write(f"baseline {base.get('name')} tuned: {_params_text(base.get('params', {}))}\n")
    out.write(f"promoted: {promoted or 'none'}")
    if spend["tokens"] or spend["cost_usd"]:
        out.write(f"   spend: {spend['tokens']:,} tokens, ${spend['cost_usd']:.4f}")
    out.write("\n\n")
    headers = ("id", "parent", "isl", "status", "screen", "train", "valid", "held-out",
               "params / failure")
    rows = []
    attempts: dict[str, list[str]] = {}
    for r in status_rows(archive):
        if r["attempts"]:
            attempts[r["id"]] = r["attempts"]
        detail = r["failure"] if r["status"] in (A.PROPOSAL_FAILED, A.FAILED,
                                                  A.SCREENED_OUT, A.GATE_FAILED) \
            else _params_text(r["params"])
        rows.append((r["id"], r["parent"] or "-", str(r["island"]), r["status"],
                     _gain(r["screen"]), _gain(r["train"]), _gain(r["validation"]),
                     _gain(r["heldout"]), detail))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    fixed = sum(widths[:-1]) + 2 * (len(headers) - 1)
    widths[-1] = max(20, min(widths[-1], width - fixed))
    out.write("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n")
    for row in rows:
        cells = [v.rjust(w) if 4 <= i <= 7 else v.ljust(w)
                 for i, (v, w) in enumerate(zip(row[:-1], widths, strict=False))]
        out.write("  ".join(cells) + "  " + _short(row[-1], widths[-1]) + "\n")
        # every attempt of a failed proposal, oldest first: the last alone can hide the worst
        for k, outcome in enumerate(attempts.get(row[0], ()), 1):
            out.write(f"    attempt {k}: {_short(outcome, max(40, width - 16))}\n")
    fails = archive.failures_by_reason()
    if fails:
        out.write("\nfailures by reason: " + ", ".join(f"{k} {v}" for k, v in
                                                       sorted(fails.items())) + "\n")


def _width(out: TextIO) -> int:
    try:
        return os.get_terminal_size(out.fileno()).columns if out.isatty() else 160
    except (OSError, ValueError, AttributeError):
        return 160


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("campaign", help="campaign name (under results/) or folder")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run_status(args: argparse.Namespace) -> int:
    return _guard("status", lambda: _status(args))


def _status(args: argparse.Namespace) -> int:
    folder, cfg, archive = _open(args.campaign)
    with archive:
        if args.json:
            print(json.dumps(A._clean({
                "campaign": cfg.name, "folder": str(folder),
                "phase": archive.get_meta("phase"), "promoted": archive.get_meta("promoted"),
                "baseline": {k: v for k, v in (archive.get_meta("baseline") or {}).items()
                             if k != "code"},
                "spend": archive.spend(), "failures": archive.failures_by_reason(),
                "candidates": status_rows(archive)}), indent=2))
        else:
            print_status(folder, cfg, archive, sys.stdout)
    return EXIT_OK


# ------------------------------------------------------------------------------- diff
def _colorize(diff: str) -> str:
    out = []
    for line in diff.splitlines(keepends=True):
        if line.startswith(("+++", "---")):
            out.append(f"\x1b[1m{line.rstrip(chr(10))}\x1b[0m\n")
        elif line.startswith("@@"):
            out.append(f"\x1b[36m{line.rstrip(chr(10))}\x1b[0m\n")
        elif line.startswith("+"):
            out.append(f"\x1b[32m{line.rstrip(chr(10))}\x1b[0m\n")
        elif line.startswith("-"):
            out.append(f"\x1b[31m{line.rstrip(chr(10))}\x1b[0m\n")
        else:
            out.append(line)
    return "".join(out)


def _params_lines(params: Mapping[str, Any]) -> list[str]:
    return [f"{k} = {json.dumps(v)}\n" for k, v in sorted(params.items())]


def candidate_diff(archive: Archive, cand: Candidate, against: str = "parent") -> str:
    """Unified diff of code, then of tuned parameters, against another archive member."""
    if against == "parent":
        if not cand.parent_id:
            raise ReviewError(f"{cand.id} has no parent; use --against baseline or an id")
        other = archive.get(cand.parent_id)
    elif against == "baseline":
        other = archive.get("baseline")
    else:
        other = _resolve(archive, against)
    code = "".join(difflib.unified_diff(
        (other.code or "").splitlines(keepends=True), (cand.code or "").splitlines(keepends=True),
        fromfile=f"{other.id}.py", tofile=f"{cand.id}.py"))
    params = "".join(difflib.unified_diff(
        _params_lines(other.params), _params_lines(cand.params),
        fromfile=f"{other.id} tuned parameters", tofile=f"{cand.id} tuned parameters"))
    if not code and not params:
        return f"{cand.id} and {other.id} are identical (code and tuned parameters)\n"
    parts = [code or f"(code identical to {other.id})\n",
             params or f"(tuned parameters identical to {other.id})\n"]
    return "".join(p if p.endswith("\n") else p + "\n" for p in parts)


def add_diff_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("campaign", help="campaign name (under results/) or folder")
    p.add_argument("candidate", help="candidate id (c0012, 12), 'promoted' or 'best'")
    p.add_argument("--against", default="parent",
                   help="parent (default), baseline, promoted, or a candidate id")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                   help="colour the diff (auto: only on a terminal)")


def run_diff(args: argparse.Namespace) -> int:
    return _guard("diff", lambda: _diff(args))


def _diff(args: argparse.Namespace) -> int:
    _, _, archive = _open(args.campaign)
    with archive:
        cand = _resolve(archive, args.candidate)
        if cand.code is None:
            raise ReviewError(f"{cand.id} has no code ({cand.status}: {cand.failure})")
        text = candidate_diff(archive, cand, args.against)
    sys.stdout.write(_colorize(text) if _use_color(args.color, sys.stdout) else text)
    return EXIT_OK


# ------------------------------------------------------------------------------- show
def show_text(archive: Archive, cand: Candidate) -> str:
    lines = [f"candidate {cand.id}: {cand.status}  (origin {cand.origin}, island {cand.island}, "
             f"proposer {cand.proposer or '-'}{', model ' + cand.model if cand.model else ''})"]
    lineage = archive.lineage(cand.id)
    lines.append("lineage: " + " <- ".join(
        f"{c.id} ({_gain(c.train_score)})" for c in lineage))
    lines.append(f"scores vs tuned baseline: screen {_gain(cand.screen_score)}, training "
                 f"{_gain(cand.train_score)}, validation {_gain(cand.validation_score)}, "
                 f"held-out capacity {_gain(_heldout_gain(cand))}")
    if cand.params:
        lines.append(f"tuned parameters: {_params_text(cand.params)}")
    if cand.failure:
        lines.append(f"failures: {cand.failure}")
    outcomes = attempt_outcomes(archive, cand)
    if outcomes:
        lines.append("attempts (each reply checked again here):")
        lines += [f"  {k}: {_short(o, 300)}" for k, o in enumerate(outcomes, 1)]
    cost = (f"cost: {cand.prompt_tokens:,} prompt + {cand.completion_tokens:,} completion tokens,"
            f" ${cand.cost_usd:.4f}, {cand.attempts} attempt(s); evaluation "
            f"{cand.eval_seconds:.0f} s, {archive.evaluation_count(cand.id)} evaluations")
    lines.append(cost)
    for phase, rows in archive.scores(cand.id).items():
        lines.append(f"\n{phase} scores per workload (gain in ladder goodput vs tuned baseline):")
        for label, (score, detail) in rows.items():
            extra = ""
            if "attainment" in detail:
                extra = "  SLO attainment per rung " + " ".join(
                    f"{a:.2f}" for a in detail["attainment"])
            elif "capacity" in detail:
                extra = f"  capacity {detail['capacity']:.3g} req/s"
            lines.append(f"  {label:<24} {_gain(score):>8}{extra}")
    gate = cand.gate
    if gate:
        lines.append(f"\ngate: {'passed' if gate.get('passed') else 'refused'}"
                     + ("" if gate.get("passed") else ": " + "; ".join(gate.get("reasons", []))))
        for comp in gate.get("comparisons", []):
            lines.append(f"  vs {comp['reference']}: mean {_gain(comp['mean_gain'])}, lower "
                         f"bound {_gain(comp['lower_bound'])} (margin {comp['margin']:.0%})")
            for label, (c, r) in comp["capacities"].items():
                lines.append(f"    {label:<24} {c:9.3g} vs {r:9.3g} req/s  "
                             f"{_gain(comp['gains'][label])}")
        lines += _gate_conditions_text(gate)
    if cand.code is not None:
        lines.append(f"\n--- {cand.id}.py ---")
        lines.append(cand.code.rstrip("\n"))
    else:
        for k, reply in enumerate(cand.raw, 1):
            lines.append(f"\n--- proposer's reply {k} of {len(cand.raw)} ---")
            lines.append(str(reply)[:4000])
    return "\n".join(lines) + "\n"


def _gate_conditions_text(gate: Mapping[str, Any]) -> list[str]:
    """The gate's conditions with their figures, and the fairness figures at the claim."""
    lines = []
    for cond in gate.get("conditions") or []:
        lines.append(f"  {'pass' if cond['passed'] else 'FAIL'}  {cond['name']:<12} "
                     f"{cond['figures']}")
    at_claim = gate.get("at_claim") or {}
    comps = gate.get("comparisons") or []
    if at_claim and comps:
        lines.append("  at the claimed capacity:")
        lines += [f"    {x}" for x in fairness_lines(comps[0]["capacities"], at_claim)]
    return lines


def add_show_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("campaign", help="campaign name (under results/) or folder")
    p.add_argument("candidate", help="candidate id (c0012, 12), 'promoted', 'best' or 'baseline'")


def run_show(args: argparse.Namespace) -> int:
    return _guard("show", lambda: _show(args))


def _show(args: argparse.Namespace) -> int:
    _, _, archive = _open(args.campaign)
    with archive:
        sys.stdout.write(show_text(archive, _resolve(archive, args.candidate)))
    return EXIT_OK


# ------------------------------------------------------------------------------- replay
@dataclass
class ReplayTarget:
    name: str
    code: str
    params: dict[str, Any]
    baseline_name: str
    baseline_code: str
    baseline_params: dict[str, Any]
    cfg: CampaignConfig
    note: str = ""


def _target(spec: str) -> ReplayTarget:
    """CAMPAIGN:CANDIDATE, or a policy FILE (a promoted file's folder supplies the tuned
    baseline; elsewhere the baseline file runs at its defaults, which is said)."""
    from autotuner.policy import read_policy_file
    from autotuner.resources import baseline_path

    path = Path(spec)
    if ":" in spec and not path.exists():
        name, _, ref = spec.rpartition(":")
        folder, cfg, archive = _open(name)
        with archive:
            cand = _resolve(archive, ref)
            base = archive.get_meta("baseline")
            if cand.code is None:
                raise ReviewError(f"{cand.id} has no code ({cand.status}: {cand.failure})")
            if not base:
                raise ReviewError("the campaign's baseline is not tuned yet")
            return ReplayTarget(f"{cfg.name}:{cand.id}", cand.code, dict(cand.params),
                                f"tuned {base['name']}", base["code"], dict(base["params"]), cfg)
    if not path.is_file():
        raise ReviewError(f"{spec}: no such policy file (or CAMPAIGN:CANDIDATE)")
    source = read_policy_file(path)
    sibling = path.parent / "baseline.py"
    cfg_path = path.parent.parent / "config.toml"
    cfg = load_config(cfg_path) if cfg_path.is_file() else load_config()
    if sibling.is_file() and sibling.resolve() != path.resolve():
        base = read_policy_file(sibling)
        return ReplayTarget(str(path), source.code, source.defaults(), f"tuned baseline "
                            f"({sibling})", base.code, base.defaults(), cfg)
    base = read_policy_file(baseline_path(cfg.objective.baseline))
    return ReplayTarget(str(path), source.code, source.defaults(),
                        f"{cfg.objective.baseline} (default parameters)", base.code,
                        base.defaults(), cfg,
                        note="no tuned baseline beside this file: the baseline runs at its "
                             "default parameters")


def add_replay_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="CAMPAIGN:CANDIDATE (e.g. default:promoted), a policy file, "
                   "or a promotion record (promotions/<id>.json) to re-check its claim")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workload", action="append", default=[], metavar="SCENARIO",
                   help="built-in scenario (repeatable; default: the campaign's scenarios)")
    g.add_argument("--trace", action="append", default=[], metavar="FILE",
                   help="trace file, Azure CSV or Mooncake JSONL (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="scenario seed (default: the "
                   "campaign's first held-out seed)")
    p.add_argument("--requests", type=int, help="requests per workload (trace: at most)")
    p.add_argument("--rate", type=float, help="arrival rate, req/s (default: the workload's own)")
    p.add_argument("--window", help="trace time window START:END in seconds")
    p.add_argument("--capacity", action="store_true",
                   help="measure the capacity under SLO of both, and the relative gain")
    p.add_argument("--ttft-slo", type=float, help="TTFT target, s (default: the campaign's)")
    p.add_argument("--tpot-slo", type=float, help="TPOT target, s (default: the campaign's)")
    p.add_argument("--share", type=float, help="share of requests in SLO that defines capacity "
                   "(default: the campaign's)")
    p.add_argument("--sandbox", choices=["auto", "bwrap", "docker", "process"],
                   help="isolation backend (default: the campaign's)")
    p.add_argument("--parallelism", type=int, default=None, help="simulations at once")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _slo_override(slo: Any, args: argparse.Namespace) -> Any:
    """The campaign's SLO with whatever --ttft-slo/--tpot-slo/--share set (for traces whose
    prompts no policy can serve within the campaign's targets, such as 100k-token contexts)."""
    changes = {}
    for key, name in (("ttft_s", "ttft_slo"), ("tpot_s", "tpot_slo"), ("share", "share")):
        value = getattr(args, name, None)
        if value is None:
            continue
        if not (value > 0 and math.isfinite(value)) or key == "share" and value > 1:
            raise ReviewError(f"--{name.replace('_', '-')} must be a positive number"
                              + (" at most 1" if key == "share" else ""))
        changes[key] = value
    return dataclasses.replace(slo, **changes) if changes else slo


def run_replay(args: argparse.Namespace) -> int:
    return _guard("replay", lambda: _replay(args))


def _instances(args: argparse.Namespace, cfg: CampaignConfig) -> list[Any]:
    from autotuner.scoring import Instance

    seed = args.seed if args.seed is not None else cfg.workloads.heldout_seeds[0]
    window_s = None
    if args.window:
        if not args.trace:
            raise ReviewError("--window applies to --trace only")
        try:
            a, b = args.window.split(":")
            window_s = (float(a) if a else 0.0, float(b) if b else math.inf)
        except ValueError:
            raise ReviewError(f"--window must be START:END in seconds, got {args.window!r}"
                              ) from None
    if args.trace:
        out = []
        for t in args.trace:
            if not Path(t).is_file():
                raise ReviewError(f"{t}: no such trace file")
            out.append(Instance(None, 0, args.requests or 2000, t, None, window_s))
        return out
    names = args.workload or list(cfg.workloads.scenarios)
    from autotuner.config import SCENARIO_NAMES

    for n in names:
        if n not in SCENARIO_NAMES:
            raise ReviewError(f"unknown workload {n!r} (known: {', '.join(SCENARIO_NAMES)})")
    return [Instance(n, seed, args.requests or cfg.workloads.requests_for(n, "heldout"))
            for n in names]


def _replay(args: argparse.Namespace) -> int:
    if args.target.endswith(".json") and Path(args.target).is_file():
        return reproduce(Path(args.target), args)
    from autotuner.scoring import Evaluator, Job, NoCache

    t = _target(args.target)
    cfg = t.cfg
    sandbox = SandboxConfig(backend=args.sandbox or cfg.sandbox.backend,
                            timeout_s=cfg.sandbox.timeout_s, memory_mb=cfg.sandbox.memory_mb)
    insts = _instances(args, cfg)
    slo_cfg = _slo_override(cfg.slo, args)
    cfg = dataclasses.replace(cfg, slo=slo_cfg)
    kind = "capacity" if args.capacity else "run"
    jobs = []
    for inst in insts:
        for code, params, name in ((t.code, t.params, "policy.py"),
                                   (t.baseline_code, t.baseline_params, "baseline.py")):
            jobs.append(Job(code, params, inst, kind, args.rate, cfg.cluster, cfg.slo, sandbox,
                            rel_tol=cfg.gate.capacity_rel_tol, name=name))
    evaluator = Evaluator(NoCache(), args.parallelism or cfg.parallelism)
    try:
        results = evaluator.evaluate(jobs)
        rows = []
        for n, inst in enumerate(insts):
            pol, base = results[2 * n], results[2 * n + 1]
            row: dict[str, Any] = {"workload": inst.label, "policy": pol, "baseline": base}
            if kind == "capacity":
                c, b = pol.get("capacity") or 0.0, base.get("capacity") or 0.0
                row["gain"] = (c / b - 1.0) if b > 0 else None
            rows.append(row)
        if kind == "capacity":
            _add_saturation(evaluator, jobs, rows)
    finally:
        evaluator.close()
    report = {"target": t.name, "params": t.params, "baseline": t.baseline_name,
              "baseline_params": t.baseline_params, "note": t.note, "kind": kind,
              "slo": {"ttft_s": cfg.slo.ttft_s, "tpot_s": cfg.slo.tpot_s,
                      "share": cfg.slo.share, "text": cfg.slo.slo().describe()},
              "cluster": f"{cfg.cluster.replicas} x {cfg.cluster.model} on {cfg.cluster.gpu}",
              "results": rows}
    failed = any(r["policy"].get("error") or r["baseline"].get("error") for r in rows)
    if args.json:
        print(json.dumps(A._clean(report), indent=2))
    else:
        _print_replay(report, sys.stdout)
    return EXIT_FAILED if failed else EXIT_OK


def _add_saturation(evaluator: Any, jobs: list[Any], rows: list[dict[str, Any]]) -> None:
    """Output tokens/s of both policies at ``SATURATION_FACTOR`` x the baseline's capacity:
    what each delivers when overloaded (a policy that starves requests may keep its SLO share
    there while serving no more tokens)."""
    runs, where = [], []
    for n, row in enumerate(rows):
        cap = row["baseline"].get("capacity") or 0.0
        if cap <= 0:
            continue
        rate = SATURATION_FACTOR * cap
        for k in (0, 1):
            runs.append(dataclasses.replace(jobs[2 * n + k], kind="run", rate=rate))
        where.append((row, rate))
    results = evaluator.evaluate(runs)
    for m, (row, rate) in enumerate(where):
        pol, base = results[2 * m], results[2 * m + 1]
        row["saturation"] = {"rate": rate, "policy": pol.get("throughput_tok_s"),
                             "baseline": base.get("throughput_tok_s"),
                             "error": pol.get("error") or base.get("error")}


def _print_replay(report: Mapping[str, Any], out: TextIO) -> None:
    out.write(f"policy    {report['target']}  {_params_text(report['params'])}\n")
    out.write(f"baseline  {report['baseline']}  {_params_text(report['baseline_params'])}\n")
    slo = report["slo"]
    out.write(f"cluster   {report['cluster']}; SLO {slo['text']}\n")
    if report["note"]:
        out.write(f"note      {report['note']}\n")
    if report["kind"] == "capacity":
        out.write(f"\ncapacity under SLO (highest sustainable rate with >= {slo['share']:.0%} "
                  "of requests meeting it):\n")
        out.write(f"  {'workload':<32} {'policy':>12} {'baseline':>12} {'gain':>8}\n")
        for r in report["results"]:
            p, b = r["policy"], r["baseline"]
            err = p.get("error") or b.get("error")
            out.write(f"  {r['workload']:<32} {p.get('capacity') or 0:>8.3g} r/s "
                      f"{b.get('capacity') or 0:>8.3g} r/s {_gain(r.get('gain')):>8}"
                      + (f"  error: {err}" if err else "") + "\n")
        if any((r["baseline"].get("capacity") or 0) <= 0 and not r["baseline"].get("error")
               for r in report["results"]):
            out.write(f"  (a capacity of 0: fewer than {slo['share']:.0%} of requests meet the "
                      "SLO at any rate, e.g. prompts too long to prefill within the TTFT "
                      "target; no relative gain is defined there)\n")
        gains = [r["gain"] for r in report["results"] if r.get("gain") is not None]
        if len(gains) > 1:
            out.write(f"  {'mean':<32} {'':>12} {'':>12} {_gain(sum(gains) / len(gains)):>8}\n")
        _print_capacity_fairness(report["results"], out)
        return
    keys = (("rate", "offered rate (req/s)", "{:.3g}"), ("attainment", "SLO attainment", "{:.1%}"),
            ("goodput_rps", "goodput (req/s)", "{:.3g}"),
            ("goodput_tok_s", "goodput (tok/s)", "{:,.0f}"),
            ("throughput_tok_s", "throughput (tok/s)", "{:,.0f}"),
            ("ttft_p50", "TTFT p50 (s)", "{:.3f}"), ("ttft_p90", "TTFT p90 (s)", "{:.3f}"),
            ("ttft_p99", "TTFT p99 (s)", "{:.3f}"), ("tpot_p50", "TPOT p50 (s)", "{:.4f}"),
            ("tpot_p90", "TPOT p90 (s)", "{:.4f}"), ("tpot_p99", "TPOT p99 (s)", "{:.4f}"),
            *((key, label, fmt) for key, label, fmt in FAIRNESS_COLUMNS if key != "goodput_tok_s"))
    for r in report["results"]:
        out.write(f"\n{r['workload']}:\n  {'':<22} {'policy':>12} {'baseline':>12}\n")
        for key, label, fmt in keys:
            vals = [_fmt_or_dash(side.get(key), fmt) for side in (r["policy"], r["baseline"])]
            out.write(f"  {label:<22} {vals[0]:>12} {vals[1]:>12}\n")
        for side in ("policy", "baseline"):
            if named := named_requests(r[side]):
                out.write(f"  {side} {named}\n")
            if r[side].get("error"):
                out.write(f"  {side} error: {r[side]['error']}\n")


def _print_capacity_fairness(results: list[Mapping[str, Any]], out: TextIO) -> None:
    """Beside capacity: each side's fairness at its own capacity, and output tokens/s at
    saturation."""
    caps = {r["workload"]: (r["policy"].get("capacity"), r["baseline"].get("capacity"))
            for r in results}
    at = {r["workload"]: {"policy": r["policy"].get("at_capacity") or {},
                          "baseline": r["baseline"].get("at_capacity") or {}} for r in results}
    out.write("\nat each policy's own capacity:\n")
    for line in fairness_lines(caps, at, ("policy", "baseline")):
        out.write(f"  {line}\n")
    sat = [r for r in results if r.get("saturation")]
    if sat:
        out.write(f"\noutput tokens/s at saturation ({SATURATION_FACTOR:g} x the baseline's "
                  "capacity):\n")
        for r in sat:
            s = r["saturation"]
            p, b = s.get("policy"), s.get("baseline")
            ratio = _gain(p / b - 1.0) if p is not None and b else "-"
            out.write(f"  {r['workload']:<32} at {s['rate']:.3g} r/s: policy "
                      f"{_fmt_or_dash(p, '{:,.0f}')} tok/s, baseline {_fmt_or_dash(b, '{:,.0f}')}"
                      f" tok/s ({ratio})" + (f"  error: {s['error']}" if s.get("error") else "")
                      + "\n")


# ------------------------------------------------------------------------------- reproduce
def reproduce(record_path: Path, args: argparse.Namespace | None = None,
              out: TextIO | None = None, simulator: Any = None) -> int:
    """Repeat a promotion's whole gate from its record alone (its files, cluster, SLO, gate
    settings, held-out instances and best reference) and compare with what was recorded."""
    from autotuner.config import config_from_mapping
    from autotuner.gate import GateInputError, PolicyRef, run_gate
    from autotuner.policy import read_policy_file
    from autotuner.scoring import Evaluator, Instance, NoCache

    out = out or sys.stdout
    record = json.loads(record_path.read_text(encoding="utf-8"))
    if record.get("kind") != "autotuner promotion":
        raise ReviewError(f"{record_path}: not a promotion record")
    folder = record_path.parent
    policy = read_policy_file(folder / record["policy_file"])
    base = read_policy_file(folder / record["baseline"]["file"])
    backend = getattr(args, "sandbox", None) if args else None
    try:
        cfg = config_from_mapping({
            "cluster": record["cluster"], "slo": record["slo"], "gate": record["gate"],
            "sandbox": {"backend": backend or "auto"}, "seed": record["statistics"]["seed"]})
    except ConfigError as exc:
        raise ReviewError(f"{record_path}: written under another yardstick ({exc})") from None
    insts = [Instance.from_dict(d) for d in record["instances"]]
    refs = []
    if record.get("reference"):
        ref = read_policy_file(folder / record["reference"]["file"])
        refs = [PolicyRef(f"{record['reference']['name']}.py", ref.code,
                          dict(record["reference"]["params"]))]
    evaluator = Evaluator(NoCache(), (getattr(args, "parallelism", None) if args else None) or 2,
                          simulator)
    try:
        result = run_gate(evaluator, cfg, record["candidate"],
                          PolicyRef(record["policy_file"], policy.code, dict(record["params"])),
                          PolicyRef(record["baseline"]["file"], base.code,
                                    dict(record["baseline"]["params"])), insts, references=refs)
    except GateInputError as exc:
        raise ReviewError(str(exc)) from None
    finally:
        evaluator.close()
    recorded = record["statistics"]["comparisons"]
    same = all(
        sorted(comp.capacities.items()) == sorted((k, tuple(v)) for k, v in rec["capacities"]
                                                  .items())
        for comp, rec in zip(result.comparisons, recorded, strict=False))
    comp = result.baseline
    summary = {"record": str(record_path), "claim": record["claim"],
               "recorded": {"mean_gain": recorded[0]["mean_gain"],
                            "lower_bound": recorded[0]["lower_bound"]},
               "reproduced": {"mean_gain": comp.mean_gain, "lower_bound": comp.lower_bound,
                              "passed": result.passed, "failed": result.failed()},
               "identical_capacities": same,
               "capacities": {k: list(v) for k, v in comp.capacities.items()}}
    if args is not None and getattr(args, "json", False):
        out.write(json.dumps(A._clean(summary), indent=2) + "\n")
    else:
        out.write(f"record   {record_path}\nclaim    {record['claim']}\n")
        out.write(f"  {'instance':<28} {'policy':>10} {'baseline':>10} {'gain':>8}\n")
        for k, (c, b) in comp.capacities.items():
            out.write(f"  {k:<28} {c:>10.3g} {b:>10.3g} {_gain(c / b - 1 if b else None):>8}\n")
        for cond in result.conditions:
            out.write(f"  {cond.line()}\n")
        out.write(f"reproduced: geometric mean gain {_gain(comp.mean_gain)}, "
                  f"{cfg.gate.confidence:.0%} lower bound {_gain(comp.lower_bound)} (recorded "
                  f"{_gain(recorded[0]['mean_gain'])}, {_gain(recorded[0]['lower_bound'])}); "
                  f"capacities {'identical' if same else 'DIFFER'}; gate "
                  + ("passes" if result.passed else f"FAILS ({', '.join(result.failed())})")
                  + "\n")
    return EXIT_OK if result.passed else EXIT_FAILED


def _guard(command: str, fn: Any) -> int:
    try:
        return fn()
    except (ReviewError, CampaignError, ConfigError, A.ArchiveError) as exc:
        print(f"autotuner {command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `autotuner diff ... | head`
        try:
            sys.stdout.close()
        except Exception:  # noqa: BLE001
            pass
        return EXIT_OK


__all__ = [
    "add_diff_arguments", "add_replay_arguments", "add_show_arguments", "add_status_arguments",
    "candidate_diff", "print_status", "reproduce", "run_diff", "run_replay", "run_show",
    "run_status", "show_text", "status_rows",
]

