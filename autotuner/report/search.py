"""What the archive alone says: the search's progress, failures and spend, and which policy the
report is about (the promoted one, else the best gated candidate, else the best on training).
Nothing here runs a simulation; the archive and the Optuna journal are only read."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotuner import archive as A
from autotuner.archive import Archive, Candidate, failure_category
from autotuner.config import CampaignConfig
from autotuner.report.records import Failures, Progress, Search, Spend
from autotuner.resources import asset_dir

DASHBOARD_PACKAGE = "optuna-dashboard"


class ReportError(RuntimeError):
    """An expected failure with a message for the user."""


@dataclass(frozen=True)
class Subject:
    """The candidate the report is about, how it was chosen, and its promotion record."""

    candidate: Candidate | None
    how: str  # "promoted", "best candidate at the gate (refused)", ... ("" for none)
    record: dict[str, Any] | None


def archive_path(folder: Path) -> Path:
    db = folder / "archive.sqlite"
    if not db.is_file():
        raise ReportError(f"{folder}: no archive.sqlite (the campaign never started)")
    return db


def pick_subject(archive: Archive, folder: Path) -> Subject:
    """The promoted policy, else the best gated candidate, else the best on training."""
    promoted = archive.get_meta("promoted")
    if promoted:
        cand = archive.get(promoted)
        path = folder / "promotions" / f"{promoted}.json"
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        return Subject(cand, "promoted", record)
    scored = [c for c in archive.candidates() if c.promotable and c.code]
    gated = [c for c in scored if c.gate and (c.gate.get("comparisons") or [])]
    if gated:
        best = max(gated, key=lambda c: (c.gate["comparisons"][0].get("mean_gain") or -1e9,
                                         -c.seq))
        return Subject(best, "best candidate at the gate (refused)", None)
    tuned = [c for c in scored if c.train_score is not None]
    if tuned:
        best = max(tuned, key=lambda c: (c.train_score or 0.0, -c.seq))
        return Subject(best, "best candidate on training (never gated)", None)
    return Subject(None, "", None)


def read_search(archive: Archive, folder: Path) -> Search:
    return Search(progress(archive), failures(archive), spend(archive, folder))


def progress(archive: Archive) -> Progress:
    """Best training objective against proposals made, from the archive (proposal order)."""
    xs, best_y, pts_x, pts_y, labels = [], [], [], [], []
    best = -math.inf
    made = 0
    for c in archive.candidates():
        if c.origin != "proposal":
            continue
        made += 1
        score = c.train_score
        if score is not None and math.isfinite(score):
            pts_x.append(made)
            pts_y.append(score)
            labels.append(f"{c.label}: {score:+.1%} ({c.status})")
            if c.promotable:  # a copy of a reference policy is no progress of the search
                best = max(best, score)
        xs.append(made)
        best_y.append(best if math.isfinite(best) else math.nan)
    seeds = tuple((c.id, c.train_score) for c in archive.candidates(origin="seed")
                  if c.train_score is not None)
    return Progress(tuple(xs), tuple(best_y), tuple(pts_x), tuple(pts_y), tuple(labels), seeds,
                    made)


def _optuna_trials(journal: Path) -> int | None:
    if not journal.is_file():
        return None
    try:
        import optuna

        from autotuner.tune import open_storage

        storage = open_storage(journal)
        return sum(x.n_trials for x in optuna.study.get_all_study_summaries(storage))
    except Exception:  # noqa: BLE001 - the count is a nicety
        return None


def spend(archive: Archive, folder: Path) -> Spend:
    s = archive.spend()
    row = archive.conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(seconds), 0) FROM evaluations").fetchone()
    statuses: dict[str, int] = {}
    for c in archive.candidates():
        statuses[c.status] = statuses.get(c.status, 0) + 1
    return Spend(prompt_tokens=s["prompt_tokens"], completion_tokens=s["completion_tokens"],
                 tokens=s["tokens"], cost_usd=s["cost_usd"],
                 elapsed_s=float(archive.get_meta("elapsed_s", 0.0) or 0.0),
                 evaluations=int(row[0]), simulation_s=float(row[1]),
                 trials=_optuna_trials(folder / "optuna.journal"), candidates=archive.count(),
                 proposals=archive.count(origin="proposal"), statuses=statuses)


def failures(archive: Archive) -> Failures:
    counts = archive.failures_by_reason()
    examples: dict[str, list[str]] = {}
    for c in archive.candidates(status=(A.PROPOSAL_FAILED, A.FAILED, A.SCREENED_OUT)):
        cat = failure_category(c.status, c.failure)
        if len(examples.setdefault(cat, [])) < 2:
            examples[cat].append(f"{c.id}: {c.failure}"[:300])
    gate_refused = archive.candidates(status=A.GATE_FAILED)
    if gate_refused:
        counts["refused by the gate"] = len(gate_refused)
        examples["refused by the gate"] = [f"{c.id}: {c.failure}"[:300]
                                           for c in gate_refused[:2]]
    return Failures(counts, {k: tuple(v) for k, v in examples.items()})


def dashboard_command(folder: Path) -> str:
    """The one command that opens the campaign's Optuna studies in optuna-dashboard
    (it reads a JournalStorage file given as its path)."""
    try:
        shown = os.path.relpath(folder / "optuna.journal")
        if shown.startswith(".."):
            shown = str(folder / "optuna.journal")
    except ValueError:
        shown = str(folder / "optuna.journal")
    return f"optuna-dashboard {shown}"


def reference_stems(cfg: CampaignConfig) -> list[str]:
    """Every shipped reference policy but the baseline itself."""
    base = Path(cfg.objective.baseline).stem
    return sorted(p.stem for p in asset_dir("baselines").glob("*.py") if p.stem != base)
