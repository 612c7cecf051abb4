"""The LLM proposer: asks a chat model for a new policy file, and sends back what was wrong.

The opening messages come from ``autotuner.proposers.prompt``; calls, retries and the budget from
``client``. A reply that cannot be used (no code, an edit that does not apply), whose code the
static check refuses, or (when a dry run is given) that fails when called on recorded snapshots,
goes back to the model with the reasons, a bounded number of times. A reply that is a policy the
model was shown (the parent, another policy) is answered with exactly that; a reply that repeats
the previous attempt ends the dialogue, since paying for the same answer again teaches nothing.
Nothing here ever raises into the campaign loop: every outcome is a ``Proposal``.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import jinja2

from autotuner.lineage import canonical_program, shipped_references
from autotuner.policy import PARSE_LOCK
from autotuner.proposers.autofix import mechanical_repair
from autotuner.proposers.base import CallRecord, CheckFn, Proposal, ProposalRequest
from autotuner.proposers.edits import UNCHANGED, parse_reply
from autotuner.proposers.llm.client import ChatClient, ChatReply, EndpointError, Spend
from autotuner.proposers.llm.config import LLMConfig
from autotuner.proposers.prompt import PromptBuilder, brief, messages_tokens

log = logging.getLogger(__name__)

REPEATED = "the reply repeated the previous attempt"
# Each repair call samples this much hotter than the last (up to REPAIR_TEMPERATURE_MAX): a small
# model shown its own refused file and the reasons sent the same bytes back at the configured
# temperature, and a repeat ends the dialogue.
REPAIR_TEMPERATURE_STEP = 0.15
REPAIR_TEMPERATURE_MAX = 1.1


@dataclass(frozen=True)
class ProposalProgress:
    """Where one proposal's dialogue stands, for a progress line while the model works."""

    proposal: int  # this proposer's running number for the request
    attempt: int
    max_attempts: int
    elapsed_s: float
    tokens: int  # prompt + completion tokens of this proposal so far (server's count)
    prompt_tokens: int  # estimated tokens of the call in flight (0 between calls)
    state: str  # "asking", "checking", "done"

    def line(self) -> str:
        what = f"proposal {self.proposal}: attempt {self.attempt}/{self.max_attempts}"
        if self.state == "asking":
            what += f", ~{self.prompt_tokens:,} prompt tokens sent"
        elif self.state != "done":
            what += f", {self.state}"
        return f"{what}, {self.elapsed_s:.0f} s, {self.tokens:,} tokens so far"


ProgressFn = Callable[[ProposalProgress], None]


def _program_key(code: str) -> str:
    """The program regardless of comments and layout (names and constants count)."""
    try:
        with PARSE_LOCK:
            return ast.dump(ast.parse(code))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return code


@dataclass
class _Dialogue:
    """One proposal's exchange so far: the messages, what the replies cost, what was refused."""

    model: str
    number: int
    opening: list[dict[str, str]]
    base: str  # what edits apply to: the parent as shown, then the last refused file
    known: dict[str, str]  # canonical program -> what the model was shown under that name
    started: float = field(default_factory=time.monotonic)
    messages: list[dict[str, str]] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    attempts: int = 0
    reasons: list[str] = field(default_factory=list)  # why the last reply was not used
    last_key: str | None = None  # the last attempt's identity: its program, or its text

    def record(self, reply: ChatReply, estimate: int, seconds: float) -> None:
        self.replies.append(reply.text)
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens
        self.cost_usd += reply.cost_usd
        self.calls.append(CallRecord(self.attempts, reply.prompt_tokens, estimate,
                                     reply.completion_tokens, round(seconds, 3), "ok"))

    def outcome(self, text: str) -> None:
        """What became of the last call's reply (one short line)."""
        if self.calls:
            self.calls[-1] = dataclasses.replace(self.calls[-1], outcome=brief(text))

    def fixed(self, fixes: tuple[str, ...]) -> None:
        """The tool's mechanical fixes to the last call's reply."""
        if self.calls:
            self.calls[-1] = dataclasses.replace(self.calls[-1], fixes=fixes)

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
            calls=tuple(self.calls),
            fixes=self.calls[-1].fixes if code is not None and self.calls else (),
        )


