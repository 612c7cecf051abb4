"""Router overhead: the latency the router adds per request at a fixed open-loop rate.

A trivial OpenAI-style backend (answers at once) and the router (``python -m autotuner router``
with the least-outstanding baseline in its sandboxed worker) run as their own processes; this
process sends the same requests at RATE/s straight to the backend and through the router, in
alternating rounds, and prints the p50/p99 of each and the difference (added latency) and ratio.

    PYTHONPATH=$PWD python scripts/bench_router.py [--rate 200] [--requests 1000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autotuner.router.loadgen import Shot, percentile, replay  # noqa: E402


def serve_trivial(port: int) -> None:
    from aiohttp import web

    body = b'{"id":"x","object":"text_completion","choices":[{"index":0,"text":"ok"}]}'

    async def complete(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "trivial"}]})

    app = web.Application()
    app.router.add_post("/v1/completions", complete)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the process exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url + "/v1/models", timeout=1).read()
            return
        time.sleep(0.1)
    raise SystemExit(f"{url} did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve-trivial", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_trivial:
        serve_trivial(args.serve_trivial)
        return
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    backend_port, router_port = _port(), _port()
    backend_url = f"http://127.0.0.1:{backend_port}"
    router_url = f"http://127.0.0.1:{router_port}"
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, __file__, "--serve-trivial",
                                       str(backend_port)], env=env, start_new_session=True))
        _wait(backend_url, procs[-1])
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "autotuner", "router", "--policy", "least_outstanding",
             "--backend", backend_url, "--port", str(router_port)], env=env,
            start_new_session=True, stderr=subprocess.DEVNULL))
        _wait(router_url, procs[-1])
        shots = [Shot(i / args.rate, "/v1/completions", {"prompt": f"hello {i}",
                                                         "max_tokens": 1})
                 for i in range(args.requests)]
        replay(router_url, shots[:50])  # warm both paths' connection pools
        replay(backend_url, shots[:50])
        samples: dict[str, list[float]] = {"direct": [], "router": []}
        failed = 0
        for _ in range(args.rounds):
            for arm, url in (("direct", backend_url), ("router", router_url)):
                outcomes = replay(url, shots)
                failed += sum(1 for o in outcomes if o.status != 200)
                samples[arm] += [o.total_s for o in outcomes if o.status == 200]
        stats = {arm: (percentile(v, 50), percentile(v, 99)) for arm, v in samples.items()}
        print(f"router overhead at {args.rate:g} requests/s, {args.requests} requests x "
              f"{args.rounds} rounds per arm, trivial backend, least_outstanding policy in its "
              f"sandboxed worker; {failed} failed")
        print(f"{'':8} {'p50 ms':>8} {'p99 ms':>8}")
        for arm, (p50, p99) in stats.items():
            print(f"{arm:8} {p50 * 1000:8.3f} {p99 * 1000:8.3f}")
        (d50, d99), (r50, r99) = stats["direct"], stats["router"]
        print(f"{'added':8} {(r50 - d50) * 1000:8.3f} {(r99 - d99) * 1000:8.3f}")
        print(f"{'ratio':8} {r50 / d50:8.2f} {r99 / d99:8.2f}")
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
