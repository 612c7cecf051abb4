"""Talking to a live OpenAI-compatible server: streamed completions, timed token by token.

``autotuner profile`` and ``autotuner observe`` both measure through here, so a token is counted
and timed the same way in both. Only the standard library: a measurement client must not depend
on the engine it measures.

What a stream yields: the send time, the arrival time of every streamed token, the finish reason.
A chunk counts as a token when it carries text, or when it carries nothing and no finish reason
(a token whose bytes complete a character later); a closing chunk with only a finish reason (as
llama-cpp-python sends) is not a token. When the server reports usage, its completion count wins.

Prompts are built from a fixed list of common English words, each one token (with its leading
space) in the BPE vocabularies of the usual small models; ``autotuner profile`` measures the
actual tokens per word on the engine and stores it, so a prompt of N tokens is N tokens there.
Every prompt starts with words drawn afresh, so an engine's prefix cache cannot serve it from a
previous request (a cache hit would make prefill look free).
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

# Common words that are single tokens (with a leading space) in GPT-2/Llama-style vocabularies.
WORDS: tuple[str, ...] = tuple(
    """time year people way day man thing woman life child world school state family student
    group country problem hand part place case week company system program question work
    government number night point home water room mother area money story fact month lot right
    study book eye job word business issue side kind head house service friend father power hour
    game line end member law car city community name president team minute idea kid body
    information back parent face others level office door health person art war history party
    result change morning reason research girl guy moment air teacher force education food music
    river table window paper letter color field street light voice price market plan rule land
    road fire tree wall dog cat bird fish horse garden island forest ocean train plane""".split()
)


class EndpointError(Exception):
    """An endpoint that cannot be used (bad URL, unreachable, not OpenAI-compatible)."""


@dataclass(frozen=True)
class Endpoint:
    """A server's base URL, split for http.client."""

    url: str  # as given, for messages
    scheme: str
    host: str
    port: int
    prefix: str  # path before /v1, usually ""

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=timeout)


def parse_endpoint(url: str) -> Endpoint:
    """``http://host:port`` or ``http://host:port/v1``; EndpointError says what is wrong."""
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EndpointError(f"endpoint {url!r}: expected a URL like http://127.0.0.1:8000")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise EndpointError(f"endpoint {url!r}: the port is not a number in 1-65535") from None
    if parts.query or parts.fragment:
        raise EndpointError(f"endpoint {url!r}: no query or fragment, just the server's base URL")
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return Endpoint(text, parts.scheme, parts.hostname, port, path)


def _request_json(ep: Endpoint, method: str, path: str, body: dict | None, timeout: float) -> dict:
    conn = ep.connection(timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload else {}
        conn.request(method, ep.prefix + path, body=payload, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise EndpointError(f"endpoint {ep.url}: cannot reach it ({exc})") from None
    finally:
        conn.close()
    if resp.status != 200:
        text = raw[:200].decode("utf-8", "replace").strip()
        raise EndpointError(f"endpoint {ep.url}: {method} {path} answered {resp.status}: {text}")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise EndpointError(f"endpoint {ep.url}: {path} did not answer JSON") from None
    if not isinstance(data, dict):
        raise EndpointError(f"endpoint {ep.url}: {path} did not answer a JSON object")
    return data


def server_model(ep: Endpoint, timeout: float = 10.0) -> tuple[str, int | None]:
    """The first model the server lists, and its context length when it says (vLLM's
    ``max_model_len``); EndpointError when there is no OpenAI-compatible /v1/models."""
    data = _request_json(ep, "GET", "/v1/models", None, timeout)
    models = data.get("data")
    if not isinstance(models, list) or not models or not isinstance(models[0], dict):
        raise EndpointError(f"endpoint {ep.url}: /v1/models lists no model")
    first = models[0]
    name = first.get("id")
    if not isinstance(name, str) or not name:
        raise EndpointError(f"endpoint {ep.url}: /v1/models gives no model id")
    ctx = first.get("max_model_len")
    return name, ctx if isinstance(ctx, int) and ctx > 0 else None


def prompt_tokens(ep: Endpoint, model: str, prompt: str, timeout: float) -> int | None:
    """Tokens the server counts in ``prompt`` (its usage report), or None if it gives none."""
    body = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0}
    data = _request_json(ep, "POST", "/v1/completions", body, timeout)
    usage = data.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
        return usage["prompt_tokens"]
    return None


def make_prompt(words: int, rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(1, words)))


