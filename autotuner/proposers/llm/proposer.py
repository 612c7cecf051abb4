"""The LLM proposer: asks a chat model for a new policy file, and sends back what was wrong.

The opening messages come from ``autotuner.proposers.prompt``; calls, retries and the budget from
``client``. A reply that cannot be used (no code, an edit that does not apply), or whose code the
static check refuses, goes back to the model with the reasons, a bounded number of times.
Nothing here ever raises into the campaign loop: every outcome is a ``Proposal``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import jinja2

from autotuner.proposers.base import CheckFn, Proposal, ProposalRequest
from autotuner.proposers.edits import UNCHANGED, parse_reply
from autotuner.proposers.llm.client import ChatClient, ChatReply, EndpointError, Spend
from autotuner.proposers.llm.config import LLMConfig
from autotuner.proposers.prompt import PromptBuilder

log = logging.getLogger(__name__)


@dataclass
class _Dialogue:
    """One proposal's exchange so far: the messages, what the replies cost, what was refused."""

    model: str
    messages: list[dict[str, str]]
    base: str  # what edits apply to: the parent, then the last rejected file
    replies: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    attempts: int = 0
    rejected: bool = False  # base is a file the check refused
    reasons: list[str] = field(default_factory=list)  # why the last reply was not used

    def record(self, reply: ChatReply) -> None:
        self.replies.append(reply.text)
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens
        self.cost_usd += reply.cost_usd

    def result(self, code: str | None, reason: str, fatal: bool = False) -> Proposal:
        return Proposal(
            code=code,
            ok=not reason,
            reason=reason,
            raw_replies=tuple(self.replies),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost_usd=self.cost_usd,
            attempts=self.attempts,
            model=self.model,
            fatal=fatal,
        )


class LLMProposer:
    """Proposer backed by a chat-completions endpoint. Safe to share between threads."""

    name = "llm"

    def __init__(
        self,
        config: LLMConfig | None = None,
        *,
        env: Mapping[str, str] | None = None,
        spent: Spend | None = None,
        client: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        """``spent`` carries totals over from an earlier run (a resumed campaign keeps its
        budget); ``client`` replaces the ``openai.OpenAI`` client (tests); ``sleep`` the waits."""
        self.config = config or LLMConfig()
        self.client = ChatClient(self.config, env=env, spent=spent, client=client, sleep=sleep)
        self.model = self.client.model
        self.endpoint = self.client.endpoint
        self.prompts = PromptBuilder()

    @property
    def spent(self) -> Spend:
        return self.client.spent

    def preflight(self, timeout_s: float = 20.0) -> str:
        """One uncharged round trip to the endpoint (see ``ChatClient.preflight``)."""
        return self.client.preflight(timeout_s)

    def __repr__(self) -> str:  # no key in here, ever
        return f"LLMProposer(model={self.model!r}, endpoint={self.endpoint!r})"

    def propose(self, request: ProposalRequest, check: CheckFn) -> Proposal:
        """Ask, parse, check; on a refusal send the reasons back, up to max_check_retries times.

        Never raises: whatever goes wrong becomes a Proposal with ``ok=False`` and the reason.
        """
        try:
            return self._propose(request, check)
        except Exception as exc:  # a bug here must cost one proposal, not the campaign
            log.exception("LLM proposer failed")
            reason = self.client.scrub(f"internal error: {type(exc).__name__}: {exc}")
            return Proposal(None, False, reason, model=self.model)

    def propose_many(
        self,
        requests: Sequence[ProposalRequest],
        check: CheckFn,
        concurrency: int | None = None,
    ) -> list[Proposal]:
        """Several proposals in flight at once; results in the order of ``requests``."""
        workers = max(1, min(concurrency or self.config.concurrency, len(requests) or 1))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm-proposer") as pool:
            return list(pool.map(lambda req: self.propose(req, check), requests))

    # -- the dialogue ------------------------------------------------------------------------

    def _propose(self, request: ProposalRequest, check: CheckFn) -> Proposal:
        talk = _Dialogue(self.model, [], request.parent.code)
        try:
            talk.messages = self.prompts.messages(request)
        except jinja2.TemplateError as exc:
            return talk.result(None, f"prompt error: {exc}", fatal=True)
        code: str | None = None
        for _ in range(self.config.max_check_retries + 1):
            stop = self.client.budget_left()
            if stop:
                return talk.result(None, stop, fatal=True)
            talk.attempts += 1
            try:
                reply = self.client.call(talk.messages)
            except EndpointError as exc:
                reason = str(exc)
                if not reason.startswith("budget exhausted"):
                    reason = f"endpoint error: {reason}"
                return talk.result(None, reason, fatal=exc.fatal)
            talk.record(reply)
            verdict = self._review(reply, talk, check)
            if isinstance(verdict, Proposal):
                return verdict
            code, fix_reasons = verdict
            talk.messages = [
                *talk.messages,
                {"role": "assistant", "content": reply.text},
                {"role": "user", "content": self.prompts.fix(fix_reasons, code)},
            ]
        summary = "; ".join(talk.reasons)
        if code is not None:
            return talk.result(None, f"check rejected after {talk.attempts} attempts: {summary}")
        n = talk.attempts
        return talk.result(None, summary if n == 1 else f"{summary} (after {n} attempts)")

    def _review(
        self, reply: ChatReply, talk: _Dialogue, check: CheckFn
    ) -> Proposal | tuple[str | None, list[str]]:
        """The finished proposal (the check passed, or raised); else the file the reply
        produced (None if none) and the reasons to send back with it."""
        code, parse_reason = parse_reply(reply.text, talk.base)
        if code is None and parse_reason == UNCHANGED and talk.rejected:
            # The rejected file sent back as it was: the check would refuse it again.
            return talk.base, ["your reply repeated the rejected file unchanged", *talk.reasons]
        if code is None:
            if reply.finish_reason == "length":
                parse_reason += " (the reply was cut off at max_tokens)"
            talk.reasons = [parse_reason]
            return None, talk.reasons
        try:
            reasons = [str(r) for r in check(code)]
        except Exception as exc:  # a checker bug must not end the campaign
            log.exception("policy check raised")
            return talk.result(None, f"check raised {type(exc).__name__}: {exc}")
        if not reasons:
            return talk.result(code, "")
        talk.reasons = reasons
        talk.base, talk.rejected = code, True
        return code, reasons
