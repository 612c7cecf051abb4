"""The campaign's diagnostics: a candidate's ladder runs and the tuned baseline's, read back
from the evaluation cache (never run again here), paired by ``autotuner.diagnose``.

The parent's diagnosis goes into each proposal request (where it loses); a finalist's becomes
its explanation (why it wins), stored in the archive and in its promotion record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autotuner.archive import Candidate
from autotuner.campaign.state import CampaignState
from autotuner.diagnose import Diagnosis, Explanation, diagnose, explain
from autotuner.lineage import changed_points
from autotuner.policy import PolicyFileError, read_policy_source
from autotuner.scoring import ladder_jobs


def stored_ladder(state: CampaignState, code: str, params: Mapping[str, Any], split: str,
                  caps: Mapping[str, float]) -> dict[str, list[dict[str, Any] | None]]:
    """A policy's ladder results on a split from the archive's cache: label -> one result per
    rung (None where the run was never made)."""
    assert state.archive is not None
    insts = [i for i in state.instances[split] if i.label in caps]
    jobs = ladder_jobs(code, params, insts, caps, state.cfg)
    found = state.archive.get_evaluations(job.key() for job in jobs)
    out: dict[str, list[dict[str, Any] | None]] = {}
    for job in jobs:
        out.setdefault(job.instance.label, []).append(found.get(job.key()))
    return out


def diagnosis_of(state: CampaignState, cand: Candidate, split: str) -> Diagnosis | None:
    """The candidate against the tuned baseline on ``split``, from stored runs (None when the
    baseline has no capacities there yet or the candidate has no scored runs)."""
    assert state.archive is not None and state.baseline is not None
    b = state.baseline
    caps = b.caps.get(split)
    if not caps or cand.code is None:
        return None
    mine = stored_ladder(state, cand.code, cand.params, split, caps)
    if not any(r for runs in mine.values() for r in runs):
        return None
    base = stored_ladder(state, b.code, b.params, split, caps)
    gains = {label: score for label, (score, _) in
             state.archive.scores(cand.id, split).get(split, {}).items()}
    return diagnose(cand.id, b.name, split, mine, base, gains)


def _tunables(code: str) -> list[str]:
    try:
        return [t.name for t in read_policy_source(code).tunables]
    except PolicyFileError:
        return []


def explanation_of(state: CampaignState, cand: Candidate, split: str = "validation"
                   ) -> Explanation | None:
    """Why the candidate wins on ``split``: its changed decisions (against the baseline and its
    parent) and the measured figures that moved, per workload."""
    assert state.archive is not None and state.baseline is not None
    diag = diagnosis_of(state, cand, split)
    if diag is None or cand.code is None:
        return None
    b = state.baseline
    parent = state.archive.find(cand.parent_id) if cand.parent_id else None
    from_parent: tuple[str, ...] = ()
    if parent is not None and parent.id != "baseline" and parent.code:
        from_parent = changed_points(cand.code, parent.code) or ()
    return explain(diag, changed=changed_points(cand.code, b.code) or (),
                   changed_from_parent=from_parent,
                   parent=parent.id if parent is not None else None,
                   tunables=_tunables(cand.code), baseline_tunables=_tunables(b.code))
