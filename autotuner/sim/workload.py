"""Workloads: the requests a simulation serves, and the built-in scenarios that generate them.

A ``Workload`` is a set of column arrays (arrival, prompt, output) plus optional prefix block ids.
Built-in scenarios sample lengths from figures fitted to real traces (``fitted.py``, produced by
``scripts/fit_workloads.py``), so the package ships no third-party data. Generation is vectorised
and seeded: the same (name, num_requests, rate, seed, options) gives bit-identical arrays.

Prefix ids: ``prefix[i]`` lists one id per ``prefix_block_tokens``-token block from the start of
request i's prompt; block j covers prompt tokens ``[j * B, min((j + 1) * B, prompt))``, so the last
block may be partial. Equal ids mean identical KV content. Built-in scenarios that carry ids give
every request ``ceil(prompt / B)`` ids (unshared content gets fresh ids); a replayed trace carries
what the file says, at most that many.

Arrivals are open loop: a multiturn session's next turn arrives a fitted gap after the previous
turn's arrival, whatever the simulated service time (as in the trace the gap is fitted from).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import fitted

__all__ = [
    "MAX_REQUESTS",
    "MAX_REQUEST_TOKENS",
    "SCENARIOS",
    "Scenario",
    "UnknownWorkloadError",
    "Workload",
    "make_workload",
]

Prefix = tuple[tuple[int, ...], ...]

# Bounds on what a workload may hold. A prompt or output longer than any served model's context
# (the longest, Llama 4 Scout's, is 10M tokens) is a corrupt input, not a request: it could never
# be served and would sit in every simulation unfinished. A million requests is minutes of
# simulation and about a gigabyte of state; a count far beyond it (10^12) is a typo that would
# otherwise try to allocate terabytes.
MAX_REQUEST_TOKENS = 10_000_000
MAX_REQUESTS = 1_000_000


@dataclass(frozen=True, eq=False)
class Workload:
    """Requests in arrival order. Arrays are read-only copies, so a Workload can be shared."""

    name: str
    arrival: np.ndarray  # float64 seconds, non-decreasing, first >= 0
    prompt: np.ndarray  # int64 >= 1
    output: np.ndarray  # int64 >= 1, output tokens including the first one
    prefix: Prefix | None  # per request: prefix block ids; None when the workload has none
    prefix_block_tokens: int = 512

    def __post_init__(self) -> None:
        arrival = _frozen(self.arrival, np.float64, "arrival")
        prompt = _frozen(self.prompt, np.int64, "prompt")
        output = _frozen(self.output, np.int64, "output")
        n = len(arrival)
        if len(prompt) != n or len(output) != n:
            raise ValueError(
                f"workload {self.name!r}: arrival, prompt and output lengths differ "
                f"({n}, {len(prompt)}, {len(output)})"
            )
        if n:
            if not np.all(np.isfinite(arrival)):
                raise ValueError(f"workload {self.name!r}: arrival times must be finite")
            if arrival[0] < 0 or np.any(np.diff(arrival) < 0):
                raise ValueError(
                    f"workload {self.name!r}: arrivals must be non-decreasing and start at >= 0"
                )
            if prompt.min() < 1 or output.min() < 1:
                raise ValueError(f"workload {self.name!r}: prompt and output lengths must be >= 1")
            if max(prompt.max(), output.max()) > MAX_REQUEST_TOKENS:
                raise ValueError(
                    f"workload {self.name!r}: prompt and output lengths must be at most "
                    f"{MAX_REQUEST_TOKENS:,} tokens"
                )
        prefix = self.prefix
        if prefix is not None:
            if not isinstance(prefix, tuple):
                prefix = tuple(tuple(p) for p in prefix)
            if len(prefix) != n:
                raise ValueError(
                    f"workload {self.name!r}: prefix has {len(prefix)} entries for {n} requests"
                )
        if int(self.prefix_block_tokens) < 1:
            raise ValueError("prefix_block_tokens must be >= 1")
        object.__setattr__(self, "arrival", arrival)
        object.__setattr__(self, "prompt", prompt)
        object.__setattr__(self, "output", output)
        object.__setattr__(self, "prefix", prefix)

    def __len__(self) -> int:
        return len(self.arrival)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Workload):
            return NotImplemented
        return (
            self.name == other.name
            and self.prefix_block_tokens == other.prefix_block_tokens
            and np.array_equal(self.arrival, other.arrival)
            and np.array_equal(self.prompt, other.prompt)
            and np.array_equal(self.output, other.output)
            and self.prefix == other.prefix
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Workload({self.name!r}, {len(self)} requests, {self.rate:.3g} req/s, "
            f"prefix={'yes' if self.prefix is not None else 'no'})"
        )

    @property
    def rate(self) -> float:
        """Mean arrival rate: requests per second over [0, last arrival] (0.0 when empty).

        Measured from time 0, not from the first arrival, because the simulator starts at 0, so
        this is the offered load it sees; ``with_rate`` sets exactly this quantity.
        """
        n = len(self)
        if n == 0:
            return 0.0
        last = float(self.arrival[-1])
        return math.inf if last <= 0 else n / last

    def with_rate(self, rate: float) -> Workload:
        """The same requests with every arrival time multiplied by one factor, so ``.rate == rate``.

        All gaps scale together, so two calls with different rates give paired workloads whose
        arrival order and relative spacing agree; a larger rate gives earlier arrivals, which is
        what capacity bisection relies on.
        """
        rate = _check_rate(rate)
        current = self.rate
        if len(self) == 0:
            return self
        if not math.isfinite(current):
            raise ValueError(f"workload {self.name!r}: all arrivals at 0, its rate cannot be set")
        factor = current / float(rate)
        return Workload(
            self.name,
            self.arrival * factor,
            self.prompt,
            self.output,
            self.prefix,
            self.prefix_block_tokens,
        )

    def head(self, n: int) -> Workload:
        """The first ``n`` requests (all of them when ``n >= len``)."""
        if n < 0:
            raise ValueError(f"head needs n >= 0, got {n}")
        return Workload(
            self.name,
            self.arrival[:n],
            self.prompt[:n],
            self.output[:n],
            None if self.prefix is None else self.prefix[:n],
            self.prefix_block_tokens,
        )


def _frozen(values: Any, dtype: type, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if dtype is np.int64 and arr.dtype.kind == "f":
        if arr.size and not np.all(arr == np.floor(arr)):
            raise ValueError(f"{what} must hold whole numbers")
    if dtype is np.int64 and arr.dtype.kind in "uf" and arr.size:
        if not np.abs(arr).max() < 2.0**63:  # numpy would wrap it, or warn and invent a value
            raise ValueError(f"{what} must hold numbers that fit in 64 bits")
    try:
        out = np.array(arr, dtype=dtype, copy=True)
    except (OverflowError, TypeError, ValueError):
        raise ValueError(f"{what} must hold numbers that fit in 64 bits") from None
    out.setflags(write=False)
    return out


# --------------------------------------------------------------------------------------------
# Sampling from the fitted figures


def _interp_table(u: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each probability ``u`` falls among ``levels``: interval index and fraction in it."""
    pos = np.searchsorted(levels, u, side="right") - 1
    pos = np.clip(pos, 0, len(levels) - 2)
    lo, hi = levels[pos], levels[pos + 1]
    frac = (u - lo) / (hi - lo)
    return pos, frac