@functools.lru_cache(maxsize=1)
def _reference_programs() -> dict[str, str]:
    """The shipped reference policies' canonical programs -> their names."""
    out: dict[str, str] = {}
    for name, code in shipped_references().items():
        canon = canonical_program(code)
        if canon is not None:
            out.setdefault(canon, name)
    return out


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
        progress: ProgressFn | None = None,
        dry_run: CheckFn | None = None,
    ):
        """``spent`` carries totals over from an earlier run (a resumed campaign keeps its
        budget); ``client`` replaces the ``openai.OpenAI`` client (tests); ``sleep`` the waits.

        ``progress`` is called (from the proposing thread) before and after every model call;
        ``status()`` gives the same as one line for whoever polls. ``dry_run`` runs a file that
        passed the static check (the sandbox calling it on recorded snapshots) and returns the
        reasons it fails, like a check; its reasons go back to the model the same way. It is
        a seam: the campaign passes one once the sandbox offers it.
        """
        self.config = config or LLMConfig()
        self.client = ChatClient(self.config, env=env, spent=spent, client=client, sleep=sleep)
        self.model = self.client.model
        self.endpoint = self.client.endpoint
        self.prompts = PromptBuilder()
        self.progress = progress
        self.dry_run = dry_run
        self._lock = threading.Lock()
        self._numbered = 0
        self._live: dict[int, ProposalProgress] = {}

    @property
    def spent(self) -> Spend:
        return self.client.spent

    def preflight(self, timeout_s: float = 20.0) -> str:
        """One uncharged round trip to the endpoint (see ``ChatClient.preflight``)."""
        return self.client.preflight(timeout_s)

    def __repr__(self) -> str:  # no key in here, ever
        return f"LLMProposer(model={self.model!r}, endpoint={self.endpoint!r})"

    def status(self) -> str:
        """The proposals in flight, one short clause each ("" when none)."""
        with self._lock:
            live = sorted(self._live.values(), key=lambda p: p.proposal)
        return "; ".join(p.line() for p in live)

    def propose(self, request: ProposalRequest, check: CheckFn) -> Proposal:
        """Ask, parse, check; on a refusal send the reasons back, up to max_check_retries times.

        Never raises: whatever goes wrong becomes a Proposal with ``ok=False`` and the reason.
        """
        with self._lock:
            self._numbered += 1
            number = self._numbered
        try:
            return self._propose(request, check, number)
        except Exception as exc:  # a bug here must cost one proposal, not the campaign
            log.exception("LLM proposer failed")
            reason = self.client.scrub(f"internal error: {type(exc).__name__}: {exc}")
            return Proposal(None, False, reason, model=self.model)
        finally:
            with self._lock:
                self._live.pop(number, None)

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

    # -- progress ----------------------------------------------------------------------------

    def _report(self, talk: _Dialogue, state: str, prompt_tokens: int = 0) -> None:
        event = ProposalProgress(
            talk.number, talk.attempts, self.config.max_check_retries + 1,
            time.monotonic() - talk.started, talk.prompt_tokens + talk.completion_tokens,
            prompt_tokens, state)
        with self._lock:
            if state == "done":
                self._live.pop(talk.number, None)
            else:
                self._live[talk.number] = event
        if self.progress is not None:
            try:
                self.progress(event)
            except Exception:  # a broken progress printer must not cost the proposal
                log.exception("progress callback raised")

    # -- the dialogue ------------------------------------------------------------------------

    def _open(self, request: ProposalRequest, number: int) -> _Dialogue:
        cap = self.config.prompt_token_cap or None
        fitted = self.prompts.fit(request, cap, number)
        if fitted.dropped:
            log.info("prompt over %s tokens: left out %s", cap, ", ".join(fitted.dropped))
        base = self.prompts.shown_parent(request)
        known: dict[str, str] = {}
        for info, what in [(request.parent, f"the parent {request.parent.candidate_id}"),
                           *((i, f"{i.candidate_id}, one of the other policies shown")
                             for i in request.inspirations)]:
            canon = canonical_program(info.code)
            if canon is not None:
                known.setdefault(canon, what)
        for canon, name in _reference_programs().items():  # a copy is no discovery either
            known.setdefault(canon, f"the reference policy {name}")
        return _Dialogue(self.model, number, fitted.messages, base, known,
                         messages=list(fitted.messages))

    def _propose(self, request: ProposalRequest, check: CheckFn, number: int) -> Proposal:
        try:
            talk = self._open(request, number)
        except jinja2.TemplateError as exc:
            return _Dialogue(self.model, number, [], "", {}).result(
                None, f"prompt error: {exc}", fatal=True)
        code: str | None = None
        for _ in range(self.config.max_check_retries + 1):
            stop = self.client.budget_left()
            if stop:
                return talk.result(None, stop, fatal=True)
            talk.attempts += 1
            estimate = messages_tokens(talk.messages)
            self._report(talk, "asking", estimate)
            started = time.monotonic()
            try:
                reply = self.client.call(talk.messages,
                                         temperature=self._temperature(talk.attempts))
            except EndpointError as exc:
                reason = str(exc)
                if not reason.startswith("budget exhausted"):
                    reason = f"endpoint error: {reason}"
                self._report(talk, "done")
                return talk.result(None, reason, fatal=exc.fatal)
            talk.record(reply, estimate, time.monotonic() - started)
            self._report(talk, "checking")
            verdict = self._review(reply, talk, check)
            if isinstance(verdict, Proposal):
                self._report(talk, "done")
                return verdict
            code, fix_reasons, refused = verdict
            talk.outcome("; ".join(fix_reasons))
            talk.messages = self._next_messages(talk, reply, code, fix_reasons, refused)
        self._report(talk, "done")
        summary = "; ".join(talk.reasons)
        if code is not None:
            return talk.result(None, f"check rejected after {talk.attempts} attempts: {summary}")
        n = talk.attempts
        return talk.result(None, summary if n == 1 else f"{summary} (after {n} attempts)")

    def _next_messages(self, talk: _Dialogue, reply: ChatReply, code: str | None,
                       reasons: list[str], refused: bool) -> list[dict[str, str]]:
        """The next call's messages. A file the check or the dry run refused: the system
        message and a repair message with that file alone, its faulty lines marked (shown the
        whole dialogue again, Qwen2.5-Coder-1.5B sent its refused file back in 5 of 12 repairs).
        A reply with no usable file, or a copy of a known policy: the opening, that reply and
        the reasons, since the task itself is still to be done (never the whole history, which
        made later prompts several times the first one's size)."""
        if refused and code is not None:
            return [talk.opening[0],
                    {"role": "user", "content": self.prompts.repair(reasons, code)}]
        shown = f"```python\n{code.strip()}\n```" if code is not None else reply.text
        return [
            *talk.opening,
            {"role": "assistant", "content": shown},
            {"role": "user", "content": self.prompts.fix(reasons, code)},
        ]

    def _temperature(self, attempt: int) -> float | None:
        """The sampling temperature of the ``attempt``-th call (None: the endpoint's)."""
        base = self.config.temperature
        if base is None or attempt <= 1 or base >= REPAIR_TEMPERATURE_MAX:
            return base
        return round(min(base + REPAIR_TEMPERATURE_STEP * (attempt - 1),
                         REPAIR_TEMPERATURE_MAX), 3)

    def _review(
        self, reply: ChatReply, talk: _Dialogue, check: CheckFn
    ) -> Proposal | tuple[str | None, list[str], bool]:
        """The finished proposal (accepted, or the dialogue is over); else the file the reply
        produced (None if none), the reasons to send back with it, and whether they are the
        check's or the dry run's refusals of that file (not "no file", not "a copy")."""
        code, parse_reason = parse_reply(reply.text, talk.base)
        if code is not None:
            code = self._mechanical(code, check, talk)
        produced = code if code is not None else (talk.base if parse_reason == UNCHANGED else None)
        canon = canonical_program(produced) if produced is not None else None
        copy_of = talk.known.get(canon or "")
        key = (f"known:{canon}" if copy_of else f"program:{_program_key(produced)}"
               if produced is not None else f"text:{reply.text}")
        if key == talk.last_key:
            # The same answer again: the reasons did not help, and another ask would not.
            before = "; ".join(talk.reasons)
            talk.outcome(REPEATED)
            return talk.result(None, f"{REPEATED} (after {talk.attempts} attempts); it was "
                                     f"refused for: {before}")
        talk.last_key = key
        if copy_of is not None:
            talk.reasons = [f"your file is {copy_of}, unchanged up to names, comments, "
                            "docstrings and TUNABLES (the tuner already searches those); change "
                            "the code of partition or route: what the budget depends on, which "
                            "waiting requests get chunks first, or how a replica is chosen"]
            return produced, talk.reasons, False
        if code is None and parse_reason == UNCHANGED:  # the refused file, sent back as it was
            return (talk.base, ["your reply repeated the refused file unchanged", *talk.reasons],
                    True)
        if code is None:
            if reply.finish_reason == "length":
                parse_reason += " (the reply was cut off at max_tokens)"
            talk.reasons = [parse_reason]
            return None, talk.reasons, False
        reasons = self._refusals(code, check, talk)
        if isinstance(reasons, Proposal):
            return reasons
        if not reasons:
            talk.outcome("ok")
            return talk.result(code, "")
        talk.reasons = reasons
        talk.base = code
        return code, reasons, True

    def _mechanical(self, code: str, check: CheckFn, talk: _Dialogue) -> str:
        """The reply's file with the tool's mechanical fixes when the check refuses it (see
        ``autofix``): a mistake with one meaning-preserving fix costs no model call. The fixed
        file then goes through the same check and dry run as any reply."""
        try:
            if not check(code):
                return code
        except Exception:  # _refusals reports a checker that raises
            return code
        fixed, fixes = mechanical_repair(code)
        if fixes:
            log.info("proposal %d, attempt %d: the tool fixed: %s", talk.number, talk.attempts,
                     "; ".join(fixes))
            talk.fixed(fixes)
        return fixed

    def _refusals(self, code: str, check: CheckFn, talk: _Dialogue) -> list[str] | Proposal:
        """The static check's reasons, then (when it passes and one is given) the dry run's."""
        for stage, fn in (("check", check), ("dry run", self.dry_run)):
            if fn is None:
                continue
            try:
                reasons = [str(r) for r in fn(code)]
            except Exception as exc:  # a checker bug must not end the campaign
                log.exception("policy %s raised", stage)
                return talk.result(None, f"{stage} raised {type(exc).__name__}: {exc}")
            if reasons:
                return reasons
        return []
