"""The router's HTTP side: an aiohttp application that forwards OpenAI-style requests.

aiohttp because one package gives both halves a proxy needs (a server and a pooled client with
per-phase timeouts) on one event loop, with streaming in both directions chunk by chunk.

What a request goes through: its prompt tokens are estimated from its characters (the ratio
learnt in the background from a backend's tokenize endpoint where one has it, else 4 a token: a
tokenize call per request would put a second backend round trip, queued behind generation on
llama-cpp-python, in front of every decision) and it is hashed into prefix blocks; the policy's
route() picks a backend from the live ClusterView within ``policy_timeout_s`` (else
least-outstanding, counted); the body is forwarded unchanged. A backend that fails before its
first response byte (refused, reset, timed out) is retried on the least-loaded backend not yet
tried; its HTTP error status is passed through as it is. Past the first byte the response is the
client's: a backend that dies mid-stream ends that stream with an SSE error event (``data:
{"error": ...}``), and no other request notices.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from .metrics import RouterMetrics
from .observe import (
    LiveCluster,
    TokenRatio,
    block_hashes,
    estimate_tokens,
    parse_engine_metrics,
)
from .policy_worker import PolicyUnavailable, PolicyWorker

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailers", "transfer-encoding", "upgrade", "content-length", "host"}
# Headers aiohttp's client adds when a request has none: a proxy passes the client's own on and
# adds nothing (an Accept-Encoding would let a backend compress for a client that never asked).
AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent")
TOKENIZE_PROBE_TIMEOUT_S = 2.0  # finding a tokenize endpoint at start
# One sample in flight at a time, waited for patiently: llama-cpp-python serves a tokenize call
# only between generations, and one abandoned by a short timeout would stay queued there.
TOKENIZE_SAMPLE_TIMEOUT_S = 30.0
TOKENIZE_EVERY_S = 0.25  # at most one prompt sampled for the token ratio this often


@dataclass(frozen=True)
class RouterConfig:
    backends: tuple[str, ...]
    policy_timeout_s: float = 0.05
    kv_capacity_tokens: int = 65_536
    tokenize: bool = True  # learn the token ratio from a backend's tokenize endpoint
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0
    engine_metrics_s: float = 1.0  # how often to read each backend's /metrics (0: never)


def prompt_text(path: str, payload: Any) -> str:
    """The text a request prefills, as far as the router can tell without the chat template."""
    if not isinstance(payload, dict):
        return ""
    if path.endswith("chat/completions"):
        parts = []
        for message in payload.get("messages") or []:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts += [p.get("text", "") for p in content if isinstance(p, dict)]
        return "\n".join(str(p) for p in parts)
    prompt = payload.get("prompt", "")
    if isinstance(prompt, list):
        return "\n".join(p for p in prompt if isinstance(p, str))
    return prompt if isinstance(prompt, str) else ""


def _error(status: int, message: str, kind: str = "router_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}},
                             status=status)


class Router:
    def __init__(self, config: RouterConfig, policy: PolicyWorker):
        self.config = config
        self.backends = [b.rstrip("/") for b in config.backends]
        self.policy = policy
        self.cluster = LiveCluster(len(self.backends), config.kv_capacity_tokens)
        self.metrics = RouterMetrics(self.backends)
        self.tokenizer: tuple[str, str] | None = None  # (url, "llama.cpp"|"vllm")
        self.token_ratio = TokenRatio()
        self._token_sample = ""  # the latest prompt, for the background token count
        self.session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task] = []

    # -- lifecycle
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/chat/completions", self.forward)
        app.router.add_post("/v1/completions", self.forward)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/router/status", self.status)
        app.on_startup.append(self._open)
        app.on_cleanup.append(self._close)
        return app

    async def _open(self, _app: web.Application) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout_s,
                                        sock_read=self.config.read_timeout_s)
        self.session = aiohttp.ClientSession(
            timeout=timeout, auto_decompress=False, skip_auto_headers=AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),  # a backend's cookie is its client's alone
            connector=aiohttp.TCPConnector(limit=0, force_close=False))
        loop = asyncio.get_running_loop()
        if self.config.tokenize:
            self.tokenizer = await self._find_tokenizer()
            if self.tokenizer is not None:
                self._tasks.append(loop.create_task(self._learn_token_ratio()))
        if self.config.engine_metrics_s > 0:
            self._tasks.append(loop.create_task(self._scrape_engines()))

    async def _learn_token_ratio(self) -> None:
        """Count the latest prompt's tokens with the backend's tokenizer every
        TOKENIZE_EVERY_S, off every request's path, and learn the characters-per-token ratio."""
        assert self.tokenizer is not None
        while True:
            await asyncio.sleep(TOKENIZE_EVERY_S)
            text, self._token_sample = self._token_sample, ""
            if text:
                counted = await self._tokenize(*self.tokenizer, text,
                                               TOKENIZE_SAMPLE_TIMEOUT_S)
                if counted is not None:
                    self.token_ratio.learn(len(text), counted)

    async def _scrape_engines(self) -> None:
        """Read each backend's own gauges (vLLM's, llama.cpp's) every ``engine_metrics_s``; a
        backend that answers three times without them is not asked again."""
        assert self.session is not None
        misses = [0] * len(self.backends)
        timeout = aiohttp.ClientTimeout(total=min(1.0, self.config.engine_metrics_s))
        while True:
            for index, url in enumerate(self.backends):
                if misses[index] >= 3:
                    continue
                load = self.cluster.loads[index]
                try:
                    async with self.session.get(url + "/metrics", timeout=timeout) as r:
                        gauges = parse_engine_metrics(await r.text()) if r.status == 200 \
                            else None
                except (aiohttp.ClientError, TimeoutError, OSError, UnicodeDecodeError):
                    load.engine = None  # unreachable: no stale report
                    continue
                load.engine = gauges
                misses[index] = 0 if gauges is not None else misses[index] + 1
            await asyncio.sleep(self.config.engine_metrics_s)

    async def _close(self, _app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        if self.session is not None:
            await self.session.close()

    async def _find_tokenizer(self) -> tuple[str, str] | None:
        """The first backend with a tokenize endpoint (llama-cpp-python's or vLLM's)."""
        for url in self.backends:
            for path, kind in (("/extras/tokenize", "llama.cpp"), ("/tokenize", "vllm")):
                if await self._tokenize(url + path, kind, "hello",
                                        TOKENIZE_PROBE_TIMEOUT_S) is not None:
                    return url + path, kind
        return None

    async def _tokenize(self, url: str, kind: str, text: str, timeout_s: float) -> int | None:
        body = {"input": text} if kind == "llama.cpp" else {"prompt": text}
        assert self.session is not None
        try:
            async with self.session.post(
                    url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
                if r.status != 200:
                    return None
                data = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        tokens = data.get("count") if isinstance(data, dict) else None
        if tokens is None and isinstance(data, dict) and isinstance(data.get("tokens"), list):
            tokens = len(data["tokens"])
        return tokens if isinstance(tokens, int) else None

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is not None and text:
            self._token_sample = text
        return estimate_tokens(text, self.token_ratio.chars_per_token)

    # -- handlers
    async def forward(self, request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        body = await request.read()
        try:
            payload = json.loads(body)
        except ValueError:
            return _error(400, "the request body is not JSON", "invalid_request_error")
        text = prompt_text(request.path, payload)
        tokens = self.count_tokens(text)
        hashes = block_hashes(text)
        backend = await self.choose(tokens, hashes)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        tried: set[int] = set()
        while True:
            tried.add(backend)
            self.cluster.sent(backend, tokens, hashes)
            try:
                return await self._relay(request, backend, body, headers, tokens, t0)
            except _BeforeFirstByte as exc:
                self.cluster.done(backend, tokens, started=False)
                self.metrics.responses[(backend, "failed_before_response")] += 1
                if len(tried) >= len(self.backends):
                    return _error(502, f"every backend failed before responding (last: {exc})",
                                  "backend_unavailable")
                self.metrics.retries += 1
                backend = self.cluster.least_outstanding(exclude=tried)

    async def choose(self, tokens: int, hashes: list[int]) -> int:
        t0 = time.perf_counter()
        view = self.cluster.request(tokens, hashes)
        cluster = self.cluster.view(view, hashes)
        try:
            backend, by = await self.policy.decide(view, cluster, self.config.policy_timeout_s), \
                "policy"
        except PolicyUnavailable as exc:
            self.metrics.fallbacks[exc.kind] += 1
            backend, by = self.cluster.least_outstanding(), "fallback"
        self.metrics.decision_seconds.observe(time.perf_counter() - t0)
        self.metrics.decisions[(backend, by)] += 1
        return backend

    async def _relay(self, request: web.Request, backend: int, body: bytes,
                     headers: dict[str, str], tokens: int, t0: float) -> web.StreamResponse:
        """Send to one backend and relay its answer; _BeforeFirstByte when it failed before
        anything reached the client (the caller retries elsewhere). A sized body (Content-Length,
        a plain JSON answer) is relayed whole, in one write; anything else (an SSE stream) chunk
        by chunk."""
        assert self.session is not None
        url = self.backends[backend] + request.path_qs
        try:
            upstream = await self.session.post(url, data=body, headers=headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _BeforeFirstByte(_describe(exc)) from exc
        try:
            try:
                first = await upstream.content.readany()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise _BeforeFirstByte(_describe(exc)) from exc
            if not first and not upstream.content.at_eof():
                raise _BeforeFirstByte("the backend closed the connection")
            self.cluster.first_byte(backend, tokens)
            self.metrics.first_byte_seconds.observe(time.perf_counter() - t0)
            kept = CIMultiDict((k, v) for k, v in upstream.headers.items()
                               if k.lower() not in HOP_BY_HOP)
            if upstream.content_length is not None:
                response, outcome = await self._whole(upstream, first, kept)
            else:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                              headers=kept)
                outcome = await self._stream(request, response, upstream, first)
            self.metrics.responses[(backend, outcome)] += 1
            self.cluster.done(backend, tokens, started=True)
            self.metrics.request_seconds.observe(time.perf_counter() - t0)
            return response
        finally:
            upstream.release()

    @staticmethod
    async def _whole(upstream: aiohttp.ClientResponse, first: bytes, headers: CIMultiDict
                     ) -> tuple[web.Response, str]:
        """The rest of a sized body; a backend that dies before it is all here gets the client
        a 502 saying so, never a truncated body."""
        chunks = [first]
        try:
            while chunk := await upstream.content.readany():
                chunks.append(chunk)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return _error(502, f"the backend failed mid-response: {_describe(exc)}",
                          "backend_error"), "died_mid_response"
        return web.Response(body=b"".join(chunks), status=upstream.status,
                            reason=upstream.reason, headers=headers), \
            f"status_{upstream.status}"

    async def _stream(self, request: web.Request, response: web.StreamResponse,
                      upstream: aiohttp.ClientResponse, first: bytes) -> str:
        """Copy the body chunk by chunk; returns the outcome label."""
        sse = upstream.headers.get("Content-Type", "").startswith("text/event-stream")
        try:
            await response.prepare(request)
            if first:
                await response.write(first)
        except (ConnectionError, RuntimeError):
            return "client_gone"
        try:
            while chunk := await upstream.content.readany():
                await response.write(chunk)
        except (ConnectionError, RuntimeError):
            return "client_gone"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if not sse:
                if request.transport is not None:  # a cut body must not look complete
                    request.transport.close()
                return "died_mid_response"
            event = {"error": {"message": f"the backend failed mid-stream: {_describe(exc)}",
                               "type": "backend_error", "code": 502}}
            try:
                await response.write(b"\n\ndata: " + json.dumps(event).encode() + b"\n\n")
                await response.write_eof()
            except (ConnectionError, RuntimeError):
                pass
            return "died_mid_stream"
        await response.write_eof()
        return f"status_{upstream.status}"

    async def models(self, _request: web.Request) -> web.Response:
        assert self.session is not None
        last = "no backend"
        for url in self.backends:
            try:
                async with self.session.get(url + "/v1/models") as r:
                    return web.Response(body=await r.read(), status=r.status,
                                        content_type=r.content_type)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = _describe(exc)
        return _error(502, f"no backend answered /v1/models (last: {last})",
                      "backend_unavailable")

    async def prometheus(self, _request: web.Request) -> web.Response:
        return web.Response(text=self.metrics.render(self.policy.restarts),
                            content_type="text/plain", charset="utf-8")

    async def status(self, _request: web.Request) -> web.Response:
        loads = [vars(load) | {"blocks": len(load.blocks),
                               "engine": vars(load.engine) if load.engine else None}
                 for load in self.cluster.loads]
        return web.json_response({
            "backends": self.backends, "loads": loads,
            "policy_worker_pid": self.policy.pid(), "policy_restarts": self.policy.restarts,
            "policy_last_error": self.policy.last_error,
            "fallbacks": dict(self.metrics.fallbacks),
            "decisions": {f"{self.backends[i]}|{by}": n
                          for (i, by), n in self.metrics.decisions.items()},
            "tokenizer": self.tokenizer,
            "chars_per_token": round(self.token_ratio.chars_per_token, 3),
            "token_ratio_samples": self.token_ratio.samples,
        })


class _BeforeFirstByte(Exception):
    """The backend failed before the client got anything: safe to retry elsewhere."""


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def serve(router: Router, host: str, port: int,
                ready: asyncio.Future | None = None) -> Sequence[Any]:
    """Run until cancelled; ``ready`` gets the bound (host, port)."""
    # No SO_KEEPALIVE on clients' connections (a syscall per connection, ~7 us of the router's
    # CPU on a trivial request): an idle one is closed after aiohttp's keep-alive timeout
    # (75 s), long before the kernel's first keep-alive probe (2 h), and one that dies
    # mid-stream fails the router's next write.
    runner = web.AppRunner(router.app(), access_log=None, handle_signals=False,
                           tcp_keepalive=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    if ready is not None:
        ready.set_result(bound)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
    return bound
