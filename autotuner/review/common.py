"""What the review views share: opening a campaign read-only, naming a candidate, and how a
gain, a parameter set and the fairness figures read in text."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from autotuner.archive import Archive, Candidate
from autotuner.campaign import campaign_dir
from autotuner.config import CampaignConfig, load_config

# "At saturation": this multiple of the tuned baseline's capacity, where every policy is
# overloaded and output tokens/s shows what it really delivers.
SATURATION_FACTOR = 2.0


class ReviewError(RuntimeError):
    """An expected failure of a review view; the message is the one line printed."""


def open_campaign(name: str) -> tuple[Path, CampaignConfig, Archive]:
    """A campaign's folder, config and archive (SQLite WAL: safe beside a running campaign)."""
    folder = campaign_dir(name)
    db = folder / "archive.sqlite"
    if not db.is_file():
        raise ReviewError(f"{folder}: no archive.sqlite (the campaign never started)")
    cfg = load_config(folder / "config.toml", name=folder.name, results_dir=str(folder.parent))
    return folder, cfg, Archive(db)


def resolve(archive: Archive, ref: str) -> Candidate:
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


def heldout_gain(c: Candidate) -> float | None:
    comps = (c.gate or {}).get("comparisons") or []
    return comps[0].get("mean_gain") if comps else None


def gain_text(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:+.1%}"


def short(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def params_text(params: Mapping[str, Any]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={fmt(v)}" for k, v in sorted(params.items()))


# Fairness beside capacity: what a share-of-requests capacity hides (run metrics keys).
FAIRNESS_COLUMNS = (
    ("requests", "run", "{:,d} req"),  # longer than the instance where its capacity was checked
    ("goodput_tok_s", "tok goodput", "{:,.0f}/s"),
    ("longest_wait_s", "longest wait", "{:.3g} s"),
    ("max_wait_over_deadline", "wait/deadline", "{:.3g}x"),
    ("late_finish_share", "late finish", "{:.0%}"),
    ("jain_slowdown", "Jain", "{:.3f}"),
    ("starved", "starved", "{:d}"),
    ("priority_inversions", "inversions", "{:d}"),
)


def fmt_or_dash(value: Any, fmt: str) -> str:
    if value is None or isinstance(value, float) and not math.isfinite(value):
        return "-"
    try:
        return fmt.format(int(value) if fmt.endswith("d}") else value)
    except (TypeError, ValueError):
        return "-"


def fairness_row(metrics: Mapping[str, Any]) -> list[str]:
    """The fairness columns of one run's metrics, formatted ('-' where not measured)."""
    return [fmt_or_dash(metrics.get(key), fmt) for key, _, fmt in FAIRNESS_COLUMNS]


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
                     f"{fmt_or_dash(cap, '{:.3g} r/s'):>10}"]
            cells += [f"{c:>13}" for c in fairness_row(metrics)]
            lines.append(" ".join(cells))
            if named := named_requests(metrics):
                lines.append(f"{'':<24} {'':<9} {named}")
    return lines