@dataclass(frozen=True)
class _Quantiles:
    levels: np.ndarray
    values: np.ndarray

    @classmethod
    def of(cls, levels: tuple[float, ...], values: tuple[float, ...]) -> _Quantiles:
        return cls(np.asarray(levels, dtype=np.float64), np.asarray(values, dtype=np.float64))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.at(rng.random(n))

    def at(self, u: np.ndarray) -> np.ndarray:
        pos, frac = _interp_table(u, self.levels)
        v = self.values
        return v[pos] + frac * (v[pos + 1] - v[pos])


@dataclass(frozen=True)
class _JointLengths:
    """Prompt marginal + output quantiles per prompt-quantile bin: keeps the prompt/output
    correlation (arXiv summaries: long prompts get shorter outputs)."""

    prompt: _Quantiles
    bin_levels: np.ndarray  # prompt quantile levels bounding the bins
    cond_levels: np.ndarray
    output: np.ndarray  # (bins, cond levels)

    @classmethod
    def of(cls, fig: dict) -> _JointLengths:
        return cls(
            _Quantiles.of(fitted.MARGINAL_LEVELS, fig["prompt_q"]),
            np.asarray(fitted.PROMPT_BIN_LEVELS, dtype=np.float64),
            np.asarray(fitted.COND_LEVELS, dtype=np.float64),
            np.asarray(fig["output_q"], dtype=np.float64),
        )

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        u = rng.random((2, n))
        prompt = self.prompt.at(u[0])
        row, _ = _interp_table(u[0], self.bin_levels)
        pos, frac = _interp_table(u[1], self.cond_levels)
        lo = self.output[row, pos]
        out = lo + frac * (self.output[row, pos + 1] - lo)
        return _tokens(prompt), _tokens(out)


