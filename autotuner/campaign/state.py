"""What every phase of a campaign shares: its config, folder, archive, evaluator, clock and
display, and the few questions they all ask of it (is the search over, which candidates are
scored, what does the status line say).

The phases are plain functions over one ``CampaignState`` (``baseline``, ``seeds``, ``search``,
``finalize``); what crosses from one phase to the next is in the archive, or in a frozen record
(``Baseline``).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from autotuner import archive as A
from autotuner.archive import Archive, Candidate
from autotuner.campaign.progress import Progress, fmt_duration, fmt_gain
from autotuner.campaign.reserve import finalize_estimate
from autotuner.config import CampaignConfig, policy_file
from autotuner.lineage import same_policy_as, shipped_references
from autotuner.proposers.base import Proposer
from autotuner.scoring import Evaluator, Instance, Simulator, ladder_jobs, split_instances
from autotuner.yardstick import ladder_goodput

PHASES = ("baseline", "seeds", "search", "finalize", "done")
SCORED = (A.TUNED, A.FINALIST, A.GATE_FAILED, A.PROMOTED)  # statuses with a training score


@dataclass(frozen=True)
class Baseline:
    """The tuned baseline and the yardsticks derived from it (stored in the archive's meta):
    phase 1 makes it, finalisation adds the validation split's reference."""

    name: str
    code: str
    params: dict[str, Any]
    caps: dict[str, dict[str, float]]  # split -> instance label -> capacity (req/s)
    reference: dict[str, dict[str, list[float]]]  # split -> label -> goodput per ladder rung

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_split(self, split: str, caps: dict[str, float], reference: dict[str, list[float]]
                   ) -> Baseline:
        """The same baseline with one more split's capacities and reference goodput."""
        return dataclasses.replace(self, caps={**self.caps, split: caps},
                                   reference={**self.reference, split: reference})


class CampaignState:
    """One campaign run's shared state (new or resumed); the phases read and advance it."""

    def __init__(self, cfg: CampaignConfig, *, resume: bool = False, extend: bool = False,
                 proposer: Proposer | None = None, simulator: Simulator | None = None,
                 stream: TextIO | None = None, tty: bool | None = None):
        """``extend``: the resume command raised the budget, so a finished campaign whose new
        budget leaves room searches on (without it, resuming a finished campaign changes
        nothing)."""
        self.cfg = cfg
        self.resume = resume
        self.extend = extend
        self.final_dir = cfg.campaign_dir  # where the campaign lives once set up
        self.dir = self.final_dir  # where it is now: the staging folder while setting up
        self.setting_up = False
        self.proposer = proposer
        self.proposer_line = ""
        self.proposer_dead = ""  # the reason the proposer can no longer be used
        self.simulator = simulator
        self.sandbox_line: tuple[str, bool] | None = None
        self.executor_line = ""  # the Ray cluster, once the preflight connected to it
        self.progress = Progress(stream, tty)
        self.rng = random.Random(cfg.seed)
        self.instances = split_instances(cfg)
        self.archive: Archive | None = None
        self.evaluator: Evaluator | None = None
        self.storage: Any = None  # Optuna's journal storage, once the folder is open
        self.baseline: Baseline | None = None
        self.current = ""  # what the loop is doing, for the status line
        self.t0 = time.monotonic()
        self.elapsed0 = 0.0  # seconds spent by earlier sessions of this campaign
        self._status_cache = ""
        self._status_at = 0.0
        self._copyable: dict[str, str] | None = None  # every reference a proposal may copy

    # -- time ----------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed0 + time.monotonic() - self.t0

    def finalize_reserve(self) -> float:
        """Seconds of the wall-time budget kept back for validating and gating the finalists
        (``campaign.reserve``), at least ``budget.finalize_reserve_s``."""
        return max(self.cfg.budget.finalize_reserve_s, finalize_estimate(self))

    def search_over(self) -> bool:
        b = self.cfg.budget
        if self.elapsed() < b.wall_time_s - self.finalize_reserve():
            return False
        if self.archive is not None and b.min_proposals:
            evaluated = self.archive.count(origin="proposal") - len(self.archive.candidates(
                origin="proposal", status=(A.PENDING, A.TUNING)))
            if evaluated < min(b.min_proposals, b.proposals):
                return False
        return True

    def save_elapsed(self) -> None:
        if self.archive is not None:
            self.archive.set_meta("elapsed_s", self.elapsed())

    def resume_arg(self) -> str:
        """How ``autotuner resume`` names this campaign: its name when it is in the default
        results folder, else its folder."""
        default_dir = Path("results") / self.cfg.name
        return self.cfg.name if self.final_dir == default_dir else str(self.final_dir)

    # -- candidates ------------------------------------------------------------------------
    def scored(self, island: int | None = None) -> list[Candidate]:
        assert self.archive is not None
        return [c for c in self.archive.candidates(status=SCORED, island=island)
                if c.train_score is not None]

    def finalists(self) -> tuple[list[Candidate], list[str]]:
        """The best proposals that gained on training, best first, at most
        ``search.finalists`` of them, and why any better-ranked one is not among them: a copy
        of a reference is no discovery, and a candidate that scores exactly as a better-ranked
        one on every training instance made the same decisions (a mutation in code the runs
        never reach), so a second gate of it would spend the budget on nothing new."""
        tuned = [c for c in self.scored() if c.origin == "proposal"
                 and c.status in (A.TUNED, A.FINALIST) and (c.train_score or 0) > 0]
        notes = [f"{c.label} is not a finalist: a copy of a reference policy is not a "
                 f"discovery (training {fmt_gain(c.train_score)})"
                 for c in tuned if not c.promotable]
        tuned = sorted((c for c in tuned if c.promotable), key=lambda c: -(c.train_score or 0.0))
        picked: list[Candidate] = []
        seen: dict[tuple[Any, ...], str] = {}
        for cand in tuned:
            if len(picked) == self.cfg.search.finalists:
                break
            same = self._training_signature(cand)
            if same is not None and same in seen:
                notes.append(f"{cand.label} is not a finalist: it scores exactly as "
                             f"{seen[same]} on every training instance at every rate")
                continue
            if same is not None:
                seen[same] = cand.id
            picked.append(cand)
        return picked, notes

    def _training_signature(self, cand: Candidate) -> tuple[Any, ...] | None:
        """The candidate's per-instance training scores, exactly (None when it has none)."""
        assert self.archive is not None
        by_instance = self.archive.scores(cand.id, "train").get("train", {})
        if not by_instance:
            return None
        return tuple(sorted((label, score) for label, (score, _detail) in by_instance.items()))

    def best(self, promotable_only: bool = False) -> Candidate | None:
        pool = [c for c in self.scored() if c.promotable or not promotable_only]
        return max(pool, key=lambda c: (c.train_score, -c.seq)) if pool else None

    def reference_copy(self, code: str) -> tuple[str, str | None]:
        """The reference policy ``code`` is, up to what cannot change a decision (``""``: none),
        and the archive member that is that reference (the baseline, a seed), if any.

        The references are every policy shipped in baselines/, the configured baseline, seeds
        and gate references: a proposal equal to one of them is that reference, not a
        discovery."""
        if self._copyable is None:
            named = [self.cfg.objective.baseline, *self.cfg.search.seeds, *self.cfg.gate.references]
            self._copyable = shipped_references() | {
                Path(n).stem: policy_file(n).read_text(encoding="utf-8") for n in named}
        stem = same_policy_as(code, self._copyable) or ""
        if not stem or self.archive is None:
            return stem, None
        if stem == Path(self.cfg.objective.baseline).stem:
            return stem, "baseline"
        member = self.archive.find(f"seed-{stem}")
        return stem, member.id if member is not None else None

    # -- display ---------------------------------------------------------------------------
    def tick(self, current: str | None = None) -> None:
        """Show the status line, saying what the loop does now (when given)."""
        if current is not None:
            self.current = current
        self.progress.status(self.status_text())

    def status_text(self) -> str:
        """The live line; the archive-derived part is refreshed at most every 2 s (it is asked
        for after every finished simulation)."""
        now = time.monotonic()
        if now - self._status_at > 2.0 or not self._status_cache:
            self._status_cache = self._status_query()
            self._status_at = now
        text = f"[{fmt_duration(self.elapsed())}] {self._status_cache}"
        if self.current:
            text += f" | {self.current}"
        return text

    def _status_query(self) -> str:
        assert self.archive is not None
        props = self.archive.count(origin="proposal")
        best = self.best(promotable_only=True)
        fails = self.archive.failures_by_reason()
        spend = self.archive.spend()
        fail_text = ", ".join(f"{k} {v}" for k, v in sorted(fails.items())) or "none"
        text = (f"proposals {props}/{self.cfg.budget.proposals}"
                f" | best {fmt_gain(best.train_score if best else None)}"
                + (f" ({best.id})" if best else "")
                + f" | failures: {fail_text}")
        if spend["tokens"] or spend["cost_usd"]:
            text += f" | spend {spend['tokens']:,} tok ${spend['cost_usd']:.2f}"
        return text

    def event(self, cand: Candidate, text: str) -> None:
        """One permanent line about a candidate."""
        parent = f" <- {cand.parent_id}" if cand.parent_id else ""
        self.progress.log(f"[{fmt_duration(self.elapsed())}] {cand.id}{parent} "
                          f"(island {cand.island}): {text}")

    # -- scoring ---------------------------------------------------------------------------
    def ladder(self, code: str, params: Mapping[str, Any], split: str,
               caps: Mapping[str, float], candidate_id: str, name: str,
               instances: Sequence[Instance] | None = None) -> list[dict[str, Any]]:
        """A policy's runs at each ladder rung on a split's instances (cached in the archive),
        counting them on the status line."""
        assert self.evaluator is not None
        insts = list(instances if instances is not None else self.instances[split])
        jobs = ladder_jobs(code, params, insts, caps, self.cfg, name=name)
        total = len(jobs)
        done = [0]

        def on_result(i: int, result: dict[str, Any]) -> None:
            done[0] += 1
            self.progress.status(self.status_text() + f" [{done[0]}/{total}]")

        return self.evaluator.evaluate(jobs, candidate_id, on_result)

    def reference(self, results: Sequence[Mapping[str, Any]], split: str
                  ) -> dict[str, list[float]]:
        """The goodput per ladder rung of the baseline's runs on a split."""
        return ladder_goodput(results, self.instances[split], self.cfg)

    def advance(self, phase: str) -> str:
        """Record that the campaign has reached ``phase`` (a resume starts there)."""
        assert self.archive is not None
        self.archive.set_meta_many({"phase": phase, "elapsed_s": self.elapsed()})
        return phase