@dataclass(frozen=True)
class StreamResult:
    """One streamed completion, times in ``time.perf_counter`` seconds."""

    sent: float
    token_times: tuple[float, ...]
    finish_reason: str | None
    error: str | None = None
    completion_tokens: int | None = None  # the server's usage report, when it sends one

    @property
    def tokens(self) -> int:
        return self.completion_tokens or len(self.token_times)

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.sent if self.token_times else float("nan")

    @property
    def e2e(self) -> float:
        return self.token_times[-1] - self.sent if self.token_times else float("nan")

    @property
    def gaps(self) -> tuple[float, ...]:
        t = self.token_times
        return tuple(b - a for a, b in zip(t, t[1:], strict=False))


def _is_token(chunk: dict) -> bool:
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return False
    choice = choices[0]
    text = choice.get("text")
    if text is None:  # a chat endpoint's delta
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else None
    return bool(text) or choice.get("finish_reason") is None


def stream_completion(
    ep: Endpoint,
    model: str,
    prompt: str,
    max_tokens: int,
    *,
    timeout: float = 120.0,
    eos_token_ids: Sequence[int] = (),
    sent_at: float | None = None,
) -> StreamResult:
    """Send one streamed completion and time every token. Never raises for the server's
    failures: they come back as ``error`` (a run of many requests records them all)."""
    body: dict = {
        "model": model,
        "prompt": prompt,
        "max_tokens": int(max_tokens),
        "stream": True,
        "temperature": 0,
        # Generate the requested length: vLLM and llama.cpp honour ignore_eos; a bias on the
        # end-of-sequence ids covers servers that do not (llama-cpp-python).
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }
    if eos_token_ids:
        body["logit_bias"] = {str(i): -100 for i in eos_token_ids}
    payload = json.dumps(body).encode()
    times: list[float] = []
    finish: str | None = None
    usage_tokens: int | None = None
    conn = ep.connection(timeout)
    sent = time.perf_counter() if sent_at is None else sent_at
    try:
        conn.request(
            "POST",
            ep.prefix + "/v1/completions",
            body=payload,
            headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
        )
        resp = conn.getresponse()
        if resp.status != 200:
            text = resp.read()[:200].decode("utf-8", "replace").strip()
            return StreamResult(sent, (), None, f"HTTP {resp.status}: {text}")
        while True:
            line = resp.readline()
            if not line:
                break
            now = time.perf_counter()
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            try:
                chunk = json.loads(data)
            except (UnicodeDecodeError, json.JSONDecodeError):
                return StreamResult(sent, tuple(times), finish, "a stream chunk is not JSON")
            if not isinstance(chunk, dict):
                continue
            usage = chunk.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                usage_tokens = usage["completion_tokens"]
            if _is_token(chunk):
                times.append(now)
            choices = chunk.get("choices")
            if isinstance(choices, list) and choices and isinstance(choices[0], dict):
                finish = choices[0].get("finish_reason") or finish
    except (OSError, http.client.HTTPException) as exc:
        return StreamResult(sent, tuple(times), finish, f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()
    if not times:
        return StreamResult(sent, (), finish, "the stream carried no token")
    return StreamResult(sent, tuple(times), finish, None, usage_tokens)


@dataclass(frozen=True)
class PlannedRequest:
    """One request of a replay: when to send it (seconds after the start), where, what."""

    at: float
    endpoint: int
    prompt: str
    max_tokens: int


def replay(
    endpoints: Sequence[Endpoint],
    model: str,
    plan: Sequence[PlannedRequest],
    *,
    timeout: float = 120.0,
    eos_token_ids: Sequence[int] = (),
) -> tuple[float, list[StreamResult]]:
    """Send every planned request at its time, each on its own thread; wait for all. Returns
    the start time and the results in plan order."""
    results: list[StreamResult | None] = [None] * len(plan)

    def send(k: int, req: PlannedRequest) -> None:
        results[k] = stream_completion(
            endpoints[req.endpoint],
            model,
            req.prompt,
            req.max_tokens,
            timeout=timeout,
            eos_token_ids=eos_token_ids,
        )

    threads = []
    start = time.perf_counter()
    for k, req in enumerate(plan):
        delay = start + req.at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t = threading.Thread(target=send, args=(k, req), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(timeout + 5.0)
    out = [
        r if r is not None else StreamResult(start + plan[k].at, (), None, "no answer in time")
        for k, r in enumerate(results)
    ]
    return start, out
