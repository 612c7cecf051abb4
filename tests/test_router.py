"""The live router (autotuner router) against local fake OpenAI servers on 127.0.0.1, and, where
llama-cpp-python and the SmolLM2 model are installed, against two real llama.cpp servers."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="the router's extra (aiohttp) is not installed")
from aiohttp import web  # noqa: E402

from autotuner.isolation import backend_status  # noqa: E402
from autotuner.router.proxy import RouterConfig  # noqa: E402
from autotuner.router.runner import PolicyRefused, RouterThread, build_router  # noqa: E402

SANDBOX = next((name for name in ("bwrap", "process") if backend_status(name)[0]), None)
pytestmark = pytest.mark.skipif(SANDBOX is None, reason="no bwrap or process sandbox here")

ALWAYS_LAST = '''"""Every request to the last backend."""

TUNABLES = {}


def route(request, cluster, params):
    return len(cluster.replicas) - 1
'''
RAISES = '''"""A policy whose route() always raises."""

TUNABLES = {}


def route(request, cluster, params):
    raise RuntimeError("no decision")
'''
SLOW = '''"""A policy whose route() takes far longer than the router waits (~0.3 s of CPU)."""

TUNABLES = {}


def route(request, cluster, params):
    return sum(range(10_000_000)) % len(cluster.replicas)
'''
ENDLESS = '''"""A policy whose route() never returns."""

TUNABLES = {}


def route(request, cluster, params):
    while True:
        pass
'''
LEAST = str(Path(__file__).resolve().parents[1] / "baselines" / "least_outstanding.py")


# -- fake backends -------------------------------------------------------------------------------
class FakeBackend:
    """A tiny OpenAI-style server on its own thread. The request body steers it: ``stream``,
    ``chunks``, ``die_after`` (abort the connection after that many chunks), ``status``."""

    def __init__(self, name: str):
        self.name = name
        self.requests = 0
        self.loop = asyncio.new_event_loop()
        bound: Future = Future()
        app = web.Application()
        app.router.add_post("/v1/completions", self.complete)
        app.router.add_post("/v1/chat/completions", self.complete)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/metrics", self.engine_metrics)
        app.router.add_post("/extras/tokenize", self.tokenize)
        self.metrics_text: str | None = None  # what /metrics says; None: 404
        self.chars_per_token: float | None = None  # its tokenizer's ratio; None: 404
        self.tokenize_calls = 0

        async def start() -> None:
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            bound.set_result(self.runner.addresses[0][1])

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            self.loop.run_forever()
            self.loop.run_until_complete(self.runner.cleanup())

        self.thread = threading.Thread(target=main, daemon=True)
        self.thread.start()
        self.port = bound.result(10)
        self.url = f"http://127.0.0.1:{self.port}"

    async def models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.name}]})

    async def engine_metrics(self, _request: web.Request) -> web.Response:
        if self.metrics_text is None:
            return web.Response(status=404)
        return web.Response(text=self.metrics_text)

    async def tokenize(self, request: web.Request) -> web.Response:
        """llama-cpp-python's /extras/tokenize, at a fixed characters-per-token ratio."""
        if self.chars_per_token is None:
            return web.Response(status=404)
        self.tokenize_calls += 1
        text = (await request.json())["input"]
        return web.json_response({"tokens": [0] * round(len(text) / self.chars_per_token)})

    async def complete(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.json()
        if "status" in body:
            return web.json_response({"error": {"message": "busy", "backend": self.name}},
                                     status=body["status"])
        if body.get("echo_headers"):  # what reached it, and a cookie for whoever asked
            response = web.json_response({"headers": dict(request.headers)})
            response.set_cookie("session", f"{self.name}-{self.requests}")
            return response
        chunks = int(body.get("chunks", 5))
        if not body.get("stream"):
            if "die_after" in body:  # a sized body cut short
                response = web.StreamResponse(headers={"Content-Type": "application/json",
                                                       "Content-Length": "1000"})
                await response.prepare(request)
                await response.write(b'{"backend": "' + self.name.encode())
                await asyncio.sleep(0.01)
                request.transport.abort()
                return response
            return web.json_response({"backend": self.name, "text": "x" * chunks})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(chunks):
            if body.get("die_after") == i:
                request.transport.abort()
                return response
            await response.write(f'data: {{"i": {i}, "text": "tok{i}"}}\n\n'.encode())
            await asyncio.sleep(0.005)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def backends(request):
    made: list[FakeBackend] = []

    def make(n: int) -> list[FakeBackend]:
        made.extend(FakeBackend(f"fake{i}") for i in range(n))
        return made

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def router(tmp_path):
    started: list[RouterThread] = []

    def make(policy: str, urls: list[str], **config) -> RouterThread:
        path = policy if policy.endswith(".py") and os.path.exists(policy) else None
        if path is None:
            path = tmp_path / "policy.py"
            path.write_text(policy)
        built = build_router(path, RouterConfig(tuple(urls), **config), sandbox=SANDBOX)
        thread = RouterThread(built)
        started.append(thread)
        return thread

    yield make
    for thread in started:
        thread.close()


def post(url: str, path: str, body: dict, timeout: float = 30) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        try:
            data = response.read()
        except http.client.IncompleteRead as exc:
            data = exc.partial
        return response.status, data
    finally:
        conn.close()


def status(thread: RouterThread) -> dict:
    return json.loads(post_get(thread.url, "/router/status"))


def post_get(url: str, path: str) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


# -- fake-backend tests --------------------------------------------------------------------------
def test_routing_follows_the_policy(backends, router):
    fakes = backends(3)
    thread = router(ALWAYS_LAST, [f.url for f in fakes])
    for _ in range(6):
        code, body = post(thread.url, "/v1/completions", {"prompt": "hello"})
        assert code == 200 and json.loads(body)["backend"] == "fake2"
    assert [f.requests for f in fakes] == [0, 0, 6]
    metrics = post_get(thread.url, "/metrics").decode()
    assert f'autotuner_router_decisions_total{{backend="{fakes[2].url}",by="policy"}} 6' in metrics


def test_streaming_is_passed_through_byte_for_byte(backends, router):
    fakes = backends(2)
    thread = router(ALWAYS_LAST, [f.url for f in fakes])
    request = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "chunks": 12}
    direct = post(fakes[1].url, "/v1/chat/completions", request)
    routed = post(thread.url, "/v1/chat/completions", request)
    assert routed == direct
    assert routed[1].endswith(b"data: [DONE]\n\n") and routed[1].count(b"data: ") == 13


