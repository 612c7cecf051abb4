"""The LLM proposer against a local server speaking the real chat-completions protocol."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from autotuner.check import check_policy
from autotuner.policy import read_policy_source
from autotuner.proposers import ParentInfo, ProposalRequest, Proposer
from autotuner.proposers.base import ClusterInfo, Objective, WorkloadInfo
from autotuner.proposers.llm import LLMConfig, LLMProposer, retry_after_s
from autotuner.proposers.prompt import PromptBuilder, render_api_doc
from autotuner.resources import baseline_path
from autotuner.sim import api

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chat_server import ChatServer, Reply, error, ok, rate_limited  # noqa: E402

PARENT = baseline_path("fixed_chunk").read_text()
NEW_FILE = PARENT.replace('"default": 512', '"default": 1024').replace(
    "for req in replica.waiting:", "for req in sorted(replica.waiting, key=lambda r: r.remaining):"
)
EDITS = """Shortest first:
<<<<<<< SEARCH
    for req in replica.waiting:
=======
    for req in sorted(replica.waiting, key=lambda r: r.remaining):
>>>>>>> REPLACE
"""
BAD_EDITS = """<<<<<<< SEARCH
    for request in replica.queue:
=======
    for request in reversed(replica.queue):
>>>>>>> REPLACE
"""
SECRET = "sk-test-SECRET-4242"


def fenced(code: str) -> str:
    return f"I changed the order.\n\n```python\n{code}```\n"


def passes(code: str) -> list[str]:
    """The real static check."""
    return check_policy(code).reasons()


def no_sorting(code: str) -> list[str]:
    return ["line 17: sorted() is not allowed here"] if "sorted(" in code else []


OBJECTIVE = Objective(
    slo={"ttft_s": 2.0, "tpot_s": 0.1, "share": 0.9},
    share=0.9,
    ladder=(1.0, 1.5, 2.0),
    goodput="requests",
    margin=0.05,
    baseline="fixed_chunk",
)


def request(parent_id: str = "c0007", objective: Objective = OBJECTIVE) -> ProposalRequest:
    parent = ParentInfo(
        candidate_id=parent_id,
        code=PARENT,
        train_score=0.0312,
        workload_gains={"chat/1": 1.875, "multiturn/1": -0.25},
        failures=("partition: chunks[0] tokens 900 exceed remaining 512",),
        params={"chunk_size": 768},
    )
    other = ParentInfo("c0003", baseline_path("sarathi_shrinking").read_text(), 0.02)
    return ProposalRequest(
        parent=parent,
        inspirations=(other,),
        objective=objective,
        workloads=(WorkloadInfo("chat/1", 8.0), WorkloadInfo("multiturn/1", 2.345678)),
        cluster=ClusterInfo(4, "llama-3-8b", "h100", 1, 16384),
        baseline_params={"chunk_size": 512},
        notes=("explore decode-aware budgets",),
    )


@pytest.fixture
def server():
    with ChatServer() as srv:
        yield srv


def proposer(server: ChatServer, **overrides) -> LLMProposer:
    settings = dict(
        model="gpt-4o-mini",
        base_url=server.base_url,
        timeout_s=5.0,
        backoff_s=0.01,
        max_backoff_s=2.0,
        max_retries=3,
    )
    settings.update(overrides)
    return LLMProposer(LLMConfig(**settings), env={"OPENAI_API_KEY": SECRET})


def test_whole_file_reply_and_what_the_model_was_shown(server):
    server.push(ok(fenced(NEW_FILE), prompt_tokens=2000, completion_tokens=1000))
    llm = proposer(server, prompt_token_cap=0)
    assert isinstance(llm, Proposer)
    result = llm.propose(request(), passes)
    assert result.ok and result.reason == "" and result.code == NEW_FILE
    assert result.attempts == 1 and result.model == "gpt-4o-mini"
    assert (result.prompt_tokens, result.completion_tokens) == (2000, 1000)
    # gpt-4o-mini: $0.15 / 1M prompt, $0.60 / 1M completion.
    assert result.cost_usd == pytest.approx((2000 * 0.15 + 1000 * 0.60) / 1e6)
    assert llm.spent.cost_usd == pytest.approx(result.cost_usd)

    (got,) = server.requests
    assert got.path == "/v1/chat/completions"
    assert got.headers["authorization"] == f"Bearer {SECRET}"
    assert got.body["model"] == "gpt-4o-mini" and got.body["max_tokens"] == 4096
    prompt = got.user_text
    parent_code = PARENT.split('"""\n\n', 1)[1]  # the parent's code, without its docstring
    assert f"```python\n{parent_code.strip()}\n```" in prompt
    assert "Fixed-chunk baseline: what production stacks ship" not in prompt
    # its scores, failures and tuned parameters, as data
    assert "score: +0.0312 (chat/1 +1.88, multiturn/1 -0.25)" in prompt
    assert "- partition: chunks[0] tokens 900 exceed remaining 512" in prompt
    assert "tuned params: chunk_size=768" in prompt
    assert "`c0003` score: +0.02\n" in prompt and "max_chunk" in prompt  # an inspiration
    assert "Sarathi-Serve's shrinking-chunk" not in prompt  # without its narrative
    assert "SLO: TTFT <= 2 s, TPOT <= 0.1 s for >= 90% of requests" in prompt
    assert "loads: 1, 1.5, 2 x baseline capacity; goodput in requests/s" in prompt
    assert "vs the tuned fixed_chunk baseline" in prompt
    assert "Promotion" not in prompt and "margin" not in prompt and "5%" not in prompt
    assert "cluster: 4 replicas, llama-3-8b on h100, tp 1, max_batch_tokens 16384" in prompt
    assert "workloads (baseline capacity, req/s): chat/1 8, multiturn/1 2.35\n" in prompt
    assert "chunk_size=512" not in prompt  # the baseline's values: small models copied them
    assert "note: explore decode-aware budgets" in prompt
    system = got.system_text
    assert "kv_free_tokens: int" in system and "heapq" in system
    assert "getattr" in system and "one ```python block" in system
    (call,) = result.calls
    assert call.prompt_tokens == 2000 and call.completion_tokens == 1000
    assert call.estimated_prompt_tokens > 1000 and call.outcome == "ok"


