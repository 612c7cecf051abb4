"""A measured step-time model of a live serving engine, for engines the GPU roofline does not
describe (a CPU llama.cpp server, an engine whose kernels are unknown).

``autotuner profile`` drives the engine with controlled requests and fits, as BLIS's alpha/beta
model does, an iteration time linear in what the iteration holds:

    t = base_s + prefill_base_s * [prefill_tokens > 0]
        + prefill_token_s * prefill_tokens + prefill_pair_s * prefill_pairs
        + decode_s * decodes + context_token_s * decode_context

``prefill_pairs`` (causal (query, key) pairs) carries attention's quadratic cost in the prompt;
``decode_context`` (KV tokens all decodes read) its linear cost in the context. The profile also
records what bounds the engine's batches: how many requests it runs at once (``max_num_seqs``,
1 for a server that serves one request at a time), its KV capacity and its prompt chunk size.

The file is JSON (``StepProfile.to_json``/``load_step_profile``) so the simulator reads it with
nothing outside this package; ``StepCostModel`` answers the engine's questions exactly as
``costmodel.CostModel`` does (same methods), so ``ClusterSpec(profile=...)`` swaps it in.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields

FORMAT = "autotuner-step-profile/1"

COEFFICIENTS: tuple[str, ...] = (
    "base_s",
    "prefill_base_s",
    "prefill_token_s",
    "prefill_pair_s",
    "decode_s",
    "context_token_s",
)


class StepProfileError(ValueError):
    """A profile file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class StepProfile:
    """One engine on one machine, as measured. Times in seconds; counts in tokens."""

    name: str
    base_s: float
    prefill_base_s: float
    prefill_token_s: float
    prefill_pair_s: float
    decode_s: float
    context_token_s: float
    kv_capacity_tokens: int
    max_num_seqs: int = 0  # 0: no limit seen
    prompt_chunk_tokens: int = 0  # 0: the engine takes a whole prompt in one iteration
    tokens_per_word: float = 1.0  # how the probe's words tokenised on this engine
    prompt_extra_tokens: int = 0  # tokens the engine adds to every prompt (BOS)
    endpoint: str = ""
    server_model: str = ""
    created: str = ""
    # How well the model fits its own probes (informational): per band of batch size.
    fit: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for name in COEFFICIENTS:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise StepProfileError(
                    f"{name} must be a finite number >= 0 seconds, got {value!r}"
                )
        if self.base_s + self.decode_s <= 0:
            raise StepProfileError("base_s + decode_s must be > 0: a decode step takes time")
        for name in (
            "kv_capacity_tokens",
            "max_num_seqs",
            "prompt_chunk_tokens",
            "prompt_extra_tokens",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise StepProfileError(f"{name} must be a whole number >= 0, got {value!r}")
        if self.kv_capacity_tokens < 2:
            raise StepProfileError(
                f"kv_capacity_tokens must be at least 2, got {self.kv_capacity_tokens}"
            )
        if not (math.isfinite(self.tokens_per_word) and self.tokens_per_word > 0):
            raise StepProfileError(f"tokens_per_word must be > 0, got {self.tokens_per_word!r}")

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=2) + "\n"

    def iteration_time(
        self, prefill_tokens: float, prefill_pairs: float, decodes: float, decode_context: float
    ) -> float:
        if prefill_tokens <= 0 and decodes <= 0:
            return 0.0
        t = self.base_s + self.decode_s * decodes + self.context_token_s * decode_context
        if prefill_tokens > 0:
            t += (
                self.prefill_base_s
                + self.prefill_token_s * prefill_tokens
                + self.prefill_pair_s * prefill_pairs
            )
        return t


def load_step_profile(path: str | os.PathLike) -> StepProfile:
    """Read a profile written by ``autotuner profile``; StepProfileError names what is wrong."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except OSError as exc:
        raise StepProfileError(f"{path}: cannot read profile: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StepProfileError(f"{path}: not a JSON step profile ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StepProfileError(
            f'{path}: not an autotuner step profile (expected "format": "{FORMAT}"; '
            "write one with autotuner profile --endpoint URL)"
        )
    known = {f.name for f in fields(StepProfile)}
    unknown = sorted(set(data) - known - {"format"})
    if unknown:
        raise StepProfileError(f"{path}: unknown field(s) {', '.join(unknown)}")
    missing = [n for n in ("name", *COEFFICIENTS, "kv_capacity_tokens") if n not in data]
    if missing:
        raise StepProfileError(f"{path}: missing field(s) {', '.join(missing)}")
    data.pop("format")
    try:
        return StepProfile(**data)
    except StepProfileError as exc:
        raise StepProfileError(f"{path}: {exc}") from None
    except TypeError as exc:
        raise StepProfileError(f"{path}: {exc}") from None


class StepCostModel:
    """The simulator's cost model from a ``StepProfile``: the interface of ``CostModel``."""

    def __init__(self, profile: StepProfile):
        self.profile = profile

    def kv_capacity_tokens(self, gpu_memory_utilization: float = 0.9, block_size: int = 16) -> int:
        """The engine's measured KV capacity, in whole blocks (the memory share is the
        engine's own setting, already in the measurement)."""
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        return max(block_size, self.profile.kv_capacity_tokens // block_size * block_size)

    def iteration_time(
        self, prefill_tokens: int, prefill_pairs: float, decodes: int, decode_context: int
    ) -> float:
        return self.profile.iteration_time(prefill_tokens, prefill_pairs, decodes, decode_context)

    def decode_coeffs(self, decodes: int) -> tuple[float, float]:
        """``(a, b)`` with ``iteration_time(0, 0.0, decodes, ctx) == a + b*ctx``."""
        p = self.profile
        return p.base_s + p.decode_s * decodes, p.context_token_s