def test_a_backend_error_status_is_passed_through(backends, router):
    fakes = backends(2)
    thread = router(ALWAYS_LAST, [f.url for f in fakes])
    code, body = post(thread.url, "/v1/completions", {"prompt": "x", "status": 429})
    assert code == 429 and json.loads(body)["error"]["backend"] == "fake1"
    assert fakes[0].requests == 0  # an answer, however bad, is not retried


def test_models_come_from_a_backend(backends, router):
    fakes = backends(2)
    thread = router(ALWAYS_LAST, [f.url for f in fakes])
    assert json.loads(post_get(thread.url, "/v1/models"))["data"][0]["id"] == "fake0"


def test_the_router_adds_no_headers_and_keeps_no_cookies(backends, router):
    """A transparent proxy: the backend gets the client's headers, none that aiohttp's client
    would add (an Accept-Encoding would let a backend compress for a client that never asked),
    and a cookie one client was given never travels with another client's request."""
    fakes = backends(1)
    host = fakes[0].url.replace("127.0.0.1", "localhost")  # cookies from IP hosts are refused
    thread = router(LEAST, [host])
    seen = []
    for _ in range(2):
        conn = http.client.HTTPConnection("127.0.0.1", int(thread.url.rsplit(":", 1)[1]),
                                          timeout=30)
        conn.putrequest("POST", "/v1/completions", skip_accept_encoding=True)
        body = json.dumps({"echo_headers": True}).encode()
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        assert response.status == 200 and "session=" in response.getheader("Set-Cookie", "")
        seen.append({k.lower() for k in json.loads(response.read())["headers"]})
        conn.close()
    for headers in seen:
        assert not headers & {"accept-encoding", "accept", "user-agent", "cookie"}, headers

def test_a_dead_backend_is_retried_elsewhere(backends, router):
    fakes = backends(2)
    with socket.socket() as dead:  # bound, never listening: every connection is refused
        dead.bind(("127.0.0.1", 0))
        thread = router(ALWAYS_LAST, [fakes[0].url, f"http://127.0.0.1:{dead.getsockname()[1]}"])
        results = [post(thread.url, "/v1/completions", {"prompt": "p"}) for _ in range(5)]
    assert all(code == 200 and json.loads(body)["backend"] == "fake0" for code, body in results)
    assert "autotuner_router_retries_total 5" in post_get(thread.url, "/metrics").decode()