def test_edit_reply_is_applied_to_the_parent(server):
    server.push(ok(EDITS))
    result = proposer(server).propose(request(), passes)
    assert result.ok, result.reason
    assert "sorted(replica.waiting" in result.code and result.code != PARENT
    read_policy_source(result.code)


def test_edits_that_do_not_apply_are_recorded_with_the_reason(server):
    server.push(ok(BAD_EDITS))
    result = proposer(server, max_check_retries=0).propose(request(), passes)
    assert not result.ok and result.code is None
    assert result.reason.startswith("edit 1 did not apply: search text not found")
    assert result.raw_replies == (BAD_EDITS,) and not result.fatal
    assert len(server.requests) == 1


def test_unusable_reply_goes_back_to_the_model(server):
    server.push(ok(BAD_EDITS), ok(EDITS))
    result = proposer(server).propose(request(), passes)
    assert result.ok and result.attempts == 2 and len(result.raw_replies) == 2
    second = server.requests[1]
    assert second.messages[-2] == {"role": "assistant", "content": BAD_EDITS}
    assert "edit 1 did not apply" in second.messages[-1]["content"]


def test_prose_without_code(server):
    server.push(ok("You could shrink the chunk when many requests decode."))
    result = proposer(server, max_check_retries=0).propose(request(), passes)
    assert not result.ok and result.reason == "no code in reply"


def test_check_rejection_is_sent_back_and_fixed(server):
    fixed = NEW_FILE.replace("sorted(replica.waiting, key=lambda r: r.remaining)", "replica")
    fixed = fixed.replace("1024", "2048")
    server.push(ok(fenced(NEW_FILE)), ok(fenced(fixed)))
    result = proposer(server).propose(request(), no_sorting)
    assert result.ok and result.code == fixed and result.attempts == 2
    assert result.prompt_tokens == 200 and result.completion_tokens == 100  # both calls counted
    second = server.requests[1].messages
    # The system message, then the refused file alone with its faulty line marked: not the
    # opening task again, which a small model answered by sending the same file back.
    assert [m["role"] for m in second] == ["system", "user"]
    assert second[0] == server.requests[0].messages[0]
    repair = second[1]["content"]
    assert "1. line 17: sorted() is not allowed here" in repair
    marked = NEW_FILE.splitlines()[16] + "  # <- problem 1"
    assert marked in repair.splitlines() and "## Task" not in repair
    assert [c.outcome for c in result.calls] == ["line 17: sorted() is not allowed here", "ok"]


def test_real_checker_refusal_goes_back_to_the_model(server):
    sneaky = NEW_FILE.replace("TUNABLES = {", "import os\n\nTUNABLES = {", 1)
    assert check_policy(sneaky).reasons() and not check_policy(NEW_FILE).reasons()
    server.push(ok(fenced(sneaky)), ok(fenced(NEW_FILE)))
    result = proposer(server).propose(request(), passes)
    assert result.ok and result.code == NEW_FILE and result.attempts == 2
    fix = server.requests[1].messages[-1]["content"]
    assert "os" in fix and check_policy(sneaky).reasons()[0] in fix


def _variants(n: int) -> list[str]:
    """n different files that the no_sorting check refuses."""
    return [NEW_FILE.replace("1024", str(1024 + i)) for i in range(n)]


def test_check_rejection_gives_up_after_the_bound(server):
    server.push(*[ok(fenced(code)) for code in _variants(3)])
    result = proposer(server, max_check_retries=2).propose(request(), no_sorting)
    assert not result.ok and result.attempts == 3
    assert result.reason.startswith("check rejected after 3 attempts: line 17: sorted()")
    assert len(server.requests) == 3
    assert all(len(r.messages) <= 4 for r in server.requests)  # the history does not grow


def test_a_repeated_reply_ends_the_dialogue_at_once(server):
    """The issue's case: byte-identical replies sent three times. The second is answered by
    ending the proposal, so no third call is paid for."""
    server.push(*[ok(fenced(NEW_FILE))] * 3)
    result = proposer(server, max_check_retries=2).propose(request(), no_sorting)
    assert not result.ok and result.attempts == 2 and len(server.requests) == 2
    assert result.reason == ("the reply repeated the previous attempt (after 2 attempts); it "
                             "was refused for: line 17: sorted() is not allowed here")
    assert result.calls[-1].outcome == "the reply repeated the previous attempt"


