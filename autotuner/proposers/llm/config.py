"""How to reach the proposer's LLM and how much may be spent on it (the ``[proposer.llm]`` table).

Works the same against OpenAI, vLLM, Ollama or llama.cpp's server: only the chat-completions
call is used. The key itself is never part of the config, so a saved config never leaks it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

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


# Settings a campaign file gives in [budget], refused in [proposer.llm] (key -> where it goes).
CAMPAIGN_BUDGET_KEYS = {"token_budget": "[budget] tokens", "usd_budget": "[budget] usd"}


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
            A reply that repeats the previous attempt ends the proposal at once: the model is
            not following the reasons, and asking again would pay for the same answer.
        prompt_token_cap: estimated tokens the opening prompt may take; over it, the other
            policies shown for ideas are left out (last first), then the API's field meanings.
            0 or None: no cap. A small local model follows a short prompt better and pays for every
            prompt token on a CPU.
        prices: USD per 1M (prompt, completion) tokens, by model name or name prefix; merged over
            ``DEFAULT_PRICES``. Unknown models cost 0.
        token_budget: total prompt + completion tokens this proposer may spend; None = no cap.
            A campaign sets it from ``[budget] tokens``; a campaign file that sets it here is
            refused, so that one budget is written in one place.
        usd_budget: total dollars it may spend; None = no cap. Both are checked before every
            call (a hard stop); calls already in flight may overshoot by at most their own size.
            A campaign sets it from ``[budget] usd`` (refused here, as ``token_budget``).
        seed: seeds the backoff jitter; None takes the campaign's seed (0 outside a campaign).
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
    prompt_token_cap: int | None = 2000
    prices: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    token_budget: int | None = None
    usd_budget: float | None = None
    seed: int | None = None
    extra_body: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("timeout_s", "backoff_s", "max_backoff_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"LLMConfig.{name} must be > 0")
        for name in ("max_retries", "max_check_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"LLMConfig.{name} must be >= 0")
        cap = self.prompt_token_cap
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int)
                                or (cap != 0 and cap < 500)):
            raise ValueError("LLMConfig.prompt_token_cap must be a whole number >= 500 (0: no cap)")
        if self.concurrency < 1:
            raise ValueError("LLMConfig.concurrency must be >= 1")
        for model, price in self.prices.items():
            if len(price) != 2 or any(p < 0 or not math.isfinite(p) for p in price):
                raise ValueError(f"LLMConfig.prices[{model!r}] must be two prices >= 0")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> LLMConfig:
        """Build from a parsed TOML table; prices may be ``[p, c]`` or ``{prompt=, completion=}``.

        Unknown keys are refused by name, so a typo in a campaign file is not silently ignored;
        so are the budget keys, which the campaign's ``[budget]`` table sets.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown LLM settings: {', '.join(unknown)}")
        for key, home in CAMPAIGN_BUDGET_KEYS.items():
            if key in raw:
                raise ValueError(f"{key} is not set here: the campaign's budget is {home}")
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