def test_a_backend_dying_mid_stream_fails_only_that_request(backends, router):
    fakes = backends(2)
    thread = router(LEAST, [f.url for f in fakes])
    bodies = [{"prompt": f"p{i}", "stream": True, "chunks": 20} for i in range(7)]
    bodies.insert(3, {"prompt": "doomed", "stream": True, "chunks": 20, "die_after": 4})
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda b: post(thread.url, "/v1/completions", b), bodies))
    doomed = results.pop(3)
    assert doomed[0] == 200
    events = [e for e in doomed[1].split(b"\n\n") if e.strip()]
    assert [json.loads(e[6:])["i"] for e in events[:-1]] == [0, 1, 2, 3]
    error = json.loads(events[-1].removeprefix(b"data: "))["error"]
    assert error["type"] == "backend_error" and "mid-stream" in error["message"]
    for code, body in results:
        assert code == 200 and body.endswith(b"data: [DONE]\n\n") and body.count(b"data: ") == 21
    assert status(thread)["loads"][0]["running"] == 0  # the dead stream was released


def test_a_backend_dying_mid_body_gets_that_client_a_502(backends, router):
    fakes = backends(2)
    thread = router(ALWAYS_LAST, [f.url for f in fakes])
    bodies = [{"prompt": f"p{i}"} for i in range(5)]
    bodies.insert(2, {"prompt": "doomed", "die_after": 0})
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda b: post(thread.url, "/v1/completions", b), bodies))
    code, body = results.pop(2)
    error = json.loads(body)["error"]
    assert code == 502 and error["type"] == "backend_error" and "mid-response" in error["message"]
    assert all(c == 200 and json.loads(b)["backend"] == "fake1" for c, b in results)
    assert fakes[1].requests == 6 and fakes[0].requests == 0  # not retried: it had answered
    assert status(thread)["loads"][1]["running"] == 0


def test_prompt_tokens_are_estimated_with_a_ratio_learnt_off_the_request_path(backends, router):
    from autotuner.router import proxy

    fakes = backends(2)
    for fake in fakes:
        fake.chars_per_token = 2.5
    thread = router(LEAST, [f.url for f in fakes])
    assert status(thread)["tokenizer"][1] == "llama.cpp"
    probes = fakes[0].tokenize_calls  # finding the endpoint at start
    for i in range(30):
        assert post(thread.url, "/v1/completions", {"prompt": f"{i} " + "word " * 200})[0] == 200
    deadline = time.monotonic() + 10
    while status(thread)["token_ratio_samples"] < 2 and time.monotonic() < deadline:
        post(thread.url, "/v1/completions", {"prompt": "more " * 200})
        time.sleep(proxy.TOKENIZE_EVERY_S)
    now = status(thread)
    assert abs(now["chars_per_token"] - 2.5) < 0.05  # learnt from the backend's tokenizer
    # every tokenize call was a background sample (at most one in flight), none a request's
    sampled = fakes[0].tokenize_calls - probes
    assert 1 <= sampled <= now["token_ratio_samples"] + 1 and sampled < 30


def test_the_router_runs_on_uvloop_where_installed(backends, tmp_path):
    from autotuner.router.runner import uvloop_factory

    factory = uvloop_factory()
    if factory is None:
        pytest.skip("uvloop is not installed (the router's optional fast event loop)")
    fakes = backends(2)
    built = build_router(LEAST, RouterConfig(tuple(f.url for f in fakes)), sandbox=SANDBOX)
    with RouterThread(built, loop_factory=factory) as thread:
        assert type(thread.loop).__module__.startswith("uvloop")
        bodies = [{"prompt": f"u{i}", "stream": i % 2 == 0, "chunks": 3} for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda b: post(thread.url, "/v1/completions", b), bodies))
        assert all(code == 200 for code, _ in results)
        assert status(thread)["fallbacks"] == {}
        os.killpg(status(thread)["policy_worker_pid"], signal.SIGKILL)  # add_reader on uvloop
        codes = [post(thread.url, "/v1/completions", {"prompt": "k"})[0] for _ in range(5)]
        assert set(codes) == {200}