def test_the_same_unusable_reply_twice_ends_the_dialogue(server):
    server.push(ok("Shrink the chunk."), ok("Shrink the chunk."), ok(fenced(NEW_FILE)))
    result = proposer(server).propose(request(), passes)
    assert not result.ok and len(server.requests) == 2
    assert result.reason.startswith("the reply repeated the previous attempt")
    assert "no code in reply" in result.reason


def test_the_parent_sent_back_is_answered_with_exactly_that_then_ends(server):
    """The parent back unchanged (here with its docstring, which the prompt left out, and a
    tunable default changed) is named as the parent; sending it again ends the proposal."""
    copy = PARENT.replace('"default": 512', '"default": 700')
    server.push(ok(fenced(copy)), ok(fenced(PARENT)), ok(fenced(NEW_FILE)))
    result = proposer(server).propose(request(), passes)
    fix = server.requests[1].messages[-1]["content"]
    assert "your file is the parent c0007, unchanged up to names, comments" in fix
    assert not result.ok and len(server.requests) == 2
    assert result.reason.startswith("the reply repeated the previous attempt (after 2 attempts)")


def test_a_copy_of_another_policy_shown_is_named_and_a_new_file_then_passes(server):
    other = baseline_path("sarathi_shrinking").read_text().replace("chunks = []", "picked = []")
    other = other.replace("chunks.append", "picked.append").replace("tuple(chunks)",
                                                                     "tuple(picked)")
    server.push(ok(fenced(other)), ok(fenced(NEW_FILE)))
    result = proposer(server, prompt_token_cap=0).propose(request(), passes)
    assert result.ok and result.code == NEW_FILE and result.attempts == 2
    fix = server.requests[1].messages[-1]["content"]
    assert "your file is c0003, one of the other policies shown, unchanged" in fix


def test_a_copy_of_a_reference_policy_is_named_and_a_new_file_then_passes(server):
    """A shipped reference the model was not shown (here least_outstanding, with another
    docstring) is named as that reference: it would be scored as that policy, no discovery."""
    copy = baseline_path("least_outstanding").read_text().replace(
        "Least-outstanding-requests routing", "My balanced router")
    server.push(ok(fenced(copy)), ok(fenced(NEW_FILE)))
    result = proposer(server, prompt_token_cap=0).propose(request(), passes)
    assert result.ok and result.code == NEW_FILE and result.attempts == 2
    fix = server.requests[1].messages[-1]["content"]
    assert "your file is the reference policy least_outstanding, unchanged up to names" in fix


def test_a_dry_run_refusal_goes_back_to_the_model(server):
    """The seam for the sandbox's dry run: its reasons go back like the check's."""
    seen: list[str] = []

    def dry_run(code: str) -> list[str]:
        seen.append(code)
        return ["line 20: replica.waiting[5] raised IndexError"] if len(seen) == 1 else []

    fixed = NEW_FILE.replace("1024", "2048")
    server.push(ok(fenced(NEW_FILE)), ok(fenced(fixed)))
    llm = proposer(server)
    llm.dry_run = dry_run
    result = llm.propose(request(), passes)
    assert result.ok and result.code == fixed and seen == [NEW_FILE, fixed]
    assert "IndexError" in server.requests[1].messages[-1]["content"]
    server.push(ok(fenced(NEW_FILE.replace("1024", "4096"))))
    strict = proposer(server, max_check_retries=0)
    strict.dry_run = dry_run
    assert not strict.propose(request(), no_sorting).ok and len(seen) == 2  # the check first
    assert len(server.requests) == 3 and server.remaining == 0


def test_check_that_raises_does_not_escape(server):
    def broken(code: str) -> list[str]:
        raise RuntimeError("checker bug")

    server.push(ok(fenced(NEW_FILE)))
    result = proposer(server).propose(request(), broken)
    assert not result.ok and "checker bug" in result.reason


def test_429_waits_for_retry_after(server):
    server.push(rate_limited(retry_after_s=0.3), ok(fenced(NEW_FILE)))
    # A backoff of its own would be far longer: the wait seen must be the server's 0.3 s.
    result = proposer(server, backoff_s=5.0, max_backoff_s=10.0).propose(request(), passes)
    assert result.ok
    first, second = server.requests
    gap = second.started - first.finished
    assert 0.28 <= gap < 1.5


def test_429_honours_retry_after_ms(server):
    server.push(rate_limited(retry_after_ms=200), ok(fenced(NEW_FILE)))
    result = proposer(server, backoff_s=5.0, max_backoff_s=10.0).propose(request(), passes)
    assert result.ok
    gap = server.requests[1].started - server.requests[0].finished
    assert 0.18 <= gap < 1.5


def test_500_then_success(server):
    server.push(error(500, "upstream exploded"), error(503), ok(fenced(NEW_FILE)))
    result = proposer(server).propose(request(), passes)
    assert result.ok and len(server.requests) == 3
    assert result.attempts == 1  # transport retries are not dialogue attempts


def test_persistent_500_gives_up_with_a_reason(server):
    server.push(*[error(500, "upstream exploded")] * 3)
    result = proposer(server, max_retries=2).propose(request(), passes)
    assert not result.ok and len(server.requests) == 3
    assert result.reason.startswith("endpoint error:")
    assert "500" in result.reason and "upstream exploded" in result.reason
    assert server.base_url in result.reason


