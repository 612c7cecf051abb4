"""The LLM proposer: asks any OpenAI-compatible chat endpoint for a new policy file.

Works the same against OpenAI, vLLM, Ollama or llama.cpp's server: only the chat-completions
call is used. Transport problems (429, 5xx, timeouts, dropped connections) are retried here, a
bounded number of times with seeded exponential backoff that honours ``retry-after``; the
client's own retries are off so that the bound and the waits are ours. A reply that cannot be
used, or whose code the static check refuses, goes back to the model with the reasons, again a
bounded number of times. Tokens and dollars are counted from each reply's ``usage`` and a budget
stops all further calls once spent. Nothing here ever raises into the campaign loop: every
outcome is a ``Proposal``.
"""

from __future__ import annotations

import email.utils
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any

import jinja2

from autotuner.check import ALLOWED_BUILTINS, ALLOWED_MODULES
from autotuner.proposers.base import CheckFn, Proposal, ProposalRequest
from autotuner.proposers.edits import UNCHANGED, parse_reply
from autotuner.resources import asset_dir
from autotuner.sim.api import MAX_WAITING_VIEW

log = logging.getLogger(__name__)

# USD per 1M tokens (prompt, completion), list prices of the OpenAI API. A model not in the
# table (a local vLLM/Ollama/llama.cpp model) costs 0; a versioned name such as
# "gpt-4o-2024-08-06" is priced by its longest matching prefix.
DEFAULT_PRICES: Mapping[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
}

# Statuses worth another try: rate limits, overload, timeouts on the server's side, 5xx.
_RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_DUMMY_KEY = "not-needed"  # local servers ignore the key, but the client insists on one


