"""What the router observes live, as the ClusterView the simulator gives a policy.

Per backend: requests in flight, split into *waiting* (sent, no response byte yet: still in
prefill as far as the router can tell) and *running* (streaming their output); prompt tokens
waiting; and the prefix-cache hits this request would get, estimated from chained hashes of
fixed-size blocks of the prompts already sent to that backend (as vLLM's and SGLang's caches key
them). Where a backend exposes vLLM's or llama.cpp's gauges at /metrics, its own counts of
running and waiting requests (every client's) raise ours, and its KV-cache use bounds the free
room. ``kv_capacity_tokens`` is a setting; ``kv_free_tokens`` is that minus the prompt tokens in
flight there (or the engine's reported use, when lower).
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from autotuner.sim.api import ClusterView, ReplicaLoad, RequestView

CHARS_PER_TOKEN = 4  # the estimate when no backend tokenizes: English text, BPE tokenizers
PREFIX_BLOCK_TOKENS = 16  # the block the prefix estimate hashes (vLLM's default block size)
MAX_REMEMBERED_BLOCKS = 50_000  # per backend, least recently sent dropped first


def estimate_tokens(text: str, chars_per_token: float = CHARS_PER_TOKEN) -> int:
    return max(1, math.ceil(len(text) / chars_per_token))


class TokenRatio:
    """Characters per token, learnt from what a backend's tokenizer counted for prompts the
    router sent (sampled in the background): a request is never held up by a tokenize call,
    which on llama-cpp-python waits behind the generation in progress. The estimate starts at
    CHARS_PER_TOKEN; each sample moves it by its weight in characters against the recent
    ``memory_chars``, so one odd prompt cannot swing it."""

    def __init__(self, memory_chars: int = 20_000):
        self.chars = float(CHARS_PER_TOKEN)  # a prior of one token's worth
        self.tokens = 1.0
        self.memory_chars = memory_chars
        self.samples = 0

    @property
    def chars_per_token(self) -> float:
        return min(16.0, max(1.0, self.chars / self.tokens))

    def learn(self, chars: int, tokens: int) -> None:
        if chars <= 0 or tokens <= 0:
            return
        keep = min(1.0, self.memory_chars / max(1.0, self.chars + chars))
        self.chars, self.tokens = self.chars * keep + chars, self.tokens * keep + tokens
        self.samples += 1


BLOCK_CHARS = PREFIX_BLOCK_TOKENS * CHARS_PER_TOKEN


def block_hashes(text: str, block_chars: int = BLOCK_CHARS) -> list[int]:
    """Chained hashes of the prompt's full blocks: block k's hash covers blocks 0..k, so two
    prompts share one exactly when they share that whole prefix (up to a 64-bit collision).
    Python's own keyed string hash, not a digest: on every request's path, and a 32k-character
    prompt took 0.5-0.84 ms in blake2b against 0.14-0.18 ms so; its per-process random key
    (unless PYTHONHASHSEED fixes one) keeps clients from crafting collisions, and the blocks
    are remembered only by this process."""
    hashes: list[int] = []
    chain = 0
    for start in range(0, len(text) - block_chars + 1, block_chars):
        chain = hash((chain, text[start:start + block_chars]))
        hashes.append(chain)
    return hashes


# Gauges an engine's own /metrics gives, by engine: (running, waiting, KV cache use 0..1).
ENGINE_GAUGES = {
    "vllm": ("vllm:num_requests_running", "vllm:num_requests_waiting",
             ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")),
    "llama.cpp": ("llamacpp:requests_processing", "llamacpp:requests_deferred",
                  ("llamacpp:kv_cache_usage_ratio",)),
}


SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}\n]*\})?[ \t]+(\S+)", re.M)


@dataclass(frozen=True)
class EngineGauges:
    """What a backend says about itself: it counts every client's requests, not only ours."""

    running: int
    waiting: int
    kv_usage: float | None  # share of its KV cache in use, when it says


def parse_engine_metrics(text: str) -> EngineGauges | None:
    """vLLM's or llama.cpp's gauges from Prometheus text (summed over label sets); None when
    neither engine's are there. Only the lines of those gauges are read, found by substring
    search: a vLLM page is tens of KB of histograms, read on the event loop every second (67 KB:
    0.9-1.8 ms line by line, which every request arriving meanwhile waited for; 40 us so)."""
    page = "\n" + text
    for running, waiting, usage in ENGINE_GAUGES.values():
        busy, queued = _gauge(page, running), _gauge(page, waiting)
        if busy is not None and queued is not None:
            kv = next((v for v in (_gauge(page, u) for u in usage) if v is not None), None)
            return EngineGauges(int(busy), int(queued), kv)
    return None