def test_body_that_is_not_a_chat_completion(server):
    server.push(Reply(raw_body="<html>proxy error</html>"), Reply(raw_body="<html>again</html>"))
    result = proposer(server, max_retries=1).propose(request(), passes)
    assert not result.ok and len(server.requests) == 2
    assert "not a chat completion" in result.reason and not result.fatal


def test_reply_slower_than_timeout_is_retried(server):
    server.push(Reply(fenced(NEW_FILE), delay_s=3.0), ok(fenced(NEW_FILE)))
    start = time.monotonic()
    result = proposer(server, timeout_s=0.5).propose(request(), passes)
    assert result.ok and len(server.requests) == 2
    assert 0.45 < time.monotonic() - start < 2.8  # did not wait for the slow reply


def test_timeout_without_retries_is_reported(server):
    server.push(Reply(fenced(NEW_FILE), delay_s=2.0))
    result = proposer(server, timeout_s=0.5, max_retries=0).propose(request(), passes)
    assert not result.ok and "did not answer within 0.5 s" in result.reason


def test_401_is_not_retried_and_the_key_never_shows(server):
    server.push(error(401, f"Incorrect API key provided: {SECRET}"), ok(fenced(NEW_FILE)))
    llm = proposer(server)
    result = llm.propose(request(), passes)
    assert not result.ok and result.fatal and len(server.requests) == 1
    assert "401" in result.reason and server.base_url in result.reason
    assert SECRET not in result.reason
    assert SECRET not in repr(llm) and SECRET not in repr(llm.config)


def test_reasoning_model_parameters_are_learned(server):
    server.push(
        error(
            400,
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
        ),
        error(400, "Unsupported value: 'temperature' does not support 0.8 with this model."),
        ok(fenced(NEW_FILE)),
        ok(fenced(NEW_FILE)),
    )
    llm = proposer(server, model="o4-mini", max_retries=0)
    assert llm.propose(request(), passes).ok
    assert llm.propose(request(), passes).ok
    first, _, third, fourth = (r.body for r in server.requests)
    assert first["max_tokens"] == 4096 and first["temperature"] == 0.8
    for body in (third, fourth):
        assert body["max_completion_tokens"] == 4096
        assert "max_tokens" not in body and "temperature" not in body


def test_other_400_is_not_retried(server):
    server.push(error(400, "messages: too long"), ok(fenced(NEW_FILE)))
    result = proposer(server).propose(request(), passes)
    assert not result.ok and not result.fatal and len(server.requests) == 1
    assert "400" in result.reason and "too long" in result.reason


def test_404_unknown_model(server):
    server.push(error(404, "model 'nope' not found"))
    result = proposer(server, model="nope").propose(request(), passes)
    assert not result.ok and result.fatal and "404" in result.reason and "nope" in result.reason


def test_token_budget_stops_further_calls(server):
    server.push(*[ok(fenced(NEW_FILE), prompt_tokens=100, completion_tokens=50)] * 3)
    llm = proposer(server, token_budget=150)
    assert llm.propose(request(), passes).ok
    stopped = llm.propose(request(), passes)
    assert not stopped.ok and stopped.fatal and stopped.reason.startswith("budget exhausted")
    assert len(server.requests) == 1 and stopped.attempts == 0


def test_dollar_budget_stops_further_calls(server):
    server.push(*[ok(fenced(NEW_FILE), prompt_tokens=1000, completion_tokens=1000)] * 3)
    # Custom price for a local model name: $1 + $3 per 1M tokens -> $0.004 a call.
    llm = proposer(
        server, model="local-coder", prices={"local-coder": (1.0, 3.0)}, usd_budget=0.006
    )
    results = [llm.propose(request(), passes) for _ in range(3)]
    assert [r.ok for r in results] == [True, True, False]
    assert results[0].cost_usd == pytest.approx(0.004)
    assert "$0.0080 of $0.0060" in results[2].reason
    assert len(server.requests) == 2


def test_budget_counts_check_retries_mid_dialogue(server):
    server.push(*[ok(fenced(code), prompt_tokens=100, completion_tokens=50)
                  for code in _variants(3)])
    result = proposer(server, token_budget=300).propose(request(), no_sorting)
    assert not result.ok and result.reason.startswith("budget exhausted")
    assert len(server.requests) == 2 and len(result.raw_replies) == 2


def test_missing_usage_is_estimated_and_unknown_model_is_free(server):
    server.push(ok(fenced(NEW_FILE), prompt_tokens=None, completion_tokens=None))
    result = proposer(server, model="qwen2.5-coder:7b").propose(request(), passes)
    assert result.ok and result.completion_tokens > 0 and result.cost_usd == 0.0


def test_several_proposals_in_flight(server):
    def echo_parent(body: dict) -> Reply:
        # Answer with a file naming the parent the prompt was about, slowly.
        prompt = body["messages"][-1]["content"]
        parent_id = prompt.split("## Parent `", 1)[1].split("`", 1)[0]
        return Reply(fenced(NEW_FILE + f"# from {parent_id}\n"), delay_s=0.4)

    server.push(*[echo_parent] * 4)
    llm = proposer(server, concurrency=4)
    results = llm.propose_many([request(f"c{i}") for i in range(4)], passes)
    assert all(r.ok for r in results) and len(server.requests) == 4
    assert server.max_in_flight >= 2  # the server held several requests at once
    assert [r.code.splitlines()[-1] for r in results] == [f"# from c{i}" for i in range(4)]
    assert llm.spent.calls == 4 and llm.spent.prompt_tokens == 400


