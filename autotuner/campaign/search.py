"""Phase 3: the search. Proposals are asked for in daemon threads (an LLM is slow; several may
be in flight), while the main thread screens and tunes what came back; every archive write
happens on the main thread.

The search ends at the first budget reached (proposals, wall time less the finalisation's
share, evaluations, tokens, dollars) or when the proposer cannot go on. Proposals still out
when time is up get a grace period, then are abandoned and recorded with what they cost so far.
"""

from __future__ import annotations

import queue
import threading
import time

from autotuner import archive as A
from autotuner.campaign.candidate import process
from autotuner.campaign.parents import migrate, proposal_request
from autotuner.campaign.progress import fmt_duration
from autotuner.campaign.state import CampaignState
from autotuner.check import check_policy
from autotuner.proposers.base import Proposal, Proposer
from autotuner.proposers.prompt import brief

ABANDON_GRACE_S = 60.0  # how long proposals still in flight may finish after the search ends
NO_SPEND = {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}


def check_reasons(code: str) -> list[str]:
    """The static check's reasons to refuse ``code`` (none: accepted). The proposer may check
    with it before replying; the archive trusts only the campaign's own check."""
    return check_policy(code).reasons()


def search_phase(state: CampaignState) -> None:
    # candidates left half-done by a previous run go first
    assert state.archive is not None
    for cand in state.archive.candidates(origin="proposal", status=(A.PENDING, A.TUNING)):
        process(state, cand)
    assert state.proposer is not None
    SearchLoop(state, state.proposer).run()


class SearchLoop:
    """Requests out (by ticket) and replies back, between the proposer's threads and the
    main thread."""

    def __init__(self, state: CampaignState, proposer: Proposer):
        assert state.archive is not None
        self.state = state
        self.archive = state.archive
        self.proposer = proposer
        self.results: queue.Queue[tuple[int, str, Proposal | BaseException]] = queue.Queue()
        self.in_flight: dict[int, tuple[str, int]] = {}  # ticket -> (parent id, island)
        self.ticket = 0
        self.abandon_at: float | None = None

    def run(self) -> None:
        state, budget = self.state, self.state.cfg.budget
        while True:
            made = self.archive.count(origin="proposal")
            pending = self.archive.candidates(origin="proposal", status=(A.PENDING, A.TUNING))
            out_of_money = self._out_of_money()
            stop_asking = state.search_over() or bool(state.proposer_dead) or out_of_money
            while (not stop_asking and made + len(self.in_flight) < budget.proposals
                   and len(self.in_flight) + len(pending) < state.cfg.search.in_flight):
                self._submit((made + len(self.in_flight)) % state.cfg.search.islands)
            if pending and not state.search_over():
                process(state, pending[0])
                self._collect(wait_s=0.0)
                continue
            if self.in_flight and state.search_over():
                self._grace_then_abandon()
            if not self.in_flight:
                self._log_stop(made, out_of_money)
                break
            status = getattr(self.proposer, "status", lambda: "")() or "waiting for the proposer"
            state.tick(status if not pending else "")
            self._collect(wait_s=1.0)

    def _out_of_money(self) -> bool:
        """A budget other than wall time and proposals is spent: tokens, dollars, or
        evaluations (those already proposed are still evaluated in full)."""
        budget, spend = self.state.cfg.budget, self.archive.spend()
        return ((budget.tokens is not None and spend["tokens"] >= budget.tokens)
                or (budget.usd is not None and spend["cost_usd"] >= budget.usd)
                or self._evaluations_spent())

    def _evaluations_spent(self) -> bool:
        limit = self.state.cfg.budget.evaluations
        return limit is not None and self.archive.evaluation_count() >= limit

    def _log_stop(self, made: int, out_of_money: bool) -> None:
        state, budget = self.state, self.state.cfg.budget
        reserve = state.finalize_reserve()
        self.archive.set_meta("finalize_reserve_s", reserve)  # finalize says how it compared
        if state.search_over() and made < budget.proposals:
            state.progress.log(f"search stopped: wall-time budget reached "
                               f"({made} of {budget.proposals} proposals; "
                               f"{fmt_duration(reserve)} kept back for the finalisation)")
        elif out_of_money and self._evaluations_spent():
            state.progress.log(f"search stopped: the evaluation budget is spent "
                               f"({self.archive.evaluation_count()} evaluations of "
                               f"{budget.evaluations}; {made} of {budget.proposals} proposals, "
                               f"each evaluated in full)")
        elif out_of_money:
            state.progress.log("search stopped: the token/dollar budget is spent")
        elif state.proposer_dead:
            state.progress.log(f"search stopped: {state.proposer_dead}")

    def _submit(self, island: int) -> None:
        request, parent = proposal_request(self.state, island)
        self.ticket += 1
        self.in_flight[self.ticket] = (parent.id, island)
        ticket, proposer, results = self.ticket, self.proposer, self.results

        def work() -> None:
            try:
                results.put((ticket, parent.id, proposer.propose(request, check_reasons)))
            except BaseException as exc:  # noqa: BLE001 - reported on the main thread
                results.put((ticket, parent.id, exc))

        threading.Thread(target=work, name=f"proposal-{ticket}", daemon=True).start()

    def _collect(self, wait_s: float) -> None:
        """Archive finished proposals: wait up to ``wait_s`` for the first, then take whatever
        else is ready."""
        timeout: float | None = wait_s
        while self.in_flight:
            try:
                item = self.results.get(timeout=timeout) if timeout else \
                    self.results.get_nowait()
            except queue.Empty:
                return
            timeout = None
            ticket, parent_id, outcome = item
            if ticket not in self.in_flight:
                continue  # abandoned earlier
            _, island = self.in_flight.pop(ticket)
            archive_proposal(self.state, outcome, parent_id, island)
            if self.archive.count(origin="proposal") % self.state.cfg.search.migration_every == 0:
                migrate(self.state)

    def _grace_then_abandon(self) -> None:
        if self.abandon_at is None:
            self.abandon_at = time.monotonic() + ABANDON_GRACE_S
        elif time.monotonic() >= self.abandon_at:
            self._abandon()

    def _abandon(self) -> None:
        """Record proposals that never came back; what they cost so far is charged to them
        (the proposer's own running totals minus what the archive already holds)."""
        spent = getattr(self.proposer, "spent", None)
        recorded = self.archive.spend()
        extra = dict(NO_SPEND)
        if spent is not None:
            extra = {"prompt_tokens": max(0, spent.prompt_tokens - recorded["prompt_tokens"]),
                     "completion_tokens": max(0, spent.completion_tokens
                                              - recorded["completion_tokens"]),
                     "cost_usd": max(0.0, spent.cost_usd - recorded["cost_usd"])}
        for ticket, (parent_id, island) in list(self.in_flight.items()):
            cand = self.archive.add_candidate(
                origin="proposal", code=None, status=A.PROPOSAL_FAILED, parent_id=parent_id,
                island=island, proposer=getattr(self.proposer, "name", "proposer"),
                failure="abandoned: the search ended before the proposer answered", **extra)
            extra = dict(NO_SPEND)
            self.state.event(cand, cand.failure)
            del self.in_flight[ticket]