def _tokens(x: np.ndarray) -> np.ndarray:
    return np.maximum(np.rint(x), 1).astype(np.int64)


CHAT_LENGTHS = _JointLengths.of(fitted.CHAT)
SUMMARIZE_LENGTHS = _JointLengths.of(fitted.SUMMARIZE)
_MT = fitted.MULTITURN
_MT_FIRST = _Quantiles.of(fitted.MARGINAL_LEVELS, _MT["first_prompt_q"])
_MT_OUTPUT = _Quantiles.of(fitted.MARGINAL_LEVELS, _MT["output_q"])
_MT_DELTA = _Quantiles.of(fitted.MARGINAL_LEVELS, _MT["delta_q"])
_MT_THINK = _Quantiles.of(fitted.MARGINAL_LEVELS, _MT["think_q"])
_MT_TURNS = np.asarray(_MT["turns_pmf"], dtype=np.float64) / sum(_MT["turns_pmf"])
MULTITURN_MEAN_TURNS = float(np.dot(np.arange(1, len(_MT_TURNS) + 1), _MT_TURNS))
# A session can grow past any real context window; cap at 128k tokens (the trace's longest
# prompt is 126,195).
MULTITURN_MAX_PROMPT = 131_072
# Sessions start this long before time 0 and only arrivals at >= 0 are kept, so the workload
# opens mid-conversation at a steady rate, as a window of a real trace does. It must outlast the
# sessions: with the fitted turns and think times 2.9 % of turns (5.7 % of prompt tokens: the
# long histories of long sessions) come more than 30 min after their session's start, 0.08 %
# more than 2 h, none in 300,000 sessions more than 4 h (the longest: 4.9 h). Thirty minutes
# left a run's first two hours short of those late turns, so a 6,000-request run (1.7 h at 1
# req/s) was lighter than a 40,000-request one.
MULTITURN_WARMUP_S = 14_400.0
# Sessions are drawn in blocks of this many, each block from its own stream of the seed.
_SESSION_BLOCK = 1024


# --------------------------------------------------------------------------------------------
# Arrival processes


