"""What goes back to a model whose file fails: the line of the failure, and what to write there.

A small model (Qwen2.5-Coder-1.5B) wrote params["now"] for replica.now; the check passed it, the
dry run said only "raised KeyError: 'now'", and the model sent the same file back. Each failure
now names its line, and the check refuses a params key that TUNABLES does not declare.
"""

from __future__ import annotations

import pytest

from autotuner.check import check_reasons
from autotuner.policy import load_policy, read_policy_source
from autotuner.proposers.prompt import PromptBuilder, offending_line
from autotuner.resources import baseline_path
from autotuner.sim.engine import ClusterSpec, simulate
from autotuner.sim.workload import make_workload

PARENT = baseline_path("sarathi_shrinking").read_text()


def _line_of(code: str, text: str) -> int:
    return next(n for n, line in enumerate(code.splitlines(), 1) if text in line)


def test_a_params_key_not_in_tunables_is_refused_with_the_fix():
    code = PARENT.replace('hi = params["max_chunk"]', 'hi = params["max_chunk"] + params["now"]')
    (reason,) = check_reasons(code)
    now_line = _line_of(code, 'params["now"]')
    assert reason.startswith(f"line {now_line}: params['now']: ")
    assert "declared: decodes_for_min, max_chunk, min_chunk" in reason
    assert "replica.now" in reason and "cluster.now" not in reason  # partition has no cluster
    typo = check_reasons(PARENT.replace('params["max_chunk"]', 'params["max_chunks"]', 1))
    assert len(typo) == 1 and "did you mean params['max_chunk']?" in typo[0]
    # In route the field named is the one route can reach; a declared seed is fine.
    routed = PARENT.replace("return request.id % len(cluster.replicas)",
                            'return params["waiting_tokens"] % len(cluster.replicas)')
    assert "cluster.replicas[i].waiting_tokens" in check_reasons(routed)[0]
    seeded = PARENT.replace("TUNABLES = {", 'TUNABLES = {\n    "seed": {"type": "int", "low": 0, '
                            '"high": 9, "default": 0},', 1).replace(
        "return request.id % len(cluster.replicas)",
        'return params["seed"] % len(cluster.replicas)')
    assert check_reasons(seeded) == [] and check_reasons(PARENT) == []


def test_a_policy_exception_names_its_line_and_the_fix_shows_it():
    code = PARENT.replace("share = min(", "share = statistics.mean([]) + min(", 1)
    code = "import statistics\n" + code
    policy = load_policy(read_policy_source(code, "p.py"), {})
    result = simulate(ClusterSpec(replicas=1, max_batch_tokens=16384),
                      make_workload("chat", 5, seed=0), policy)
    line = _line_of(code, "statistics.mean([])")
    assert result.error is not None
    # The policy's line, not statistics.py's (the deepest frame is in the standard library).
    assert result.error.endswith(f"(at line {line})"), result.error
    assert "raised StatisticsError: " in result.error
    shown = offending_line(f"policy error: {result.error}", code)
    assert shown == code.splitlines()[line - 1].strip()
    fix = PromptBuilder().fix([f"policy error: {result.error}"], code)
    assert f"that line: `{shown}`" in fix
    # No line for a reply without code, nor for a line the file does not have.
    assert offending_line("raised KeyError: 'x' (at line 999)", code) == ""
    assert offending_line("deadline 5 missed", code) == ""


def test_the_dry_run_tries_every_scenario():
    """A budget that ignores max_batch_tokens passed 40 chat requests (the first scenario) and
    failed the evaluation on long prompts, after the repair loop was over: the dry run covers
    every scenario of the campaign, so it comes back while the model can still fix it."""
    import pytest

    from autotuner.campaign.proposers import sandbox_dry_run
    from autotuner.config import load_config

    try:
        from autotuner.isolation import detect_backend

        detect_backend()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no sandbox backend works here: {exc}")
    greedy = '''TUNABLES = {}


def partition(replica, params):
    budget = replica.decodes + replica.waiting_tokens
    chunks = []
    kv = replica.kv_free_tokens
    for req in replica.waiting:
        take = min(req.remaining, kv)
        if take <= 0:
            break
        chunks.append((req.id, take))
        kv -= take
    return (budget, tuple(chunks))
'''
    cfg = load_config()
    assert cfg.workloads.scenarios[0] == "chat" and len(cfg.workloads.scenarios) > 1
    reasons = sandbox_dry_run(cfg)(greedy)
    assert reasons and "exceed max_batch_tokens" in reasons[0], reasons
    assert sandbox_dry_run(cfg)(PARENT) == []


def test_a_tunable_read_as_a_field_is_told_to_read_params():
    (reason,) = check_reasons(PARENT.replace('hi = params["max_chunk"]', "hi = replica.max_chunk"))
    assert "which has no field 'max_chunk'" in reason
    assert reason.endswith("""'max_chunk' is a tunable: read it as params["max_chunk"]""")


@pytest.mark.parametrize("expr", ["best.id", "best.index", "best.replica_id"])
def test_a_replica_index_asked_for_by_another_name_is_told_the_field(expr: str) -> None:
    code = ("TUNABLES = {}\n\n\ndef route(request, cluster, params):\n"
            "    best = min(cluster.replicas, key=lambda r: r.waiting_tokens)\n"
            f"    return {expr}\n")
    (reason,) = check_reasons(code)
    assert reason.startswith(f"line 6: '{expr}'")
    assert "write .replica instead of" in reason