@dataclass(frozen=True)
class LLMConfig:
    """How to reach the model and how much may be spent on it.

    Fields:
        model: model name as the endpoint knows it; None takes ``$OPENAI_MODEL``.
        base_url: the endpoint's ``.../v1`` URL (vLLM ``http://host:8000/v1``, Ollama
            ``http://localhost:11434/v1``); None takes ``$OPENAI_BASE_URL``, else OpenAI's own.
        api_key_env: name of the environment variable holding the key. The key itself is never
            part of the config, so a saved config never leaks it. A custom endpoint with no key
            set gets a dummy one (local servers ignore it); OpenAI's own endpoint needs a real one.
        timeout_s: seconds one HTTP call may take before it is abandoned (and retried).
        max_retries: further tries of one call after a retryable failure (429, 5xx, timeout,
            connection error); 400/401/403/404/422 are never retried.
        backoff_s: first backoff wait; it doubles per retry, with seeded jitter, up to
            ``max_backoff_s``.
        max_backoff_s: cap on one backoff wait, and on a wait a ``retry-after`` header asks for.
        temperature: sampling temperature; None leaves it to the endpoint. A model that refuses
            it (OpenAI's reasoning models) is asked again without it, once, and remembered.
        max_tokens: cap on one reply's length; None leaves it to the endpoint. Sent as
            ``max_completion_tokens`` once a model says it wants that name.
        concurrency: proposals in flight at once in ``propose_many``.
        max_check_retries: how many times a reply that is unusable (no code, an edit that does
            not apply) or whose code the check refuses goes back to the model with the reasons.
        prices: USD per 1M (prompt, completion) tokens, by model name or name prefix; merged over
            ``DEFAULT_PRICES``. Unknown models cost 0.
        token_budget: total prompt + completion tokens this proposer may spend; None = no cap.
        usd_budget: total dollars it may spend; None = no cap. Both are checked before every
            call (a hard stop); calls already in flight may overshoot by at most their own size.
        seed: seeds the backoff jitter.
        extra_body: extra JSON fields for every request (e.g. vLLM's ``top_k``).
    """

    model: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 120.0
    max_retries: int = 4
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    temperature: float | None = 0.8
    max_tokens: int | None = 4096
    concurrency: int = 4
    max_check_retries: int = 2
    prices: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    token_budget: int | None = None
    usd_budget: float | None = None
    seed: int = 0
    extra_body: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("timeout_s", "backoff_s", "max_backoff_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"LLMConfig.{name} must be > 0")
        for name in ("max_retries", "max_check_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"LLMConfig.{name} must be >= 0")
        if self.concurrency < 1:
            raise ValueError("LLMConfig.concurrency must be >= 1")
        for model, price in self.prices.items():
            if len(price) != 2 or any(p < 0 or not math.isfinite(p) for p in price):
                raise ValueError(f"LLMConfig.prices[{model!r}] must be two prices >= 0")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> LLMConfig:
        """Build from a parsed TOML table; prices may be ``[p, c]`` or ``{prompt=, completion=}``.

        Unknown keys are refused by name, so a typo in a campaign file is not silently ignored.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown LLM settings: {', '.join(unknown)}")
        values = dict(raw)
        if "prices" in values:
            prices = {}
            for model, price in dict(values["prices"]).items():
                if isinstance(price, Mapping):
                    prices[model] = (float(price["prompt"]), float(price["completion"]))
                else:
                    prompt, completion = price
                    prices[model] = (float(prompt), float(completion))
            values["prices"] = prices
        return cls(**values)

    def resolved_model(self, env: Mapping[str, str] | None = None) -> str | None:
        env = os.environ if env is None else env
        return self.model or env.get("OPENAI_MODEL") or None

    def resolved_base_url(self, env: Mapping[str, str] | None = None) -> str | None:
        env = os.environ if env is None else env
        return self.base_url or env.get("OPENAI_BASE_URL") or None

    def endpoint_configured(self, env: Mapping[str, str] | None = None) -> bool:
        """True when there is something to talk to: a base URL, or a key for OpenAI's own.

        The campaign uses this to choose between this proposer and the offline one.
        """
        env = os.environ if env is None else env
        has_model = self.resolved_model(env) is not None
        return has_model and bool(self.resolved_base_url(env) or env.get(self.api_key_env))

    def price(self, model: str) -> tuple[float, float]:
        """USD per 1M (prompt, completion) tokens for ``model``; (0, 0) when unknown."""
        table = {**DEFAULT_PRICES, **self.prices}
        if model in table:
            return table[model]
        prefixes = [name for name in table if model.startswith(name)]
        return table[max(prefixes, key=len)] if prefixes else (0.0, 0.0)


class EndpointError(Exception):
    """A call that failed for good; ``fatal`` when retrying later will not help either."""

    def __init__(self, message: str, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal


@dataclass
class Spend:
    """Running totals of one proposer, shared by its threads (guarded by the proposer's lock)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0


@dataclass
class _Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    finish_reason: str | None


def _fmt(value: Any) -> str:
    """Numbers for a prompt: short, no 0.30000000000000004."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def template_env() -> jinja2.Environment:
    """The prompts/ templates; StrictUndefined so a missing variable fails loudly in tests."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(asset_dir("prompts"))),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["fmt"] = _fmt
    return env


def render_api_doc(env: jinja2.Environment | None = None) -> str:
    """The policy API as the model reads it (prompts/policy_api.md.j2)."""
    env = env or template_env()
    return env.get_template("policy_api.md.j2").render(max_waiting_view=MAX_WAITING_VIEW)


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """Seconds a 429/503 asks us to wait: ``retry-after-ms``, else ``retry-after`` (seconds or an
    HTTP date); None when absent or unreadable."""
    if not headers:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            value = float(raw_ms) / 1000.0
            if math.isfinite(value) and value >= 0:
                return value
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        value = float(raw)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


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
        env = os.environ if env is None else env
        model = self.config.resolved_model(env)
        if not model:
            raise ValueError("no model configured: set the model in the config or $OPENAI_MODEL")
        self.model: str = model
        self.base_url = self.config.resolved_base_url(env)
        key = env.get(self.config.api_key_env) or ""
        if not key and self.base_url is None:
            raise ValueError(
                f"no API key: set ${self.config.api_key_env} for OpenAI's endpoint, "
                "or set a base URL for a local server"
            )
        self._secret = key  # only ever used to scrub error messages
        self.endpoint = self.base_url or "https://api.openai.com/v1"
        if client is None:
            import openai

            client = openai.OpenAI(
                base_url=self.base_url,
                api_key=key or _DUMMY_KEY,
                timeout=self.config.timeout_s,
                max_retries=0,
            )
        self._client = client
        self._sleep = sleep
        self._lock = threading.Lock()
        self._rng = random.Random(self.config.seed)
        self._token_param = "max_tokens"
        self._drop_temperature = False
        self.spent = spent or Spend()
        self._templates = template_env()
        self._api_doc: str | None = None

    def __repr__(self) -> str:  # no key in here, ever
        return f"LLMProposer(model={self.model!r}, endpoint={self.endpoint!r})"

    # -- accounting -------------------------------------------------------------------------

    def _budget_left(self) -> str | None:
        """None while there is budget; else the reason to stop."""
        cfg = self.config
        with self._lock:
            tokens = self.spent.prompt_tokens + self.spent.completion_tokens
            cost = self.spent.cost_usd
        if cfg.token_budget is not None and tokens >= cfg.token_budget:
            return f"budget exhausted: {tokens} of {cfg.token_budget} tokens spent"
        if cfg.usd_budget is not None and cost >= cfg.usd_budget:
            return f"budget exhausted: ${cost:.4f} of ${cfg.usd_budget:.4f} spent"
        return None

    def _charge(self, prompt_tokens: int, completion_tokens: int) -> float:
        per_prompt, per_completion = self.config.price(self.model)
        cost = (prompt_tokens * per_prompt + completion_tokens * per_completion) / 1e6
        with self._lock:
            self.spent.prompt_tokens += prompt_tokens
            self.spent.completion_tokens += completion_tokens
            self.spent.cost_usd += cost
            self.spent.calls += 1
        return cost

    # -- one call, with retries ---------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _backoff(self, retry: int) -> float:
        cap = min(self.config.max_backoff_s, self.config.backoff_s * 2**retry)
        with self._lock:
            jitter = self._rng.random()
        return cap * (0.5 + 0.5 * jitter)

    def _call(self, messages: Sequence[Mapping[str, str]], *, retries: int | None = None,
              max_wait_s: float | None = None, timeout_s: float | None = None,
              max_tokens: int | None = None, charge: bool = True) -> _Reply:
        """One chat completion; raises EndpointError once retries are spent or not allowed.

        The keywords exist for ``preflight``: fewer retries, shorter waits, a shorter timeout
        per try, a small reply, and no charge to the budget.
        """
        import openai

        cfg = self.config
        retries = cfg.max_retries if retries is None else retries
        max_wait_s = cfg.max_backoff_s if max_wait_s is None else max_wait_s
        client = self._client
        if timeout_s is not None and hasattr(client, "with_options"):
            client = client.with_options(timeout=timeout_s, max_retries=0)
        timeout_s = timeout_s or cfg.timeout_s
        last = ""
        adapted = 0  # 400s answered by changing a parameter (reasoning models)
        attempt = 0  # retries used on retryable failures
        while True:
            stop = self._budget_left()
            if stop:
                raise EndpointError(stop, fatal=True)
            wait: float | None = None
            try:
                response = client.chat.completions.create(
                    **self._request_args(messages, max_tokens))
            except openai.APIStatusError as exc:
                status = exc.status_code
                detail = self._scrub(_error_message(exc))
                last = f"{self.endpoint} answered {status}: {detail}"
                if status == 400 and adapted < 2 and self._adapt(detail):
                    adapted += 1  # resend at once with the parameter the model wants
                    continue
                if status not in _RETRY_STATUSES:
                    fatal = status in (401, 403, 404)
                    raise EndpointError(f"{last} (not retried)", fatal=fatal) from None
                wait = retry_after_s(getattr(exc.response, "headers", None))
            except openai.APITimeoutError:
                last = f"{self.endpoint} did not answer within {timeout_s:g} s"
            except openai.APIConnectionError as exc:
                last = f"cannot reach {self.endpoint}: {self._scrub(str(exc.__cause__ or exc))}"
            except Exception as exc:  # a body that is not a chat completion (proxy page, ...)
                detail = self._scrub(f"{type(exc).__name__}: {exc}")[:300]
                last = f"{self.endpoint} sent something that is not a chat completion ({detail})"
            else:
                return self._read(response, charge)
            if attempt == retries:
                break
            delay = self._backoff(attempt) if wait is None else wait
            delay = min(delay, max_wait_s)
            attempt += 1
            log.warning("LLM call failed (%s); retry %d in %.2f s", last, attempt, delay)
            self._sleep(delay)
        raise EndpointError(f"{last} (gave up after {retries + 1} tries)")

    def _request_args(self, messages: Sequence[Mapping[str, str]],
                      max_tokens: int | None = None) -> dict[str, Any]:
        cfg = self.config
        kwargs: dict[str, Any] = {"model": self.model, "messages": list(messages)}
        with self._lock:
            drop_temperature, token_param = self._drop_temperature, self._token_param
        if cfg.temperature is not None and not drop_temperature:
            kwargs["temperature"] = cfg.temperature
        if max_tokens is not None or cfg.max_tokens is not None:
            kwargs[token_param] = max_tokens or cfg.max_tokens
        if cfg.extra_body:
            kwargs["extra_body"] = dict(cfg.extra_body)
        return kwargs

    def _adapt(self, detail: str) -> bool:
        """Reasoning models (o-series, gpt-5) refuse ``max_tokens`` and any temperature but the
        default, with a 400 that says so; learn that once and ask again instead of failing
        every proposal. True when something changed."""
        text = detail.lower()
        with self._lock:
            if "max_completion_tokens" in text and self._token_param == "max_tokens":
                self._token_param = "max_completion_tokens"
                return True
            if "temperature" in text and not self._drop_temperature:
                self._drop_temperature = True
                return True
        return False

    def _read(self, response: Any, charge: bool = True) -> _Reply:
        choices = getattr(response, "choices", None) or []
        message = choices[0].message if choices else None
        text = (getattr(message, "content", None) or "") if message is not None else ""
        finish = getattr(choices[0], "finish_reason", None) if choices else None
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        if usage is None:
            # Some local servers send no usage; estimate so a token budget still binds.
            completion_tokens = max(1, len(text) // 4)
        cost = self._charge(prompt_tokens, completion_tokens) if charge else 0.0
        return _Reply(text, prompt_tokens, completion_tokens, cost, finish)

    # -- preflight ---------------------------------------------------------------------------

    def preflight(self, timeout_s: float = 20.0) -> str:
        """One tiny chat completion, so that a campaign learns its endpoint is unreachable, or
        refuses the key or the model, in seconds and before it writes anything, rather than
        after minutes of baseline tuning. One retry, short waits, a ``timeout_s`` deadline per
        try. Returns a line for the log; raises EndpointError. Its handful of tokens is not
        charged to the budget (the archive, which keeps the campaign's spend, does not exist
        yet).
        """
        t0 = time.monotonic()
        self._call([{"role": "user", "content": "Reply with the single word OK."}], retries=1,
                   max_wait_s=2.0, timeout_s=min(timeout_s, self.config.timeout_s),
                   max_tokens=16, charge=False)
        return f"{self.endpoint} answered a test request in {time.monotonic() - t0:.1f} s"

    # -- prompts -----------------------------------------------------------------------------

    def api_doc(self) -> str:
        if self._api_doc is None:
            self._api_doc = render_api_doc(self._templates)
        return self._api_doc

    def render_messages(self, request: ProposalRequest) -> list[dict[str, str]]:
        """The opening system + user messages for a request."""
        system = self._templates.get_template("system.j2").render(
            api_doc=(request.api_doc or self.api_doc()).strip(),
            # The checker's own allow-lists, so the prompt can never drift from what it accepts.
            allowed_modules=ALLOWED_MODULES,
            allowed_builtins=ALLOWED_BUILTINS,
        )
        user = self._templates.get_template("propose.j2").render(
            objective=request.objective.strip(),
            cluster=request.cluster.strip(),
            workloads=request.workloads.strip(),
            parent=request.parent,
            inspirations=request.inspirations,
            notes=request.notes,
        )
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def render_fix(self, reasons: Sequence[str], code: str | None) -> str:
        return self._templates.get_template("fix.j2").render(reasons=list(reasons), code=code)

    # -- the dialogue ------------------------------------------------------------------------

    def propose(self, request: ProposalRequest, check: CheckFn) -> Proposal:
        """Ask, parse, check; on a refusal send the reasons back, up to max_check_retries times.

        Never raises: whatever goes wrong becomes a Proposal with ``ok=False`` and the reason.
        """
        try:
            return self._propose(request, check)
        except Exception as exc:  # a bug here must cost one proposal, not the campaign
            log.exception("LLM proposer failed")
            reason = self._scrub(f"internal error: {type(exc).__name__}: {exc}")
            return Proposal(None, False, reason, model=self.model)

    def _propose(self, request: ProposalRequest, check: CheckFn) -> Proposal:
        replies: list[str] = []
        totals = {"prompt": 0, "completion": 0, "cost": 0.0}
        attempts = 0

        def result(code: str | None, reason: str, fatal: bool = False) -> Proposal:
            return Proposal(
                code=code,
                ok=not reason,
                reason=reason,
                raw_replies=tuple(replies),
                prompt_tokens=totals["prompt"],
                completion_tokens=totals["completion"],
                cost_usd=totals["cost"],
                attempts=attempts,
                model=self.model,
                fatal=fatal,
            )

        try:
            messages = self.render_messages(request)
        except jinja2.TemplateError as exc:
            return result(None, f"prompt error: {exc}", fatal=True)
        base = request.parent.code  # what edits apply to: the parent, then the last rejected file
        rejected = False
        reasons: list[str] = []
        for _ in range(self.config.max_check_retries + 1):
            stop = self._budget_left()
            if stop:
                return result(None, stop, fatal=True)
            attempts += 1
            try:
                reply = self._call(messages)
            except EndpointError as exc:
                reason = str(exc)
                if not reason.startswith("budget exhausted"):
                    reason = f"endpoint error: {reason}"
                return result(None, reason, fatal=exc.fatal)
            replies.append(reply.text)
            totals["prompt"] += reply.prompt_tokens
            totals["completion"] += reply.completion_tokens
            totals["cost"] += reply.cost_usd
            code, parse_reason = parse_reply(reply.text, base)
            fix_reasons: list[str]
            if code is None and parse_reason == UNCHANGED and rejected:
                # The rejected file sent back as it was: the check would refuse it again.
                code = base
                fix_reasons = ["your reply repeated the rejected file unchanged", *reasons]
            elif code is None:
                if reply.finish_reason == "length":
                    parse_reason += " (the reply was cut off at max_tokens)"
                reasons = fix_reasons = [parse_reason]
            else:
                try:
                    reasons = [str(r) for r in check(code)]
                except Exception as exc:  # a checker bug must not end the campaign
                    log.exception("policy check raised")
                    return result(None, f"check raised {type(exc).__name__}: {exc}")
                if not reasons:
                    return result(code, "")
                fix_reasons = reasons
                base, rejected = code, True
            messages = [
                *messages,
                {"role": "assistant", "content": reply.text},
                {"role": "user", "content": self.render_fix(fix_reasons, code)},
            ]
        summary = "; ".join(reasons)
        if code is not None:
            return result(None, f"check rejected after {attempts} attempts: {summary}")
        return result(None, summary if attempts == 1 else f"{summary} (after {attempts} attempts)")

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


def _error_message(exc: Any) -> str:
    """The server's own words for an error, short."""
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping) and inner.get("message"):
            return str(inner["message"])[:300]
        if isinstance(inner, str):
            return inner[:300]
    return str(getattr(exc, "message", "") or exc)[:300]