def poisson_arrivals(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    return np.cumsum(rng.exponential(1.0 / rate, n))


def gamma_arrivals(rng: np.random.Generator, n: int, rate: float, cv: float) -> np.ndarray:
    """Gamma gaps with mean 1/rate and coefficient of variation ``cv`` (shape = 1/cv^2)."""
    shape = 1.0 / (cv * cv)
    return np.cumsum(rng.gamma(shape, 1.0 / (rate * shape), n))


def _fresh_ids(counts: np.ndarray, start: int) -> list[tuple[int, ...]]:
    """One tuple of consecutive new ids per request, ``counts[i]`` long, numbered from ``start``."""
    flat = list(range(start, start + int(counts.sum())))
    ends = np.cumsum(counts).tolist()
    out = []
    a = 0
    for b in ends:
        out.append(tuple(flat[a:b]))
        a = b
    return out


def _blocks(prompt: np.ndarray, block: int) -> np.ndarray:
    return (prompt + block - 1) // block


# --------------------------------------------------------------------------------------------
# Scenarios


def _check_rate(rate: float) -> float:
    ok = isinstance(rate, numbers.Real) and not isinstance(rate, bool)
    if not (ok and math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a positive finite number, got {rate!r}")
    return float(rate)


def _gen_chat(n: int, rate: float, rng: np.random.Generator) -> Workload:
    arrival = poisson_arrivals(rng, n, rate)
    prompt, output = CHAT_LENGTHS.sample(rng, n)
    return Workload("chat", arrival, prompt, output, None)


def _gen_summarize(n: int, rate: float, rng: np.random.Generator) -> Workload:
    arrival = poisson_arrivals(rng, n, rate)
    prompt, output = SUMMARIZE_LENGTHS.sample(rng, n)
    return Workload("summarize", arrival, prompt, output, None)


def _gen_bursty(n: int, rate: float, rng: np.random.Generator, cv: float = 4.0) -> Workload:
    if not (math.isfinite(cv) and cv > 0):
        raise ValueError(f"bursty: cv must be positive, got {cv!r}")
    arrival = gamma_arrivals(rng, n, rate, cv)
    prompt, output = CHAT_LENGTHS.sample(rng, n)
    return Workload("bursty", arrival, prompt, output, None)


def _draw_sessions(rng: np.random.Generator, count: int, session_rate: float
                   ) -> dict[str, np.ndarray]:
    """``count`` sessions' random figures, drawn from ``rng`` alone: start gaps, turn counts,
    system prompt; per turn think gap, first-turn text, output and history delta."""
    turns = rng.choice(len(_MT_TURNS), size=count, p=_MT_TURNS) + 1
    total = int(turns.sum())
    return {
        "start_gap": rng.exponential(1.0 / session_rate, count),
        "turns": turns,
        "system": rng.integers(0, int(_MT["system_prompts"]), count),
        "think": _MT_THINK.sample(rng, total),
        "first": np.rint(_MT_FIRST.sample(rng, total)),
        "output": _tokens(_MT_OUTPUT.sample(rng, total)),
        "delta": np.rint(_MT_DELTA.sample(rng, total)),
    }


def _gen_multiturn(
    n: int,
    rate: float,
    rng: np.random.Generator,
    warmup_s: float = MULTITURN_WARMUP_S,
) -> Workload:
    """Sessions of turns whose prompts extend the previous turn's prompt and output.

    Turn 1: a system prompt (one of ``system_prompts`` shared block runs) plus fitted first-turn
    text. Turn k+1: previous prompt + previous output + fitted new text (negative in ~19 % of the
    trace's turns: history trimmed or edited; the prompt then shrinks), sharing the previous
    prompt's full blocks (or, when it shrinks, the full blocks of the shorter prompt). Sessions
    start as a Poisson process at ``rate / mean turns``; turns follow fitted gaps.

    A seed is one endless stream of sessions, drawn in blocks of ``_SESSION_BLOCK`` sessions
    each from its own stream; ``n`` only says where to stop. So the first ``n`` requests of a
    longer run of the same seed (and rate) are this run, request for request: a capacity checked
    on a run twice as long (``search_capacity_settled``) is checked on this run continued, not
    on a fresh sample whose heavy sessions differ (which made the check a minimum over samples
    and read multiturn's 6,000-request capacity 7 % below the 40,000-request one).
    """
    if not (math.isfinite(warmup_s) and warmup_s >= 0):
        raise ValueError(f"multiturn: warmup_s must be >= 0 seconds, got {warmup_s!r}")
    block = fitted.BLOCK_TOKENS
    sys_n, sys_blocks = int(_MT["system_prompts"]), int(_MT["system_blocks"])
    min_prompt = sys_blocks * block + 1
    session_rate = rate / MULTITURN_MEAN_TURNS
    stream = int(rng.integers(0, 2**63 - 1))
    horizon = n / rate * 1.2 + 10.0 / session_rate
    drawn: list[dict[str, np.ndarray]] = []
    while True:
        want = int(math.ceil((session_rate * (horizon + warmup_s) * 1.1 + 20) / _SESSION_BLOCK))
        while len(drawn) < want:
            drawn.append(_draw_sessions(np.random.default_rng([stream, len(drawn)]),
                                        _SESSION_BLOCK, session_rate))
        s = {k: np.concatenate([d[k] for d in drawn]) for k in drawn[0]}
        starts = np.cumsum(s["start_gap"]) - warmup_s
        turns = s["turns"]
        n_sess, total = len(turns), int(turns.sum())
        first = np.concatenate(([0], np.cumsum(turns)[:-1]))
        session = np.repeat(np.arange(n_sess), turns)
        turn = np.arange(total) - first[session]
        gap = np.where(turn == 0, 0.0, s["think"])
        # arrival = session start + cumulative gaps within the session
        csum = np.cumsum(gap)
        arrival = starts[session] + csum - csum[first[session]]
        # Every arrival up to the last session start is drawn (later sessions start after it).
        keep_mask = (arrival >= 0) & (arrival <= float(starts[-1]))
        if int(keep_mask.sum()) >= n:
            break
        horizon *= 2
    output = s["output"]
    delta = s["delta"]
    prompt = np.clip(s["first"], min_prompt, MULTITURN_MAX_PROMPT)
    shared = np.full(total, sys_blocks, dtype=np.int64)
    for t in range(1, int(turns.max())):
        idx = first[turns > t] + t
        prev = prompt[idx - 1]
        cur = np.clip(prev + output[idx - 1] + delta[idx], min_prompt, MULTITURN_MAX_PROMPT)
        prompt[idx] = cur
        shared[idx] = np.maximum(np.minimum(prev, cur) // block, sys_blocks)
    prompt = prompt.astype(np.int64)

    kept = np.flatnonzero(keep_mask)
    kept = kept[np.argsort(arrival[kept], kind="stable")][:n]
    # Build ids for every turn of a session up to its last kept turn (a kept turn's prefix needs
    # its ancestors' ids, even those before time 0). Fresh ids are numbered over every drawn
    # turn in stream order, so a turn's ids do not depend on ``n`` either.
    last_kept = np.full(n_sess, -1)
    np.maximum.at(last_kept, session[kept], turn[kept])
    need = np.flatnonzero(turn <= last_kept[session])
    fresh_count = _blocks(prompt, block) - shared
    fresh_start = sys_n * sys_blocks + np.concatenate(([0], np.cumsum(fresh_count)[:-1]))
    ids: list[tuple[int, ...] | None] = [None] * total
    sys_ids = [tuple(range(k * sys_blocks, (k + 1) * sys_blocks)) for k in range(sys_n)]
    shared_l, turn_l = shared.tolist(), turn.tolist()
    system_l = s["system"][session].tolist()
    start_l, count_l = fresh_start.tolist(), fresh_count.tolist()
    for r in need.tolist():
        base = sys_ids[system_l[r]] if turn_l[r] == 0 else ids[r - 1][: shared_l[r]]  # type: ignore[index]
        ids[r] = base + tuple(range(start_l[r], start_l[r] + count_l[r]))
    prefix = tuple(ids[r] for r in kept.tolist())  # type: ignore[misc]
    return Workload(
        "multiturn", arrival[kept], prompt[kept], output[kept], prefix, block
    )


MIXED_SHARES = {"chat": 0.6, "summarize": 0.25, "multiturn": 0.15}


def _gen_mixed(
    n: int,
    rate: float,
    rng: np.random.Generator,
    shares: dict[str, float] | None = None,
) -> Workload:
    """Classes generated independently at ``rate * share`` and interleaved by arrival.

    All requests carry prefix ids (unshared content gets fresh ids), so prefix-aware routing sees
    multiturn sessions among one-off chat and summarization requests. Like multiturn's, a seed
    is one endless stream per class (``_class_stream``), each class with its own id space, so a
    longer run of a seed continues the shorter one.
    """
    shares = dict(MIXED_SHARES if shares is None else shares)
    unknown = set(shares) - {"chat", "summarize", "multiturn", "bursty"}
    if unknown or not shares or any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
        raise ValueError("mixed: shares must map chat/summarize/multiturn/bursty to >= 0, "
            f"got {shares}")
    total = sum(shares.values())
    classes = [(k, v / total) for k, v in shares.items() if v > 0]
    seeds = rng.integers(0, 2**63 - 1, len(classes))
    # Each class needs about n * share requests to cover the window of the first n; generate a
    # margin more and double until every class reaches past the n-th merged arrival.
    scale = 1.1
    while True:
        parts = [
            _class_stream(k, int(n * s * scale) + 50, rate * s, int(seed))
            for (k, s), seed in zip(classes, seeds, strict=True)
        ]
        cutoff = min(float(p.arrival[-1]) for p in parts)
        arrival = np.concatenate([p.arrival for p in parts])
        if int(np.count_nonzero(arrival <= cutoff)) >= n:
            break
        scale *= 2
    block = fitted.BLOCK_TOKENS
    prefix: list[tuple[int, ...]] = []
    for c, p in enumerate(parts):
        offset = c * _MIXED_ID_SPACE
        if p.prefix is None:
            prefix.extend(_fresh_ids(_blocks(p.prompt, block), offset))
        else:
            prefix.extend(tuple(i + offset for i in x) for x in p.prefix)
    order = np.argsort(arrival, kind="stable")[:n]
    prompt = np.concatenate([p.prompt for p in parts])
    output = np.concatenate([p.output for p in parts])
    return Workload(
        "mixed",
        arrival[order],
        prompt[order],
        output[order],
        tuple(prefix[i] for i in order.tolist()),
        block,
    )


# Mixed gives each class ids from its own range (no class of a million requests comes near it).
_MIXED_ID_SPACE = 1 << 40
# Renewal classes (chat, summarize, bursty) are drawn in chunks of this many requests.
_CLASS_CHUNK = 4096


def _class_stream(name: str, count: int, rate: float, seed: int) -> Workload:
    """The first ``count`` requests of one class's endless stream for ``seed``. Multiturn is one
    already; a renewal class (independent gaps and lengths) is drawn in chunks of
    ``_CLASS_CHUNK``, each from its own stream and starting where the previous one ended, which
    continues the same process (the next gap is as independent of the past as every other)."""
    if name == "multiturn":
        return _gen_multiturn(count, rate, np.random.default_rng(seed))
    chunks = [_GENERATORS[name](_CLASS_CHUNK, rate, np.random.default_rng([seed, j]))
              for j in range(-(-count // _CLASS_CHUNK))]
    ends = np.cumsum([float(c.arrival[-1]) for c in chunks])
    arrival = np.concatenate([c.arrival + (ends[j - 1] if j else 0.0)
                              for j, c in enumerate(chunks)])
    return Workload(name, arrival[:count],
                    np.concatenate([c.prompt for c in chunks])[:count],
                    np.concatenate([c.output for c in chunks])[:count], None)


_GENERATORS: dict[str, Callable[..., Workload]] = {
    "chat": _gen_chat,
    "summarize": _gen_summarize,
    "multiturn": _gen_multiturn,
    "bursty": _gen_bursty,
    "mixed": _gen_mixed,
}


@dataclass(frozen=True)
class Scenario:
    """A built-in workload family. ``default_rate`` (requests/s) loads 4 replicas of Llama-3-8B
    on H100 moderately; ``options`` are the keyword options ``make_workload`` accepts for it."""

    name: str
    description: str
    default_rate: float
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


_TS = fitted.TRACE_STATS
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "chat",
            "Poisson arrivals; prompt/output lengths fitted jointly to the Azure 2023 conversation "
            f"trace (prompt mean {_TS['azure_conv_2023']['prompt']['mean']:.0f}, output mean "
            f"{_TS['azure_conv_2023']['output']['mean']:.0f} tokens).",
            8.0,
        ),
        Scenario(
            "summarize",
            "Poisson arrivals; long prompts, short outputs fitted jointly to arXiv summarization "
            f"(prompt mean {_TS['arxiv_summarization_lengths']['prompt']['mean']:.0f}, output "
            f"mean {_TS['arxiv_summarization_lengths']['output']['mean']:.0f} tokens).",
            4.0,
        ),
        Scenario(
            "multiturn",
            "Conversation sessions fitted to the Mooncake trace: a shared system block, turns "
            "that extend the previous prompt and output (prefix ids shared), fitted think times "
            "and lengths; prompts are long (mean ~12k tokens, as in the trace).",
            1.0,
            {"warmup_s": MULTITURN_WARMUP_S},
        ),
        Scenario(
            "bursty",
            "Chat lengths with Gamma inter-arrival gaps of coefficient of variation cv "
            "(default 4): bursts and lulls at the same mean rate.",
            8.0,
            {"cv": 4.0},
        ),
        Scenario(
            "mixed",
            "Chat, summarization and multiturn requests interleaved (request shares "
            + ", ".join(f"{k} {v:.0%}" for k, v in MIXED_SHARES.items())
            + "); every request carries prefix ids.",
            3.5,
            {"shares": dict(MIXED_SHARES)},
        ),
    )
}


class UnknownWorkloadError(KeyError):
    """An unknown scenario name; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown workload"


def make_workload(
    name: str,
    num_requests: int,
    rate: float | None = None,
    seed: int = 0,
    **options: Any,
) -> Workload:
    """Generate ``num_requests`` requests of scenario ``name`` at ``rate`` req/s (its default
    when None). ``options``: per-scenario knobs, e.g. ``cv`` for bursty, ``shares`` for mixed."""
    scenario = SCENARIOS.get(name)
    if scenario is None:
        raise UnknownWorkloadError(
            f"unknown workload {name!r}; known: {', '.join(sorted(SCENARIOS))}"
        )
    if isinstance(num_requests, bool) or not isinstance(num_requests, (int, np.integer)):
        raise TypeError(f"num_requests must be an integer, got {num_requests!r}")
    if not 1 <= num_requests <= MAX_REQUESTS:
        raise ValueError(f"num_requests must be between 1 and {MAX_REQUESTS:,}, got {num_requests}")
    bad = set(options) - set(scenario.options)
    if bad:
        raise TypeError(
            f"workload {name!r} takes no option(s) {sorted(bad)}; "
            f"it takes {sorted(scenario.options) or 'none'}"
        )
    rate = _check_rate(scenario.default_rate if rate is None else rate)
    rng = np.random.default_rng(seed)
    return _GENERATORS[name](int(num_requests), rate, rng, **options)