def test_a_policy_worker_killed_under_load_loses_no_request(backends, router):
    from autotuner.router.loadgen import Shot, replay

    fakes = backends(2)
    thread = router(ALWAYS_LAST, [f.url for f in fakes])
    shots = [Shot(i / 100, "/v1/completions", {"prompt": f"load {i}"}) for i in range(150)]
    pid = status(thread)["policy_worker_pid"]

    def kill_midway() -> None:
        time.sleep(0.5)
        os.killpg(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_midway)
    killer.start()
    outcomes = replay(thread.url, shots, timeout=30)
    killer.join()
    assert [o.status for o in outcomes] == [200] * 150  # 0 requests lost
    now = status(thread)
    assert now["fallbacks"].get("worker_dead", 0) >= 1  # the kill landed mid-run
    decided = sum(n for key, n in now["decisions"].items() if key.endswith("|policy"))
    fell_back = sum(now["fallbacks"].values())
    assert decided + fell_back == 150 and decided >= 40  # the policy decided before the kill


def test_a_failing_or_slow_policy_falls_back_and_loses_nothing(backends, router):
    fakes = backends(2)
    thread = router(RAISES, [f.url for f in fakes])
    assert all(post(thread.url, "/v1/completions", {"prompt": "q"})[0] == 200 for _ in range(4))
    assert status(thread)["fallbacks"] == {"error": 4}
    slow = router(SLOW, [f.url for f in fakes], policy_timeout_s=0.05)
    assert all(post(slow.url, "/v1/completions", {"prompt": "q"})[0] == 200 for _ in range(2))
    assert status(slow)["fallbacks"] == {"timeout": 2}


def test_a_stuck_policy_worker_is_killed_and_restarted(backends, router, monkeypatch):
    from autotuner.router import policy_worker

    monkeypatch.setattr(policy_worker, "MAX_UNANSWERED", 2)
    monkeypatch.setattr(policy_worker, "STUCK_S", 0.3)
    fakes = backends(2)
    thread = router(ENDLESS, [f.url for f in fakes])
    pid = status(thread)["policy_worker_pid"]
    codes = []
    deadline = time.monotonic() + 30
    while status(thread)["policy_restarts"] < 1 and time.monotonic() < deadline:
        codes.append(post(thread.url, "/v1/completions", {"prompt": "z"})[0])
        time.sleep(0.05)
    now = status(thread)
    assert now["policy_restarts"] >= 1 and now["policy_worker_pid"] != pid
    # two timeouts fill the backlog; a request that reaches the restarted (as endless) worker
    # before this loop sees the restart times out too
    assert set(codes) == {200} and now["fallbacks"]["timeout"] >= 2
    assert now["fallbacks"]["backlog"] >= 1


def test_a_killed_policy_worker_falls_back_then_restarts(backends, router):
    fakes = backends(2)
    thread = router(ALWAYS_LAST, [f.url for f in fakes])
    codes = [post(thread.url, "/v1/completions", {"prompt": "a"})[0] for _ in range(3)]
    pid = status(thread)["policy_worker_pid"]
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        codes.append(post(thread.url, "/v1/completions", {"prompt": "b"})[0])
        now = status(thread)
        if now["policy_restarts"] >= 1 and now["policy_worker_pid"] not in (None, pid):
            break
        time.sleep(0.05)
    now = status(thread)
    assert now["policy_restarts"] >= 1 and now["fallbacks"].get("worker_dead", 0) >= 1
    codes += [post(thread.url, "/v1/completions", {"prompt": "c"})[0] for _ in range(3)]
    assert set(codes) == {200}  # 0 requests lost
    after = status(thread)["decisions"]
    assert after[f"{fakes[1].url}|policy"] >= 6  # the restarted worker decides again


