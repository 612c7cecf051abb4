"""One chat-completions endpoint: calls with bounded, seeded retries, and the money they cost.

Transport problems (429, 5xx, timeouts, dropped connections) are retried here, a bounded number
of times with seeded exponential backoff that honours ``retry-after``; the client's own retries
are off so that the bound and the waits are ours. Tokens and dollars are counted from each
reply's ``usage`` and a budget stops all further calls once spent.
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
from dataclasses import dataclass
from typing import Any

from autotuner.proposers.llm.config import LLMConfig
from autotuner.proposers.prompt import estimate_tokens, messages_tokens

log = logging.getLogger(__name__)

# Statuses worth another try: rate limits, overload, timeouts on the server's side, 5xx.
_RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_DUMMY_KEY = "not-needed"  # local servers ignore the key, but the client insists on one


class EndpointError(Exception):
    """A call that failed for good; ``fatal`` when retrying later will not help either."""

    def __init__(self, message: str, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal


@dataclass
class Spend:
    """Running totals of one proposer, shared by its threads (guarded by the client's lock)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0


@dataclass
class ChatReply:
    """One completion: its text, what it cost, and why it ended (``"length"``: cut off)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    finish_reason: str | None


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


class ChatClient:
    """Calls one model at one endpoint; safe to share between threads."""

    def __init__(
        self,
        config: LLMConfig,
        *,
        env: Mapping[str, str] | None = None,
        spent: Spend | None = None,
        client: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        """``spent`` carries totals over from an earlier run (a resumed campaign keeps its
        budget); ``client`` replaces the ``openai.OpenAI`` client (tests); ``sleep`` the waits."""
        self.config = config
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
        self._rng = random.Random(0 if self.config.seed is None else self.config.seed)
        self._token_param = "max_tokens"
        self._drop_temperature = False
        self.spent = spent or Spend()

    # -- accounting -------------------------------------------------------------------------

    def budget_left(self) -> str | None:
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

    def scrub(self, text: str) -> str:
        """``text`` with the API key blanked out (error messages may echo it)."""
        return text.replace(self._secret, "***") if self._secret else text

    def _backoff(self, retry: int) -> float:
        cap = min(self.config.max_backoff_s, self.config.backoff_s * 2**retry)
        with self._lock:
            jitter = self._rng.random()
        return cap * (0.5 + 0.5 * jitter)

    def call(self, messages: Sequence[Mapping[str, str]], *, retries: int | None = None,
             max_wait_s: float | None = None, timeout_s: float | None = None,
             max_tokens: int | None = None, charge: bool = True,
             temperature: float | None = None) -> ChatReply:
        """One chat completion; raises EndpointError once retries are spent or not allowed.

        The keywords exist for ``preflight``: fewer retries, shorter waits, a shorter timeout
        per try, a small reply, and no charge to the budget; ``temperature`` replaces the
        configured one for this call (the repair loop's, see ``LLMProposer``).
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
            stop = self.budget_left()
            if stop:
                raise EndpointError(stop, fatal=True)
            wait: float | None = None
            try:
                response = client.chat.completions.create(
                    **self._request_args(messages, max_tokens, temperature))
            except openai.APIStatusError as exc:
                status = exc.status_code
                detail = self.scrub(_error_message(exc))
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
                last = f"cannot reach {self.endpoint}: {self.scrub(str(exc.__cause__ or exc))}"
            except Exception as exc:  # a body that is not a chat completion (proxy page, ...)
                detail = self.scrub(f"{type(exc).__name__}: {exc}")[:300]
                last = f"{self.endpoint} sent something that is not a chat completion ({detail})"
            else:
                return self._read(response, messages, charge)
            if attempt == retries:
                break
            delay = self._backoff(attempt) if wait is None else wait
            delay = min(delay, max_wait_s)
            attempt += 1
            log.warning("LLM call failed (%s); retry %d in %.2f s", last, attempt, delay)
            self._sleep(delay)
        raise EndpointError(f"{last} (gave up after {retries + 1} tries)")

    def preflight(self, timeout_s: float = 20.0) -> str:
        """One tiny chat completion, so that a campaign learns its endpoint is unreachable, or
        refuses the key or the model, in seconds and before it writes anything, rather than
        after minutes of baseline tuning. One retry, short waits, a ``timeout_s`` deadline per
        try. Returns a line for the log; raises EndpointError. Its handful of tokens is not
        charged to the budget (the archive, which keeps the campaign's spend, does not exist
        yet).
        """
        t0 = time.monotonic()
        self.call([{"role": "user", "content": "Reply with the single word OK."}], retries=1,
                  max_wait_s=2.0, timeout_s=min(timeout_s, self.config.timeout_s),
                  max_tokens=16, charge=False)
        return f"{self.endpoint} answered a test request in {time.monotonic() - t0:.1f} s"

    def _request_args(self, messages: Sequence[Mapping[str, str]],
                      max_tokens: int | None = None,
                      temperature: float | None = None) -> dict[str, Any]:
        cfg = self.config
        kwargs: dict[str, Any] = {"model": self.model, "messages": list(messages)}
        with self._lock:
            drop_temperature, token_param = self._drop_temperature, self._token_param
        temperature = cfg.temperature if temperature is None else temperature
        if temperature is not None and not drop_temperature:
            kwargs["temperature"] = temperature
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

    def _read(self, response: Any, messages: Sequence[Mapping[str, str]],
              charge: bool = True) -> ChatReply:
        choices = getattr(response, "choices", None) or []
        message = choices[0].message if choices else None
        text = (getattr(message, "content", None) or "") if message is not None else ""
        finish = getattr(choices[0], "finish_reason", None) if choices else None
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        if usage is None:
            # Some local servers send no usage; estimate so a token budget still binds.
            prompt_tokens = messages_tokens(messages)
            completion_tokens = max(1, estimate_tokens(text))
        cost = self._charge(prompt_tokens, completion_tokens) if charge else 0.0
        return ChatReply(text, prompt_tokens, completion_tokens, cost, finish)


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
