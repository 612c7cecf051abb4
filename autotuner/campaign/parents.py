"""Where each proposal starts: islands of candidates that evolve apart (the best of each
migrates to the next now and then), a tournament for the parent, and the request the proposer
receives, built from the campaign's data (parent, its scores and failed children, inspirations,
objective, workloads, cluster) so that no proposer reads it back out of prose."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from autotuner import archive as A
from autotuner.archive import Candidate
from autotuner.campaign.diagnostics import diagnosis_of
from autotuner.campaign.state import CampaignState
from autotuner.proposers.base import (
    ClusterInfo,
    Objective,
    ParentInfo,
    ProposalRequest,
    WorkloadInfo,
)


def island_members(state: CampaignState, island: int) -> list[Candidate]:
    """An island's scored candidates and the migrants it received (the baseline while it has
    none)."""
    assert state.archive is not None
    members = state.scored(island)
    migrants = state.archive.get_meta("migrants", {}).get(str(island), [])
    for cid in migrants:
        c = state.archive.find(cid)
        if c is not None and c.train_score is not None and c not in members:
            members.append(c)
    if not members:
        members = [state.archive.get("baseline")]
    return members


def migrate(state: CampaignState) -> None:
    """Each island's best joins the next island (ring order)."""
    assert state.archive is not None
    n = state.cfg.search.islands
    if n < 2:
        return
    migrants = state.archive.get_meta("migrants", {})
    for i in range(n):
        members = state.scored(i)
        if not members:
            continue
        best = max(members, key=lambda c: c.train_score)
        dest = migrants.setdefault(str((i + 1) % n), [])
        if best.id not in dest:
            dest.append(best.id)
    state.archive.set_meta("migrants", migrants)


def parent_for(state: CampaignState, island: int) -> Candidate:
    """A tournament among the island's members, drawn with the campaign's seeded generator."""
    members = island_members(state, island)
    k = min(state.cfg.search.tournament, len(members))
    drawn = state.rng.sample(members, k)
    return max(drawn, key=lambda c: (c.train_score or 0.0, -c.seq))


def parent_info(state: CampaignState, cand: Candidate, failures: Sequence[str] = (),
                diagnosed: bool = False) -> ParentInfo:
    """An archive member as the proposer sees it; ``diagnosed``: with its training runs'
    diagnostics against the tuned baseline (the parent's; the others' would cost prompt)."""
    assert state.archive is not None
    train = None if cand.train_score is None else round(cand.train_score, 4)
    gains = {label: round(score, 4) for label, (score, _)
             in state.archive.scores(cand.id, "train").get("train", {}).items()
             if score is not None}
    return ParentInfo(cand.id, cand.code or "", train, gains, tuple(failures),
                      dict(cand.params),
                      diagnosis_of(state, cand, "train") if diagnosed else None)


def proposal_request(state: CampaignState, island: int) -> tuple[ProposalRequest, Candidate]:
    """The next request for ``island`` and the parent it names."""
    assert state.archive is not None and state.baseline is not None
    cfg = state.cfg
    parent = parent_for(state, island)
    children = [c for c in state.archive.candidates()
                if c.parent_id == parent.id and c.failure
                and c.status in (A.FAILED, A.SCREENED_OUT, A.PROPOSAL_FAILED)]
    failures = [f"{c.id}: {c.failure}" for c in children[-3:]]
    if parent.failure and parent.status == A.TUNED:
        failures.insert(0, f"some tuning trials of {parent.id} failed: {parent.failure}")
    others = sorted((c for c in state.scored() if c.id != parent.id),
                    key=lambda c: (c.island == island, -(c.train_score or 0.0)))
    inspirations = tuple(parent_info(state, c) for c in others[: cfg.search.inspirations])
    o, c = cfg.objective, cfg.cluster
    objective = Objective(dataclasses.asdict(cfg.slo), cfg.slo.share, tuple(o.ladder),
                          o.goodput, cfg.gate.margin, state.baseline.name)
    workloads = tuple(WorkloadInfo(label, cap)
                      for label, cap in state.baseline.caps["train"].items())
    cluster = ClusterInfo(c.replicas, c.model, c.gpu, c.tp, c.max_batch_tokens)
    return ProposalRequest(parent_info(state, parent, failures, diagnosed=True), inspirations,
                           objective,
                           workloads, cluster, baseline_params=state.baseline.params), parent