def test_a_refused_policy_starts_nothing(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("import os\n\ndef route(request, cluster, params):\n    return 0\n")
    with pytest.raises(PolicyRefused):
        build_router(path, RouterConfig(("http://127.0.0.1:9",)), sandbox=SANDBOX)


def test_prefix_hits_are_estimated_from_the_prompts_sent():
    from autotuner.router.observe import LiveCluster, block_hashes

    shared = "s" * 64 * 10  # ten 16-token blocks of 4 chars a token
    first, second = block_hashes(shared + "a" * 64), block_hashes(shared + "b" * 64)
    assert len(first) == len(second) == 11 and first[:10] == second[:10] and first[10] != second[10]
    cluster = LiveCluster(2, kv_capacity_tokens=1000)
    cluster.sent(1, 176, first)
    view = cluster.view(cluster.request(176, second), second)
    assert [r.prefix_hit_tokens for r in view.replicas] == [0, 160]
    assert [(r.waiting, r.waiting_tokens, r.outstanding) for r in view.replicas] == \
        [(0, 0, 0), (1, 176, 1)]
    assert view.replicas[1].kv_free_tokens == 1000 - 176
    cluster.first_byte(1, 176)
    cluster.done(1, 176, started=True)
    assert cluster.view(cluster.request(1, []), []).replicas[1].outstanding == 0



def test_held_prefix_blocks_stay_prefix_closed_as_the_oldest_are_evicted(monkeypatch):
    """hit_blocks is a binary search: it is right only while a backend holds each remembered
    prompt's head at least as long as its tail, eviction included."""
    from autotuner.router import observe

    monkeypatch.setattr(observe, "MAX_REMEMBERED_BLOCKS", 8)
    load = observe.BackendLoad()
    first = observe.block_hashes("a" * 64 * 6)
    second = observe.block_hashes("b" * 64 * 6)
    load.remember(first)
    load.remember(first[:3])  # the head again, most recent now
    load.remember(second)  # 12 blocks for 8 places: the four oldest go
    assert len(load.blocks) == 8
    assert [h in load.blocks for h in first] == [True, True, False, False, False, False]
    longer = observe.block_hashes("a" * 64 * 6 + "b" * 64 * 6)
    assert longer[:6] == first
    for prompt in (first, second, first[:1], longer, []):
        linear = next((i for i, h in enumerate(prompt) if h not in load.blocks), len(prompt))
        assert load.hit_blocks(prompt) == linear
    assert load.hit_blocks(second) == 6 and load.hit_blocks(first) == 2


def test_the_decision_query_is_the_json_the_worker_reads():
    from autotuner.router.observe import LiveCluster, block_hashes
    from autotuner.router.policy_worker import query_line

    cluster = LiveCluster(3, kv_capacity_tokens=1000)
    cluster.sent(2, 70, block_hashes("x" * 300))
    request = cluster.request(75, block_hashes("x" * 300))
    view = cluster.view(request, block_hashes("x" * 300))
    line = query_line(41, request, view)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == json.loads(json.dumps([41, request, view.now, view.replicas]))
    assert isinstance(json.loads(line)[1][1], float)  # the arrival time stays a float

STICKY = '''"""Round robin, except to the backend holding most of the prompt's prefix."""

TUNABLES = {}


def route(request, cluster, params):
    best = max(cluster.replicas, key=lambda r: (r.prefix_hit_tokens, -r.replica))
    if best.prefix_hit_tokens > 0:
        return best.replica
    return request.id % len(cluster.replicas)
'''


def test_a_policy_sees_prefix_hits_live(backends, router):
    fakes = backends(3)
    thread = router(STICKY, [f.url for f in fakes])
    system = "You are a careful assistant. " * 60  # about 440 estimated tokens
    seen = set()
    for i in range(6):
        body = {"messages": [{"role": "system", "content": system},
                             {"role": "user", "content": f"question {i}"}]}
        code, answer = post(thread.url, "/v1/chat/completions", body)
        assert code == 200
        seen.add(json.loads(answer)["backend"])
    assert seen == {"fake0"} and status(thread)["fallbacks"] == {}  # round robin: all three
    code, answer = post(thread.url, "/v1/completions", {"prompt": "unrelated"})
    assert json.loads(answer)["backend"] == "fake0"  # id 6 % 3: no hit, round robin again
    code, answer = post(thread.url, "/v1/completions", {"prompt": "unrelated two"})
    assert json.loads(answer)["backend"] == "fake1"


def test_an_engines_own_gauges_count_in_the_view(backends, router):
    from autotuner.router.observe import parse_engine_metrics

    vllm = ('# HELP vllm:num_requests_running x\n'
            'vllm:num_requests_running{model_name="m"} 9.0\n'
            'vllm:num_requests_waiting{model_name="m"} 5.0\n'
            'vllm:gpu_cache_usage_perc{model_name="m"} 0.5\n')
    assert vars(parse_engine_metrics(vllm)) == {"running": 9, "waiting": 5, "kv_usage": 0.5}
    assert parse_engine_metrics("llamacpp:requests_processing 2\nllamacpp:requests_deferred 1\n"
                                ).running == 2
    assert parse_engine_metrics("process_cpu_seconds_total 3\n") is None
    # Summed over label sets; a longer name sharing the prefix and a bad value are not counted.
    two_engines = ('vllm:num_requests_running{engine="0"} 2\n'
                   'vllm:num_requests_running_max 70\n'
                   'vllm:num_requests_waiting{engine="0"} 1\n'
                   'vllm:num_requests_running{engine="1"} 3\n'
                   'vllm:num_requests_waiting{engine="1"} x\n')
    assert vars(parse_engine_metrics(two_engines)) == {"running": 5, "waiting": 1,
                                                       "kv_usage": None}
    fakes = backends(2)
    fakes[0].metrics_text = vllm  # busy with other clients' requests
    thread = router(LEAST, [f.url for f in fakes], engine_metrics_s=0.05,
                    kv_capacity_tokens=1000)
    deadline = time.monotonic() + 10
    while status(thread)["loads"][0]["engine"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert status(thread)["loads"][0]["engine"] == {"running": 9, "waiting": 5, "kv_usage": 0.5}
    answers = [json.loads(post(thread.url, "/v1/completions", {"prompt": "x"})[1])["backend"]
               for _ in range(3)]
    assert answers == ["fake1"] * 3  # least-outstanding, counting fake0's own report


def test_the_overhead_bench_compares_an_older_revision_in_the_same_blocks():
    """scripts/bench_router.py --before REV: a row per router arm, each request answered."""
    root = Path(__file__).resolve().parents[1]
    if subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True
                      ).returncode != 0:
        pytest.skip("not a git checkout: --before needs one")
    out = subprocess.run(
        [sys.executable, str(root / "scripts" / "bench_router.py"), "--requests", "20",
         "--block", "10", "--before", "HEAD"], capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=str(root)))
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith("  1 ")]
    assert [row[1] for row in rows] == ["router", "before"]
    assert all(row[10] == "0" and row[11] == "0" for row in rows)  # none failed, no fallback

