"""``status``: a campaign's candidates as rows (and as a table), with every attempt of a failed
proposal: the last reply alone can hide the worst one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autotuner import archive as A
from autotuner.archive import Archive, Candidate, failure_category
from autotuner.config import CampaignConfig
from autotuner.identity import json_safe
from autotuner.review.common import gain_text, heldout_gain, params_text, short

FAILED_STATUSES = (A.PROPOSAL_FAILED, A.FAILED, A.SCREENED_OUT)


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


def status_rows(archive: Archive) -> list[dict[str, Any]]:
    rows = []
    for c in archive.candidates():
        rows.append({
            "id": c.id, "parent": c.parent_id, "island": c.island, "origin": c.origin,
            "status": c.status, "screen": c.screen_score, "train": c.train_score,
            "validation": c.validation_score, "heldout": heldout_gain(c),
            "params": c.params, "failure": c.failure, "copy_of": c.copy_of,
            "category": failure_category(c.status, c.failure) if c.status in FAILED_STATUSES
            else "",
            "tokens": c.prompt_tokens + c.completion_tokens, "cost_usd": c.cost_usd,
            "attempts": attempt_outcomes(archive, c),
        })
    return rows


def status_data(folder: Path, cfg: CampaignConfig, archive: Archive) -> dict[str, Any]:
    """The campaign's state and every candidate, JSON-ready (the baseline without its code)."""
    return json_safe({
        "campaign": cfg.name, "folder": str(folder),
        "phase": archive.get_meta("phase"), "promoted": archive.get_meta("promoted"),
        "baseline": {k: v for k, v in (archive.get_meta("baseline") or {}).items()
                     if k != "code"},
        "spend": archive.spend(), "failures": archive.failures_by_reason(),
        "candidates": status_rows(archive)})


def _header(folder: Path, cfg: CampaignConfig, archive: Archive) -> list[str]:
    base = archive.get_meta("baseline") or {}
    spend = archive.spend()
    props = archive.count(origin="proposal")
    elapsed = float(archive.get_meta("elapsed_s", 0.0))
    lines = [f"campaign {cfg.name} ({folder}): phase {archive.get_meta('phase', '?')}, "
             f"{props}/{cfg.budget.proposals} proposals, "
             f"{int(elapsed) // 60}:{int(elapsed) % 60:02d} spent"]
    if base:
        lines.append(f"baseline {base.get('name')} tuned: {params_text(base.get('params', {}))}")
    promoted = f"promoted: {archive.get_meta('promoted') or 'none'}"
    if spend["tokens"] or spend["cost_usd"]:
        promoted += f"   spend: {spend['tokens']:,} tokens, ${spend['cost_usd']:.4f}"
    return lines + [promoted, ""]


def status_text(folder: Path, cfg: CampaignConfig, archive: Archive, width: int = 160) -> str:
    """The campaign's state, then one row per candidate fitted to ``width`` columns."""
    headers = ("id", "parent", "isl", "status", "screen", "train", "valid", "held-out",
               "params / failure")
    rows = []
    attempts: dict[str, list[str]] = {}
    for r in status_rows(archive):
        if r["attempts"]:
            attempts[r["id"]] = r["attempts"]
        detail = r["failure"] if r["status"] in (*FAILED_STATUSES, A.GATE_FAILED) \
            else params_text(r["params"])
        if r["copy_of"]:
            detail = f"copy of {r['copy_of']}; {detail}"
        rows.append((r["id"], r["parent"] or "-", str(r["island"]), r["status"],
                     gain_text(r["screen"]), gain_text(r["train"]),
                     gain_text(r["validation"]), gain_text(r["heldout"]), detail))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    fixed = sum(widths[:-1]) + 2 * (len(headers) - 1)
    widths[-1] = max(20, min(widths[-1], width - fixed))
    lines = _header(folder, cfg, archive)
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        cells = [v.rjust(w) if 4 <= i <= 7 else v.ljust(w)
                 for i, (v, w) in enumerate(zip(row[:-1], widths, strict=False))]
        lines.append("  ".join(cells) + "  " + short(row[-1], widths[-1]))
        # every attempt of a failed proposal, oldest first: the last alone can hide the worst
        for k, outcome in enumerate(attempts.get(row[0], ()), 1):
            lines.append(f"    attempt {k}: {short(outcome, max(40, width - 16))}")
    fails = archive.failures_by_reason()
    if fails:
        lines += ["", "failures by reason: " + ", ".join(f"{k} {v}" for k, v in
                                                         sorted(fails.items()))]
    return "\n".join(lines) + "\n"
