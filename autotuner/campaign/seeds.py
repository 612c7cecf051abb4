"""Phase 2: the configured reference policies (``search.seeds``) start islands: each enters the
archive as a candidate, a child of the baseline, and is screened and tuned like a proposal. Then
the gate's references are tuned and measured on the held-out workloads (``campaign.references``),
so the search need keep back time only for what depends on it."""

from __future__ import annotations

from pathlib import Path

from autotuner import archive as A
from autotuner.campaign.candidate import process
from autotuner.campaign.references import measure_reference_policies
from autotuner.campaign.state import CampaignState
from autotuner.config import policy_file


def seeds_phase(state: CampaignState) -> None:
    assert state.archive is not None
    for k, name in enumerate(state.cfg.search.seeds):
        cid = f"seed-{Path(name).stem}"
        if state.archive.find(cid) is None:
            path = policy_file(name)
            code = path.read_text(encoding="utf-8")
            island = (k + 1) % state.cfg.search.islands
            state.archive.add_candidate(
                candidate_id=cid, origin="seed", code=code, status=A.PENDING,
                parent_id="baseline", island=island, proposer=f"reference {path.name}",
                files_dir=state.dir / "candidates")
    for cand in state.archive.candidates(origin="seed", status=(A.PENDING, A.TUNING)):
        process(state, cand)
    measure_reference_policies(state)