def test_the_command_refuses_bad_input_in_one_line(tmp_path, capsys):
    from autotuner.commands.main import main

    assert main(["router", "--policy", "least_outstanding", "--backend", "localhost:1"]) == 2
    assert "give a URL" in capsys.readouterr().err
    path = tmp_path / "toplevel.py"
    path.write_text('TUNABLES = {}\n\nraise ValueError("boom")\n\n\n'
                    'def route(request, cluster, params):\n    return 0\n')
    for argv in (["--policy", str(path)], ["--policy", "least_outstanding", "--param", "nope=1"]):
        code = main(["router", *argv, "--backend", "http://127.0.0.1:9", "--sandbox", SANDBOX])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith("autotuner router: error:")


def test_the_prediction_simulates_the_same_requests_with_each_routing():
    from autotuner.resources import baseline_path
    from autotuner.router.compare import predict
    from autotuner.router.loadgen import Shot
    from autotuner.sim.measured import StepProfile

    # one request at a time per server, 1 ms a prompt token: long and short prompts alternate,
    # so round robin queues every long one on server 0 and least-outstanding spreads them
    profile = StepProfile("t", base_s=0.01, prefill_base_s=0.0, prefill_token_s=0.001,
                          prefill_pair_s=0.0, decode_s=0.0, context_token_s=0.0,
                          kv_capacity_tokens=8192, max_num_seqs=1)
    shots = [Shot(0.01 * i, "/v1/completions", {"prompt": "x"}) for i in range(9)]
    prompts = [1000, 10] * 4 + [10]
    outputs = (2,) * 8 + (0,)  # the last one failed live: not simulated
    rr = predict(profile, baseline_path("fixed_chunk"), "rr", shots, prompts, outputs, 2)
    lo = predict(profile, LEAST, "lo", shots, prompts, outputs, 2)
    assert rr.per_backend == (4, 4) and sum(lo.per_backend) == 8
    assert 3.9 < rr.ttft_p99_s < 4.2  # the fourth long prompt waits behind three
    assert lo.ttft_p99_s < 0.8 * rr.ttft_p99_s