def _gauge(page: str, name: str) -> float | None:
    """The sum of ``name``'s samples in ``page`` (Prometheus text after a newline), None when it
    has none."""
    total, found = 0.0, False
    at = page.find("\n" + name)
    while at >= 0:
        match = SAMPLE_LINE.match(page, at + 1)
        if match is not None and match[1] == name:
            try:
                total, found = total + float(match[2]), True
            except ValueError:
                pass
        at = page.find("\n" + name, at + 1)
    return total if found else None


@dataclass
class BackendLoad:
    """One backend's live counters (mutated only on the event loop)."""

    running: int = 0
    waiting: int = 0
    waiting_tokens: int = 0
    tokens_in_flight: int = 0
    blocks: OrderedDict = field(default_factory=OrderedDict)
    engine: EngineGauges | None = None  # the backend's own last report, when it has /metrics

    def hit_blocks(self, hashes: list[int]) -> int:
        """How many of the prompt's leading blocks this backend holds: a binary search, as what
        it holds is prefix-closed (see ``remember``)."""
        held, low, high = self.blocks, 0, len(hashes)  # hashes[:low] held, hashes[high:] not
        while low < high:
            middle = (low + high) // 2
            if hashes[middle] in held:
                low = middle + 1
            else:
                high = middle
        return low

    def remember(self, hashes: list[int]) -> None:
        """Mark the prompt's blocks most recently used, its last block first, so that a prefix is
        always more recent than any block extending it: eviction (least recent first) drops a
        prompt's tail before its head, as vLLM's prefix cache frees blocks, and what is held
        stays prefix-closed."""
        for digest in reversed(hashes):
            self.blocks[digest] = None
            self.blocks.move_to_end(digest)
        for _ in range(len(self.blocks) - MAX_REMEMBERED_BLOCKS):
            self.blocks.popitem(last=False)


class LiveCluster:
    """The router's view of its backends; ``view()`` is what route() is given."""

    def __init__(self, backends: int, kv_capacity_tokens: int):
        self.loads = [BackendLoad() for _ in range(backends)]
        self.kv_capacity_tokens = kv_capacity_tokens
        self.started = time.monotonic()
        self.arrivals = 0

    def now(self) -> float:
        return time.monotonic() - self.started

    def request(self, prompt_tokens: int, hashes: list[int]) -> RequestView:
        view = RequestView(self.arrivals, self.now(), prompt_tokens, len(hashes))
        self.arrivals += 1
        return view

    def view(self, request: RequestView, hashes: list[int]) -> ClusterView:
        block_tokens = max(1, request.prompt_tokens // max(1, len(hashes))) if hashes else 0
        replicas = []
        for index, load in enumerate(self.loads):
            hit = min(request.prompt_tokens, load.hit_blocks(hashes) * block_tokens)
            running, waiting = load.running, load.waiting
            kv_free = max(0, self.kv_capacity_tokens - load.tokens_in_flight)
            if load.engine is not None:  # it also serves other clients: the larger count wins
                running, waiting = max(running, load.engine.running), \
                    max(waiting, load.engine.waiting)
                if load.engine.kv_usage is not None:
                    used = min(1.0, max(0.0, load.engine.kv_usage))
                    kv_free = min(kv_free, int(self.kv_capacity_tokens * (1.0 - used)))
            replicas.append(ReplicaLoad(index, running, waiting, load.waiting_tokens,
                                        running + waiting, kv_free, self.kv_capacity_tokens,
                                        hit))
        return ClusterView(request.arrival, tuple(replicas))

    def least_outstanding(self, exclude: set[int] = frozenset()) -> int:  # type: ignore[assignment]
        """The fallback: fewest in flight, then fewest prompt tokens waiting, then lowest index."""
        candidates = [i for i in range(len(self.loads)) if i not in exclude] or \
            list(range(len(self.loads)))
        return min(candidates, key=lambda i: (self.loads[i].running + self.loads[i].waiting,
                                              self.loads[i].waiting_tokens, i))

    def sent(self, backend: int, prompt_tokens: int, hashes: list[int]) -> None:
        load = self.loads[backend]
        load.waiting += 1
        load.waiting_tokens += prompt_tokens
        load.tokens_in_flight += prompt_tokens
        load.remember(hashes)

    def first_byte(self, backend: int, prompt_tokens: int) -> None:
        load = self.loads[backend]
        load.waiting -= 1
        load.waiting_tokens -= prompt_tokens
        load.running += 1

    def done(self, backend: int, prompt_tokens: int, started: bool) -> None:
        load = self.loads[backend]
        if started:
            load.running -= 1
        else:
            load.waiting -= 1
            load.waiting_tokens -= prompt_tokens
        load.tokens_in_flight -= prompt_tokens