def test_local_endpoint_needs_no_key(server):
    server.push(ok(fenced(NEW_FILE)))
    llm = LLMProposer(env={"OPENAI_BASE_URL": server.base_url, "OPENAI_MODEL": "llama3"})
    assert llm.propose(request(), passes).ok
    assert server.requests[0].body["model"] == "llama3"


def test_config_resolution_and_prices():
    cfg = LLMConfig()
    assert not cfg.endpoint_configured({})
    assert cfg.endpoint_configured({"OPENAI_MODEL": "m", "OPENAI_BASE_URL": "http://x/v1"})
    assert cfg.endpoint_configured({"OPENAI_MODEL": "m", "OPENAI_API_KEY": "k"})
    assert not cfg.endpoint_configured({"OPENAI_API_KEY": "k"})  # no model named
    assert cfg.price("gpt-4o-mini-2024-07-18") == (0.15, 0.60)  # longest prefix wins
    assert cfg.price("gpt-4o-2024-08-06") == (2.50, 10.00)
    assert cfg.price("llama3") == (0.0, 0.0)
    parsed = LLMConfig.from_mapping(
        {"model": "m", "prices": {"m": {"prompt": 1, "completion": 2}, "n": [3, 4]}}
    )
    assert parsed.price("m") == (1.0, 2.0) and parsed.price("n") == (3.0, 4.0)
    with pytest.raises(ValueError, match="tmeout_s"):
        LLMConfig.from_mapping({"tmeout_s": 3})
    with pytest.raises(ValueError, match="no API key"):
        LLMProposer(LLMConfig(model="gpt-4o"), env={})
    with pytest.raises(ValueError, match="no model"):
        LLMProposer(LLMConfig(base_url="http://127.0.0.1:9/v1"), env={})


def test_retry_after_parsing():
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_s({"retry-after": "soon"}) is None and retry_after_s({}) is None


def test_api_doc_covers_every_field_of_the_policy_api():
    doc = render_api_doc()
    for view in (
        api.ReplicaView,
        api.WaitingView,
        api.RequestView,
        api.ReplicaLoad,
        api.ClusterView,
    ):
        for name in view._fields:
            assert f"\n  {name}: " in doc, f"{view.__name__}.{name} is not documented"
            assert view.__name__ in doc
    assert f"at most {api.MAX_WAITING_VIEW}" in doc
    for rule in (
        "budget - decodes",
        "max_batch_tokens - decodes",
        "kv_free_tokens",
        "remaining",
        "0 <= i < len(cluster.replicas)",
    ):
        assert rule in doc


def test_request_api_doc_overrides_the_template(server):
    server.push(ok(fenced(NEW_FILE)))
    req = replace(request(), api_doc="CUSTOM API DOC")
    assert proposer(server).propose(req, passes).ok
    assert "CUSTOM API DOC" in server.requests[0].system_text
    assert "decode_context" not in server.requests[0].system_text


def test_every_slo_term_reaches_the_prompt():
    """A term the SLO config gains later is shown by name without a change to the proposers;
    the goal paragraph stays one line, and a term left unset is not shown."""
    slo = {**OBJECTIVE.slo, "ttft_per_token_s": 0.0002, "tbt_p99_s": 0.5, "unset_s": None}
    text = PromptBuilder().user(request(objective=replace(OBJECTIVE, slo=slo)))
    assert "\nother SLO terms: tbt_p99_s = 0.5, ttft_per_token_s = 0.0002\n" in text
    assert "unset_s" not in text
    plain = PromptBuilder().user(request())
    assert "other SLO terms" not in plain and "\ncluster: " in plain


def test_an_unscored_parent_says_so():
    req = request()
    req = replace(req, parent=ParentInfo("c0001", PARENT), inspirations=(), notes=(),
                  baseline_params=None)
    text = PromptBuilder().user(req)
    assert "score: not scored yet\n" in text and "note:" not in text and "## Other" not in text
    assert "tuned params" not in text and "baseline tuned params" not in text


# ------------------------------------------------------------------------------------------
# The [proposer.llm] table and the run options: every setting takes effect or is refused


def test_budget_keys_in_the_llm_table_are_refused_in_one_line(tmp_path):
    from autotuner.config import ConfigError, load_config

    for key, home in (("token_budget", "[budget] tokens"), ("usd_budget", "[budget] usd")):
        path = tmp_path / f"{key}.toml"
        path.write_text(f"[proposer.llm]\n{key} = 5\n")
        with pytest.raises(ConfigError) as err:
            load_config(path)
        message = str(err.value)
        assert "\n" not in message and f"proposer.llm: {key}" in message and home in message


def test_campaign_budget_and_seed_reach_the_llm_proposer():
    from autotuner.campaign import make_proposer
    from autotuner.config import load_config

    base = {
        "proposer.kind": "llm",
        "proposer.llm.model": "m",
        "proposer.llm.base_url": "http://127.0.0.1:9/v1",
        "seed": 3,
        "budget.tokens": 1000,
        "budget.usd": 2.5,
    }
    llm, _ = make_proposer(load_config(**base))
    assert (llm.config.token_budget, llm.config.usd_budget, llm.config.seed) == (1000, 2.5, 3)
    llm, _ = make_proposer(load_config(**base, **{"proposer.llm.seed": 11}))
    assert llm.config.seed == 11  # set in the table: it wins over the campaign's seed


