"""A small open-loop client for measuring a router or a server: requests sent at fixed times
(a seeded Poisson process) whatever the answers do, time to first token and total latency per
request, percentiles. Plain ``http.client`` on threads, so that it shares nothing with the
router's own stack."""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shot:
    at_s: float  # when to send it, from the start
    path: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    status: int  # 0: no HTTP answer at all
    ttft_s: float  # first content token for a stream, first body byte otherwise
    total_s: float
    complete: bool  # a stream ended with [DONE]; a plain answer was read whole
    error: str = ""
    tokens: int = 0  # a stream's events that carried content (one token each on llama.cpp)


def chat_workload(n: int, rate: float, seed: int, max_tokens: int = 8,
                  shared_prefix_share: float = 0.5) -> list[Shot]:
    """Streaming chat requests: some repeat a long shared system prompt (prefix-cache food),
    the rest are short and distinct."""
    rng = random.Random(seed)
    system = ("You are a terse assistant. Answer in one short sentence. " * 12).strip()
    shots, t = [], 0.0
    for i in range(n):
        t += rng.expovariate(rate)
        question = f"Question {i}: what is {rng.randint(2, 99)} plus {rng.randint(2, 99)}?"
        messages = [{"role": "user", "content": question}]
        if rng.random() < shared_prefix_share:
            messages.insert(0, {"role": "system", "content": system})
        shots.append(Shot(t, "/v1/chat/completions", {
            "messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "seed": i,
            "stream": True}))
    return shots


def send(url: str, shot: Shot, timeout: float) -> Outcome:
    host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        conn.request("POST", shot.path, json.dumps(shot.body),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        stream = response.getheader("Content-Type", "").startswith("text/event-stream")
        ttft = None
        done = False
        tokens = 0
        if not stream:
            data = response.read()
            ttft = time.perf_counter() - t0
            return Outcome(response.status, ttft, ttft, bool(data))
        for line in response:
            if line.startswith(b"data: ") and b'"content"' in line:
                tokens += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
            if line.startswith(b"data: [DONE]"):
                done = True
            if b'"error"' in line and line.startswith(b"data: "):
                return Outcome(response.status, ttft or 0.0, time.perf_counter() - t0, False,
                               line.decode(errors="replace")[:200], tokens)
        total = time.perf_counter() - t0
        return Outcome(response.status, ttft if ttft is not None else total, total, done,
                       tokens=tokens)
    except (OSError, http.client.HTTPException) as exc:
        return Outcome(0, 0.0, time.perf_counter() - t0, False, f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def replay(url: str, shots: list[Shot], timeout: float = 120.0, workers: int = 64
           ) -> list[Outcome]:
    """Send every shot at its time (open loop) and wait for all answers."""
    start = time.perf_counter()
    results: list[Outcome | None] = [None] * len(shots)
    lock = threading.Lock()

    def one(index: int) -> None:
        delay = start + shots[index].at_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        outcome = send(url, shots[index], timeout)
        with lock:
            results[index] = outcome

    with ThreadPoolExecutor(min(workers, len(shots)) or 1) as pool:
        list(pool.map(one, range(len(shots))))
    return [r for r in results if r is not None]


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]
