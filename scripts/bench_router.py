"""Router overhead: the latency the router adds per request at a fixed open-loop rate.

A trivial OpenAI-style backend (answers at once) and the router (``python -m autotuner router``
with the least-outstanding baseline in its sandboxed worker) run as their own processes; this
process sends requests at RATE/s straight to the backend (the reference) and through the router,
alternating short blocks of BLOCK requests so that both arms see the same background load on a
shared machine, and prints the p50/p99 of each, the difference (added latency) and the ratio.
It also prints the CPU time the router process and its policy worker spent per request (from
/proc), which, unlike latency, the machine's other load barely moves. ``--busy`` keeps one core
busy (a ``while True: pass`` process) for the whole run; ``--repeat``
runs the whole measurement again to show the spread. Each run prints the load average.
``--before REV`` also starts the router of an older git revision of this repository (its
``autotuner``, ``baselines`` and ``sandbox`` as that commit has them) beside the current one,
and the blocks go round all three arms, so that old and new are compared under the same load.

    PYTHONPATH=$PWD python scripts/bench_router.py [--rate 200] [--requests 1200] [--block 100]
        [--repeat 3] [--busy] [--tokenizing-backend] [--router-arg=--no-uvloop] [--before REV]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autotuner.router.loadgen import Shot, percentile, replay  # noqa: E402


def serve_trivial(port: int, tokenize: bool) -> None:
    from aiohttp import web

    body = b'{"id":"x","object":"text_completion","choices":[{"index":0,"text":"ok"}]}'

    async def complete(_request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async def models(_request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "trivial"}]})

    async def count(request: web.Request) -> web.Response:  # llama-cpp-python's, at once
        text = (await request.json()).get("input", "")
        return web.json_response({"tokens": list(range(len(text) // 4 + 1))})

    app = web.Application()
    if tokenize:
        app.router.add_post("/extras/tokenize", count)
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


def _router_counters(url: str) -> dict[str, float]:
    """The router's own decision counters and decision-time sum from its /metrics."""
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    counts: dict[str, float] = {"policy": 0.0, "fallback": 0.0}
    for by, n in re.findall(r'^autotuner_router_decisions_total\{[^}]*by="(\w+)"\} (\S+)', text,
                            re.M):
        counts[by] += float(n)
    total = re.search(r"^autotuner_router_decision_seconds_sum (\S+)", text, re.M)
    counts["decision_s"] = float(total[1]) if total else float("nan")
    return counts


