"""The policy API: the read-only snapshots a policy sees and the plain decisions it returns.

A policy file defines ``partition(replica, params)`` and/or ``route(request, cluster, params)``.
Everything passed in is an immutable tuple of numbers; everything returned is checked here before
the simulator acts on it. An illegal decision is never repaired: it raises ``PolicyError`` naming
the decision and the rule it broke, and the simulation fails with that reason.

When is ``partition`` called? Before every iteration of a replica that has prefill work waiting.
An iteration with nothing waiting runs every decode and needs no decision, which is what lets the
simulator advance over pure-decode stretches in one step.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

# How many waiting requests a ReplicaView lists (oldest first). The counts cover all of them.
# Large enough that long prompts a policy defers do not hide new arrivals behind them; bounded so
# an overloaded replica's decision does not cost time in the length of its whole queue.
MAX_WAITING_VIEW = 256


class WaitingView(NamedTuple):
    """A request on this replica with prefill tokens left to compute."""

    id: int  # request id, as chunks name it
    arrival: float  # seconds
    prompt_tokens: int  # tokens its prefill covers (prompt, plus generated ones if preempted)
    prefilled: int  # tokens already in KV (computed chunks and prefix-cache hits)
    remaining: int  # prompt_tokens - prefilled: the most a chunk for it may take this iteration
    cached: int  # of ``prefilled``, tokens served by the prefix cache (0 until it starts)
    started: bool  # it already holds KV (a chunk ran, or it was preempted and requeued)
    preempted: int  # how many times it was preempted


class ReplicaView(NamedTuple):
    """One replica just before an iteration: what partition() decides on."""

    replica: int  # this replica's index
    now: float  # seconds
    decodes: int  # running requests that decode one token each in this iteration (always run)
    decode_context: int  # sum of their context lengths (tokens of KV they read)
    waiting: tuple[WaitingView, ...]  # oldest first, at most MAX_WAITING_VIEW
    waiting_count: int  # all requests with prefill left (``waiting`` may list fewer)
    waiting_tokens: int  # their prefill tokens left, in total
    kv_free_tokens: int  # KV room left for chunks after this iteration's decodes (evictable
    #                      prefix-cache entries count as free)
    kv_capacity_tokens: int  # the replica's whole KV cache, in tokens
    max_batch_tokens: int  # hard cap on decodes + chunk tokens in one iteration
    last_iteration_s: float  # duration of this replica's previous iteration (0.0 before the first)


class RequestView(NamedTuple):
    """An arriving request, as route() sees it. Output length is unknown to a real router."""

    id: int  # arrival index: 0, 1, 2, ...
    arrival: float  # seconds
    prompt_tokens: int  # prompt length
    prefix_blocks: int  # how many prefix-block ids it carries (0 when the workload has none)


class ReplicaLoad(NamedTuple):
    """One replica's load at the moment a request arrives."""

    replica: int  # its index
    running: int  # requests in decode
    waiting: int  # requests with prefill left
    waiting_tokens: int  # prefill tokens left on it
    outstanding: int  # running + waiting
    kv_free_tokens: int  # free KV-cache room, tokens
    kv_capacity_tokens: int  # whole KV cache, tokens
    prefix_hit_tokens: int  # tokens of this request's prompt already in this replica's prefix cache


class ClusterView(NamedTuple):
    """The cluster as route() sees it."""

    now: float  # seconds
    replicas: tuple[ReplicaLoad, ...]  # one per replica, in index order


class Partition(NamedTuple):
    """What one iteration runs: all decodes, plus the listed prefill chunks.

    budget: the iteration's token budget. Decodes count against it first (they run even when the
        budget is smaller); chunk tokens must fit in what is left (``budget - decodes``) and in
        ``max_batch_tokens``.
    chunks: ``(request id, tokens)`` pairs for requests in ``waiting``, each at most ``remaining``
        and together at most ``kv_free_tokens``.
    """

    budget: int
    chunks: tuple[tuple[int, int], ...] = ()


class PolicyError(Exception):
    """An illegal decision, or a policy function that raised. ``str()`` is the full reason,
    cut to ``MAX_RULE_CHARS`` (a policy's exception message can be any size)."""

    def __init__(self, decision: str, rule: str):
        if len(rule) > MAX_RULE_CHARS:
            rule = rule[: MAX_RULE_CHARS - 3] + "..."
        self.decision = decision
        self.rule = rule
        super().__init__(f"{decision}: {rule}")


MAX_RULE_CHARS = 1000
# Every integer in a decision must fit in 64 bits: nothing real is larger, and a larger one can
# neither be logged (Python refuses to print ints over 4,300 digits) nor named in a short reason.
INT_LIMIT = 2**63
MAX_CHUNKS = 100_000  # chunks in one partition; a list of more is refused before it is read