def test_the_direct_reference_alternates_servers_without_a_router(backends):
    from autotuner.router.compare import measure_direct
    from autotuner.router.loadgen import Shot

    fakes = backends(2)
    shots = [Shot(0.01 * i, "/v1/completions", {"prompt": f"d{i}", "stream": i % 2 == 0,
                                                 "chunks": 3}) for i in range(5)]
    row = measure_direct([f.url for f in fakes], shots)
    assert (row.ok, row.per_backend, [f.requests for f in fakes]) == (5, (3, 2), [3, 2])
    assert row.ttft_p50_s > 0


# -- real llama.cpp servers ----------------------------------------------------------------------
def _llama_reason() -> str:
    from autotuner.router.compare import llama_unavailable

    return llama_unavailable()


@pytest.fixture(scope="module")
def llama_urls():
    from autotuner.router.compare import llama_servers

    with llama_servers(2) as urls:
        yield urls


@pytest.mark.skipif(bool(_llama_reason()), reason=_llama_reason() or "available")
def test_real_llama_servers_round_robin_vs_policy(llama_urls):
    from autotuner.resources import baseline_path
    from autotuner.router.compare import measure, table
    from autotuner.router.loadgen import chat_workload

    shots = chat_workload(6, rate=1.5, seed=7, max_tokens=4, shared_prefix_share=0.3)
    # Routing, not decision latency (bench_router measures that): on 2 cores running two
    # llama.cpp servers and a test suite, one decision once waited past the 50 ms default.
    rows = [measure(baseline_path("fixed_chunk"), "round robin", llama_urls, shots, SANDBOX,
                    policy_timeout_s=1.0),
            measure(LEAST, "least_outstanding", llama_urls, shots, SANDBOX,
                    policy_timeout_s=1.0)]
    print("\n" + table(rows))
    for row in rows:
        assert row.ok == row.requests == 6 and row.fallbacks == 0
    assert rows[0].per_backend == (3, 3)  # round robin alternates exactly
    assert rows[0].ttft_p50_s > 0 and rows[1].ttft_p50_s > 0


@pytest.mark.skipif(bool(_llama_reason()), reason=_llama_reason() or "available")
def test_chat_prompts_are_counted_as_the_server_counts_them(llama_urls):
    from autotuner.router.compare import engine_prompt_tokens
    from autotuner.router.loadgen import chat_workload

    shots = chat_workload(3, rate=1.5, seed=7, shared_prefix_share=0.3)
    assert len({len(s.body["messages"]) for s in shots}) == 2  # with and without a system prompt
    for shot, counted in zip(shots, engine_prompt_tokens(shots), strict=True):
        code, answer = post(llama_urls[0], shot.path, dict(shot.body, stream=False, max_tokens=1),
                            timeout=120)
        assert code == 200 and json.loads(answer)["usage"]["prompt_tokens"] == counted


@pytest.mark.skipif(bool(_llama_reason()), reason=_llama_reason() or "available")
def test_a_real_server_killed_mid_stream_fails_only_its_streams():
    from autotuner.router.compare import llama_servers
    from autotuner.router.loadgen import Shot, chat_workload, replay

    pids: dict[str, int] = {}
    with llama_servers(2, pids=pids) as urls:
        built = build_router(LEAST, RouterConfig(tuple(urls)), sandbox=SANDBOX)
        with RouterThread(built) as thread:
            shots = [Shot(0.01 * i, "/v1/completions", {
                "prompt": f"Chapter {i}. Once upon a time, in a small village,", "stream": True,
                "max_tokens": 300, "temperature": 0.0}) for i in range(4)]
            def kill_when_streaming() -> None:  # server 1 mid-stream: bytes sent, not finished
                deadline = time.monotonic() + 60
                while built.cluster.loads[1].running < 1 and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(0.3)
                os.killpg(pids[urls[1]], signal.SIGKILL)

            killer = threading.Thread(target=kill_when_streaming)
            killer.start()
            during = replay(thread.url, shots, timeout=120)
            killer.join()
            after = replay(thread.url, chat_workload(3, rate=100.0, seed=4, max_tokens=2))
            per_backend = [built.metrics.decisions[(i, "policy")] for i in range(2)]
    assert all(o.status == 200 for o in during + after)  # every client got an answer
    cut = [o for o in during if not o.complete]
    assert 1 <= len(cut) <= per_backend[1] and all("failed mid-stream" in o.error for o in cut)
    assert all(o.complete for o in after)  # the dead server's share is retried on the live one