def test_llm_model_option_and_its_deprecated_alias(tmp_path, capsys, monkeypatch):
    from autotuner.commands.main import main

    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL"):
        monkeypatch.delenv(var, raising=False)
    common = ["run", "--proposer", "llm", "--results-dir", str(tmp_path)]
    # The model is taken (the error is the missing key, not a missing model) either way.
    assert main([*common, "--name", "a", "--llm-model", "m1"]) == 2
    err = capsys.readouterr().err
    assert "no API key" in err and "deprecated" not in err
    assert main([*common, "--name", "b", "--model", "m1"]) == 2
    err = capsys.readouterr().err
    assert "no API key" in err and err.count("--model is deprecated here, use --llm-model") == 1
    assert not list(tmp_path.iterdir())  # nothing half-made left behind


# ------------------------------------------------------------------ preflight (one round trip)
def test_preflight_is_one_small_uncharged_request(server):
    server.push(ok("OK", prompt_tokens=12, completion_tokens=1))
    llm = proposer(server, token_budget=1000)
    line = llm.preflight()
    assert server.base_url in line and "answered" in line
    (req,) = server.requests
    assert req.body["max_tokens"] == 16 and req.body["model"] == "gpt-4o-mini"
    assert llm.spent.prompt_tokens == 0 and llm.spent.calls == 0


def test_preflight_of_an_unreachable_endpoint_fails_fast_with_one_line():
    import socket

    from autotuner.proposers.llm import EndpointError

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    llm = LLMProposer(LLMConfig(model="m", base_url=f"http://127.0.0.1:{port}/v1"), env={})
    t0 = time.monotonic()
    with pytest.raises(EndpointError) as info:
        llm.preflight()
    assert time.monotonic() - t0 < 10
    message = str(info.value)
    assert f"cannot reach http://127.0.0.1:{port}/v1" in message and "\n" not in message


def test_preflight_does_not_wait_out_a_long_timeout(server):
    server.push(Reply("OK", delay_s=3.0), Reply("OK", delay_s=3.0))
    llm = proposer(server, timeout_s=120.0)
    from autotuner.proposers.llm import EndpointError

    t0 = time.monotonic()
    with pytest.raises(EndpointError, match="did not answer within 0.5 s"):
        llm.preflight(timeout_s=0.5)
    assert time.monotonic() - t0 < 4


def test_preflight_reports_a_refused_model_without_retrying(server):
    from autotuner.proposers.llm import EndpointError

    server.push(error(404, "The model `gpt-9` does not exist"))
    with pytest.raises(EndpointError, match="404.*does not exist") as info:
        proposer(server, model="gpt-9").preflight()
    assert info.value.fatal and len(server.requests) == 1


# ------------------------------------------------------------------------------------------
# The prompt's size, progress while the model works, short failure lines


def _campaign_like_request(inspirations: int = 2) -> ProposalRequest:
    """What the default campaign's first request looks like: a seed as parent, with scores
    on five training workloads, and other seeds beside it."""
    from autotuner.config import CampaignConfig

    cfg = CampaignConfig()
    labels = [f"{s}/1" for s in sorted(cfg.workloads.scenarios)]

    def info(name: str, score: float) -> ParentInfo:
        return ParentInfo(name, baseline_path(name).read_text(), score,
                          {label: score + 0.01 * i for i, label in enumerate(labels)})

    objective = Objective(dict(cfg.slo.__dict__), cfg.slo.share, tuple(cfg.objective.ladder),
                          cfg.objective.goodput, cfg.gate.margin, "fixed_chunk")
    others = (info("prefix_aware", 0.02), info("power_of_two", 0.012))[:inspirations]
    c = cfg.cluster
    return ProposalRequest(info("sarathi_shrinking", 0.031), others, objective,
                           tuple(WorkloadInfo(label, 3.0) for label in labels),
                           ClusterInfo(c.replicas, c.model, c.gpu, c.tp, c.max_batch_tokens),
                           baseline_params={"chunk_size": 512})


def test_the_first_prompt_fits_the_default_cap_by_dropping_inspirations_first():
    from autotuner.proposers.prompt import messages_tokens

    cap = LLMConfig().prompt_token_cap
    assert cap is not None and cap <= 2000
    builder = PromptBuilder()
    req = _campaign_like_request()
    whole = builder.fit(req, None)
    assert whole.dropped == () and whole.tokens == messages_tokens(whole.messages) > cap
    fitted = builder.fit(req, cap)
    assert fitted.tokens <= cap
    assert fitted.dropped[0] == "inspiration power_of_two"  # the last one goes first
    assert "field notes" not in fitted.dropped  # the API keeps its meanings
    assert "hi = params[\"max_chunk\"]" in fitted.messages[1]["content"]  # the parent stays
    tight = builder.fit(req, 1200)
    assert tight.dropped == ("inspiration power_of_two", "inspiration prefix_aware",
                             "field notes")
    system = tight.messages[0]["content"]
    assert "  decodes: int\n" in system and "running requests that decode" not in system