def _cpu_seconds(root: int) -> dict[str, float]:
    """CPU time (user + system) of ``root`` and, apart, of all its descendants (the policy
    worker, inside its sandbox), from /proc: what the router costs whatever the machine's load."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    below, stack = 0.0, list(children.get(root, []))
    while stack:
        pid = stack.pop()
        below += times.get(pid, 0.0)
        stack += children.get(pid, [])
    return {"router": times.get(root, 0.0), "worker": below}


def measure(arms: dict[str, str], rate: float, requests: int, block: int
            ) -> tuple[dict[str, list[float]], int]:
    """Go round the arms (name: URL) block by block, ``block`` requests each, until each had
    ``requests``."""
    shots = [Shot(i / rate, "/v1/completions", {"prompt": f"hello {i}", "max_tokens": 1})
             for i in range(block)]
    samples: dict[str, list[float]] = {arm: [] for arm in arms}
    failed = 0
    for _ in range(max(1, requests // block)):
        for arm, url in arms.items():
            outcomes = replay(url, shots)
            failed += sum(1 for o in outcomes if o.status != 200)
            samples[arm] += [o.total_s for o in outcomes if o.status == 200]
    return samples, failed


def checkout(revision: str, into: Path) -> Path:
    """The files a router runs from (autotuner, baselines, sandbox) as ``revision`` has them."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "autotuner",
                              "baselines", "sandbox"], capture_output=True, check=False)
    if archive.returncode != 0:
        print(f"bench_router: --before {revision}: {archive.stderr.decode().strip()}",
              file=sys.stderr)
        raise SystemExit(2)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def start_router(root: Path, policy: str, backend_url: str, extra: list[str]
                 ) -> tuple[str, subprocess.Popen]:
    port = _port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotuner", "router", "--policy", policy, "--backend",
         backend_url, "--port", str(port), *extra], env=dict(os.environ, PYTHONPATH=str(root)),
        cwd=str(root), start_new_session=True, stderr=subprocess.DEVNULL)
    _wait(url, proc)
    return url, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--requests", type=int, default=1200, help="per arm and run")
    parser.add_argument("--block", type=int, default=100,
                        help="requests per block; the arms alternate block by block")
    parser.add_argument("--repeat", type=int, default=1, help="independent runs (same router)")
    parser.add_argument("--busy", action="store_true",
                        help="keep one core busy with a spinning process throughout")
    parser.add_argument("--policy", default="least_outstanding")
    parser.add_argument("--router-arg", action="append", default=[],
                        help="an extra argument for `autotuner router` (repeatable)")
    parser.add_argument("--tokenizing-backend", action="store_true",
                        help="the trivial backend also answers llama-cpp-python's "
                        "/extras/tokenize (at once), as real engines have one")
    parser.add_argument("--before", metavar="REV",
                        help="also measure the router of this git revision, in the same blocks")
    parser.add_argument("--serve-trivial", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_trivial:
        serve_trivial(args.serve_trivial, args.tokenizing_backend)
        return
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    backend_port = _port()
    backend_url = f"http://127.0.0.1:{backend_port}"
    procs = []
    routers: dict[str, tuple[str, subprocess.Popen]] = {}  # arm: (URL, its process)
    with contextlib.ExitStack() as stack:
        roots = {"router": ROOT}
        if args.before:  # checked out first, removed last (after its router has stopped)
            roots["before"] = checkout(args.before, Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="bench-router-before-"))))
        stack.callback(_stop, procs)
        if args.busy:
            procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                          start_new_session=True))
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--serve-trivial", str(backend_port),
             *(["--tokenizing-backend"] if args.tokenizing_backend else [])], env=env,
            start_new_session=True))
        _wait(backend_url, procs[-1])
        for arm, root in roots.items():
            routers[arm] = start_router(root, args.policy, backend_url, args.router_arg)
            procs.append(routers[arm][1])
        warm = [Shot(i / args.rate, "/v1/completions", {"prompt": "warm", "max_tokens": 1})
                for i in range(50)]
        for url in (*(url for url, _ in routers.values()), backend_url):
            replay(url, warm)  # warm every path's connection pool
        print(f"router overhead at {args.rate:g} requests/s, {args.requests} requests per arm "
              f"and run in alternating blocks of {args.block}, trivial backend, {args.policy} "
              f"in its sandboxed worker{', one core kept busy' if args.busy else ''}"
              f"{', the backend has a tokenize endpoint' if args.tokenizing_backend else ''}"
              f"{' (router ' + ' '.join(args.router_arg) + ')' if args.router_arg else ''}"
              f"{'; before = git ' + args.before if args.before else ''}")
        print(f"{'run':>3} {'arm':>6} {'load avg':>9} {'direct p50':>10} {'p99':>7} "
              f"{'routed p50':>10} {'p99':>7} {'added p50':>9} {'p99':>7} {'ratio p99':>9}  "
              f"failed fallbacks decision mean  CPU/request: router worker")
        for run in range(1, args.repeat + 1):
            load = os.getloadavg()[0]
            before = {arm: (_router_counters(url), _cpu_seconds(proc.pid))
                      for arm, (url, proc) in routers.items()}
            samples, failed = measure({"direct": backend_url} | {arm: url for arm, (url, _)
                                                                  in routers.items()},
                                      args.rate, args.requests, args.block)
            d50, d99 = (percentile(samples["direct"], q) * 1e3 for q in (50, 99))
            for arm, (url, proc) in routers.items():
                _report(run, arm, load, (d50, d99), samples[arm], failed, before[arm],
                        (_router_counters(url), _cpu_seconds(proc.pid)))
        print(f"load average at the end: {os.getloadavg()[0]:.2f} (2 cores here: "
              f"{os.cpu_count()} CPUs)")


def _report(run: int, arm: str, load: float, direct: tuple[float, float], routed: list[float],
            failed: int, before: tuple[dict[str, float], dict[str, float]],
            after: tuple[dict[str, float], dict[str, float]]) -> None:
    """One arm's row: its latency against the direct arm's, and from its router's counters and
    /proc, its decisions, fallbacks and CPU per request (failed counts every arm's)."""
    (d50, d99), (r50, r99) = direct, (percentile(routed, q) * 1e3 for q in (50, 99))
    (counts0, cpu0), (counts1, cpu1) = before, after
    decisions = sum(counts1[by] - counts0[by] for by in ("policy", "fallback"))
    cpu_us = {part: (cpu1[part] - cpu0[part]) / max(1.0, decisions) * 1e6
              for part in ("router", "worker")}
    mean_ms = (counts1["decision_s"] - counts0["decision_s"]) / max(1.0, decisions) * 1e3
    print(f"{run:>3} {arm:>6} {load:>9.2f} {d50:>8.3f}ms {d99:>5.2f}ms {r50:>8.3f}ms "
          f"{r99:>5.2f}ms {r50 - d50:>7.3f}ms {r99 - d99:>5.2f}ms {r99 / d99:>9.2f}  "
          f"{failed:>6} {counts1['fallback'] - counts0['fallback']:>9.0f} "
          f"{mean_ms:>9.3f}ms  {cpu_us['router']:>15.0f}us {cpu_us['worker']:>4.0f}us")


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