def archive_proposal(state: CampaignState, outcome: Proposal | BaseException, parent_id: str,
                     island: int) -> None:
    """A proposer's reply as a candidate: PENDING when its code passed the campaign's own check
    and is no copy of an archived program, else PROPOSAL_FAILED with the reason."""
    assert state.archive is not None
    name = getattr(state.proposer, "name", "proposer")
    if isinstance(outcome, BaseException):
        proposal = Proposal(None, False, f"proposer crashed: {type(outcome).__name__}: "
                                         f"{outcome}")
    else:
        proposal = outcome
    common = dict(origin="proposal", parent_id=parent_id, island=island, proposer=name,
                  prompt_tokens=proposal.prompt_tokens,
                  completion_tokens=proposal.completion_tokens, cost_usd=proposal.cost_usd,
                  attempts=proposal.attempts, model=proposal.model,
                  raw=proposal.raw_replies, files_dir=state.dir / "candidates")
    code, reason = proposal.code, proposal.reason
    copy_of, member = state.reference_copy(code) if code is not None else ("", None)
    common["copy_of"] = copy_of
    if proposal.ok and code is not None:
        reasons = check_reasons(code)
        if reasons:
            reason = "check rejected: " + "; ".join(reasons)
        elif (same := state.archive.same_program(code) or member) is not None:
            reason = f"duplicate of {same} (the same program" + (
                f": the reference policy {copy_of}, up to names, docstrings and tunable "
                "defaults)" if copy_of else ")")
    if proposal.ok and code is not None and not reason:
        cand = state.archive.add_candidate(code=code, status=A.PENDING, **common)
        state.event(cand, "proposed" + (f" ({proposal.attempts} attempts)"
                                        if proposal.attempts > 1 else "")
                    + (f"; the tool fixed: {'; '.join(proposal.fixes)}" if proposal.fixes
                       else "")
                    + (f": a copy of the reference {copy_of}, scored but never promoted"
                       if copy_of else ""))
        return
    cand = state.archive.add_candidate(code=code, status=A.PROPOSAL_FAILED,
                                       failure=reason or "no usable proposal", **common)
    state.event(cand, f"proposal failed: {brief(cand.failure)}")  # `show` has it whole
    if proposal.fatal and not state.proposer_dead:
        state.proposer_dead = f"the proposer cannot go on: {proposal.reason}"