def test_the_token_estimate_is_close_to_a_real_tokenizer_count():
    """Counts from llama.cpp's tokenizer of SmolLM2-135M (measured once, see
    prompt.estimate_tokens): the estimate must stay a slight overestimate."""
    from autotuner.proposers.prompt import estimate_tokens

    measured = {"fixed_chunk": 305, "least_outstanding": 131, "power_of_two": 256,
                "prefix_aware": 389, "sarathi_shrinking": 425}
    for name, tokens in measured.items():
        ratio = estimate_tokens(baseline_path(name).read_text()) / tokens
        assert 1.0 <= ratio <= 1.15, (name, ratio)
    assert estimate_tokens("") == 0


def test_docstrings_are_left_out_of_shown_code_and_edits_still_apply(server):
    from autotuner.proposers.prompt import strip_docstrings

    shown = strip_docstrings(PARENT)
    assert '"""' not in shown and shown.startswith("TUNABLES = {")
    assert all(line in PARENT.splitlines() for line in shown.splitlines())
    server.push(ok(EDITS))
    result = proposer(server).propose(request(), passes)
    assert result.ok and result.code == shown.replace(
        "for req in replica.waiting:", "for req in sorted(replica.waiting, key=lambda r: "
        "r.remaining):")


def test_progress_is_reported_per_attempt_and_status_shows_the_call_in_flight(server):
    import threading

    events = []
    fixed = PARENT.replace("min(req.remaining, room, kv_room)", "min(req.remaining, room, 4096)")
    server.push(ok(fenced(NEW_FILE), delay_s=0.6), ok(fenced(fixed)))
    llm = proposer(server)
    llm.progress = events.append
    seen: list[str] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            seen.append(llm.status())
            time.sleep(0.05)

    watcher = threading.Thread(target=poll)
    watcher.start()
    try:
        result = llm.propose(request(), no_sorting)
    finally:
        done.set()
        watcher.join()
    assert result.ok
    assert [e.state for e in events] == ["asking", "checking", "asking", "checking", "done"]
    assert [e.attempt for e in events] == [1, 1, 2, 2, 2]
    assert events[-1].tokens == 300 and events[2].prompt_tokens > 0
    assert events[1].elapsed_s >= 0.5
    line = next(s for s in seen if s)
    assert line.startswith("proposal 1: attempt 1/3, ~") and "prompt tokens sent" in line
    assert llm.status() == ""  # nothing in flight any more


def test_failure_lines_are_short_and_the_whole_reason_is_kept():
    from autotuner.proposers.prompt import brief

    long = "check rejected after 3 attempts: " + "; ".join(
        f"line {i}: the built-in 'print' is not allowed (policies may not write output)"
        for i in range(6))
    short = brief(long)
    assert len(short) <= 200 and "\n" not in short and short.endswith("...")
    assert short.startswith("check rejected after 3 attempts: line 0:")
    assert brief("a\n  b") == "a b"


# ------------------------------------------------------------------ the campaign's dry run
def test_the_campaigns_dry_run_reports_a_run_time_failure_and_passes_a_sound_file():
    """The dry run the campaign gives the LLM proposer runs the file in the sandbox: an error
    that only shows when the policy runs comes back as a reason; a sound policy gives none."""
    from autotuner.campaign.proposers import sandbox_dry_run
    from autotuner.config import load_config

    try:
        from autotuner.isolation import detect_backend

        detect_backend()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no sandbox backend works here: {exc}")
    dry_run = sandbox_dry_run(load_config())
    assert dry_run(baseline_path("least_outstanding").read_text()) == []
    broken = baseline_path("fixed_chunk").read_text().replace(
        "return request.id % len(cluster.replicas)", "return len(cluster.replicas)")
    assert broken != baseline_path("fixed_chunk").read_text()
    reasons = dry_run(broken)
    assert reasons and "replica 4 does not exist" in " ".join(reasons), reasons


def _diagnosis(worst: str | None):
    """A parent's diagnosis losing 60 % on ``worst`` and 20 % on the inter-token tail (None:
    level with the baseline everywhere)."""
    from autotuner.diagnose import Diagnosis, Figure, WorkloadDiagnosis

    figures = [Figure("tbt_tail", 0.06 if worst else 0.05, 0.05),
               Figure("imbalance", 0.1, 0.1), Figure("preemptions", 0.1, 0.1)]
    if worst:
        figures = [f if f.axis != worst else Figure(worst, 0.16, 0.1) for f in figures]
    return Diagnosis("c0007", "fixed_chunk", "train", tuple(
        WorkloadDiagnosis(label, 0.0, (1.0,), tuple(figures)) for label in ("chat/1", "mixed/1")))