def show_int(value: int) -> str:
    """An integer as a reason may quote it: itself when short, else its number of digits."""
    if -(10**18) < value < 10**18:
        return str(value)
    magnitude = abs(value)
    bits = magnitude.bit_length()
    if bits > 1_000_000:
        return f"(a number of about {int(bits * 0.30103):,} digits)"
    digits = int((bits - 1) * 0.30102999566398120) + 1  # a lower bound, off by at most one
    while magnitude >= 10**digits:
        digits += 1
    return f"({'minus ' if value < 0 else ''}a {digits}-digit number)"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_int(value: Any, what: str, decision: str) -> int:
    """Accept ints and integral finite floats or numpy scalars; refuse bools, NaN, inf, others."""
    if _is_int(value):
        return int(value)
    if isinstance(value, bool) or not hasattr(value, "__index__") and not isinstance(value, float):
        raise PolicyError(decision, f"{what} must be an integer, got {type(value).__name__}")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise PolicyError(decision, f"{what} must be a whole number, got {value!r}")
        return int(value)
    try:
        return int(value.__index__())
    except Exception as exc:  # a numpy scalar that is not integral, or something odd
        raise PolicyError(decision, f"{what} must be an integer, got "
                                    f"{type(value).__name__}") from exc


def _as_int64(value: Any, what: str, decision: str) -> int:
    number = _as_int(value, what, decision)
    if not -INT_LIMIT < number < INT_LIMIT:
        raise PolicyError(decision, f"{what} {show_int(number)} does not fit in 64 bits")
    return number


def _well_formed(raw: Any) -> tuple[int, Any] | None:
    """``coerce_partition``'s answer for the common, well-formed shapes, checked fast: a tuple of
    int pairs (returned as is: nothing in it can change), or a list of int pairs, as a recorded
    log holds them or a policy builds them (copied, so that changing the list later cannot
    change a decision already checked). None for anything else, which the full checks judge."""
    if not (isinstance(raw, tuple) or type(raw) is list) or len(raw) != 2:
        return None
    budget, chunks = raw
    low, high = -INT_LIMIT, INT_LIMIT
    if type(budget) is not int or not 0 <= budget < high:
        return None
    if type(chunks) is tuple:
        for c in chunks:
            if type(c) is not tuple or len(c) != 2:
                return None
            rid, tokens = c
            if type(rid) is not int or type(tokens) is not int or not (
                low < rid < high and low < tokens < high
            ):
                return None
        return budget, chunks
    if type(chunks) is not list or len(chunks) > MAX_CHUNKS:
        return None
    pairs = []
    for c in chunks:
        if type(c) is not list and type(c) is not tuple or len(c) != 2:
            return None
        rid, tokens = c
        if type(rid) is not int or type(tokens) is not int or not (
            low < rid < high and low < tokens < high
        ):
            return None
        pairs.append((rid, tokens))
    return budget, pairs


def coerce_partition(raw: Any, decision: str) -> tuple[int, list[tuple[int, int]]]:
    """Turn a partition() return value into (budget, [(id, tokens), ...]); shape checks only.

    Accepts a Partition or any 2-sequence ``(budget, chunks)``. The simulator checks the
    rules that need its state (ids, remaining, budget, KV) itself.
    """
    fast = _well_formed(raw)
    if fast is not None:
        return fast
    if not isinstance(raw, (tuple, list)) or len(raw) != 2:
        raise PolicyError(
            decision, f"must return Partition(budget, chunks), got {type(raw).__name__}"
        )
    budget = _as_int64(raw[0], "budget", decision)
    if budget < 0:
        raise PolicyError(decision, f"budget must be >= 0, got {budget}")
    chunks_raw = raw[1]
    if not isinstance(chunks_raw, (tuple, list)):
        raise PolicyError(
            decision,
            f"chunks must be a tuple of (request id, tokens), got {type(chunks_raw).__name__}",
        )
    if len(chunks_raw) > MAX_CHUNKS:
        raise PolicyError(decision, f"too many chunks ({len(chunks_raw):,})")
    chunks: list[tuple[int, int]] = []
    for pos, item in enumerate(chunks_raw):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise PolicyError(decision, f"chunks[{pos}] must be a (request id, tokens) pair")
        rid = _as_int64(item[0], f"chunks[{pos}] request id", decision)
        tokens = _as_int64(item[1], f"chunks[{pos}] tokens", decision)
        chunks.append((rid, tokens))
    return budget, chunks


def coerce_route(raw: Any, num_replicas: int, decision: str) -> int:
    """Check a route() return value: an existing replica index."""
    if type(raw) is int and 0 <= raw < num_replicas:  # the common case, checked fast
        return raw
    replica = _as_int(raw, "replica", decision)
    if not 0 <= replica < num_replicas:
        raise PolicyError(
            decision,
            f"replica {show_int(replica)} does not exist (the cluster has 0..{num_replicas - 1})",
        )
    return replica