def test_each_request_names_one_idea_from_the_diagnosis_else_in_turn():
    """'Improve the parent' alone let a small model send the parent back; each request names
    one change, chosen deterministically, in the API's own field names."""
    import re

    from autotuner.api_views import views
    from autotuner.proposers.prompt import DIRECTIONS, direction

    builder = PromptBuilder()
    req = request()
    ideas = [builder.user(req, number=n).split("idea: ", 1)[1].split("\n", 1)[0]
             for n in range(1, len(DIRECTIONS) + 2)]
    assert ideas[:-1] == list(DIRECTIONS.values()) and ideas[-1] == ideas[0]  # in turn
    assert builder.user(req, number=3) == builder.user(req, number=3)
    # The worst measured axis picks it, whatever the number; a parent level with the baseline
    # (nothing material) falls back to the turn.
    for axis in ("imbalance", "preemptions"):
        assert direction(_diagnosis(axis), 5) == DIRECTIONS[axis]
    assert direction(_diagnosis(None), 2) == list(DIRECTIONS.values())[1]
    # Dropping the table to fit the cap keeps the idea the table chose.
    diagnosed = replace(req, parent=replace(req.parent, diagnosis=_diagnosis("preemptions")))
    tight = builder.fit(diagnosed, 1200, number=1)
    assert "diagnostics" in tight.dropped
    assert f"idea: {DIRECTIONS['preemptions']}" in tight.messages[1]["content"]
    # Every field an idea names exists on a view the policy is given.
    fields = {name for view in views().values() for name in view.field_names}
    for idea in DIRECTIONS.values():
        named = set(re.findall(r"\b[a-z]+_[a-z_]+\b", idea)) | set(
            re.findall(r"\b(?:replica|cluster|r|req)\.(\w+)", idea))
        assert named <= fields, (idea, named - fields)


def test_a_refusal_goes_back_beside_the_line_it_names_and_repairs_sample_hotter(server):
    from autotuner.proposers.llm.proposer import REPAIR_TEMPERATURE_MAX, REPAIR_TEMPERATURE_STEP

    def where_sorted(code: str) -> list[str]:
        return [f"line {n}: sorted() is not allowed here"
                for n, line in enumerate(code.splitlines(), 1) if "sorted(" in line]

    server.push(*[ok(fenced(code)) for code in _variants(3)])
    proposer(server, max_check_retries=2, temperature=0.8).propose(request(), where_sorted)
    fix = server.requests[1].messages[-1]["content"]
    assert "that line: `for req in sorted(replica.waiting, key=lambda r: r.remaining):`" in fix
    temps = [r.body["temperature"] for r in server.requests]
    assert temps == pytest.approx([0.8, 0.8 + REPAIR_TEMPERATURE_STEP,
                                   min(0.8 + 2 * REPAIR_TEMPERATURE_STEP,
                                       REPAIR_TEMPERATURE_MAX)])
    # A reply without code has no line to show; a temperature above the ceiling is left alone.
    assert "that line" not in PromptBuilder().fix(["no python block"], None)
    server.push(*[ok(fenced(code)) for code in _variants(2)])
    proposer(server, max_check_retries=1, temperature=1.5).propose(request(), no_sorting)
    assert [r.body["temperature"] for r in server.requests[3:]] == [1.5, 1.5]


def test_a_mistake_with_one_fix_is_fixed_by_the_tool_without_another_call(server):
    """floor without its import and a replica's index as .index: the tool writes the fixes in,
    the same check passes the result, no second call is paid for, and the record says so."""
    slipped = NEW_FILE.replace("take = min(req.remaining, room, kv_room)",
                               "take = floor(min(req.remaining, room, kv_room) * 0.9)")
    assert "floor" in slipped and passes(slipped)
    server.push(ok(fenced(slipped)), ok(fenced(NEW_FILE)))
    result = proposer(server).propose(request(), passes)
    assert result.ok and len(server.requests) == 1 and passes(result.code) == []
    assert "from math import floor\n" in result.code
    assert result.fixes == ("added 'from math import floor'",)
    assert result.calls[0].fixes == result.fixes and result.calls[0].outcome == "ok"


def test_what_the_tool_cannot_fix_goes_back_with_its_fixes_in_and_a_repeat_still_ends(server):
    slipped = NEW_FILE.replace("take = min(req.remaining, room, kv_room)",
                               "take = ceil(min(req.remaining, room, kv_room) * share)")
    reasons = passes(slipped)
    assert any("'share'" in r for r in reasons) and any("'ceil'" in r for r in reasons)
    server.push(ok(fenced(slipped)), ok(fenced(slipped)), ok(fenced(NEW_FILE)))
    result = proposer(server).propose(request(), passes)
    fix = server.requests[1].messages[-1]["content"]
    assert "from math import ceil" in fix and "'share'" in fix and "'ceil'" not in fix
    assert not result.ok and len(server.requests) == 2  # the same reply again: no third call
    assert result.reason.startswith("the reply repeated the previous attempt")
    assert result.calls[0].fixes == ("added 'from math import ceil'",)


def test_a_file_before_the_replys_first_fence_is_read(server):
    """Qwen2.5-Coder-1.5B went on from the prompt's fence: the file, a closing fence, prose."""
    server.push(ok(f"{NEW_FILE}```\n\n## Task\n\nidea: shortest first\n"))
    result = proposer(server).propose(request(), passes)
    assert result.ok and result.code == NEW_FILE and len(server.requests) == 1


def test_a_dry_runs_illegal_decision_goes_back_with_what_the_rule_asks():
    """The dry run names a rule but no line: the repair message says what the code must do."""
    reason = ("illegal decision: partition(replica 1 at t=0.682s): chunk of 0 tokens for "
              "request 1 (1..19 allowed)")
    repair = PromptBuilder().repair([reason], NEW_FILE)
    assert f"1. {reason}\n   to keep the rule: every chunk is 1 to req.remaining tokens" in repair
    assert "# <- problem" not in repair and "with as few changed lines as you can" in repair
    assert "to keep the rule" not in PromptBuilder().repair(["line 3: no"], NEW_FILE)
