"""Credit where it is due: a proposal that is a reference policy (up to names, docstrings and
tunable defaults) is labelled as that reference and never promoted as a discovery.

The campaigns are the smallest of tests/test_campaign.py (multiturn, 150 requests, in-process
simulator), with a scripted proposer returning reference policies in disguise.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import pytest

from autotuner import archive as A
from autotuner.archive import Archive
from autotuner.campaign import Campaign
from autotuner.config import load_config
from autotuner.diagnose import (
    Diagnosis,
    Explanation,
    Figure,
    WorkloadDiagnosis,
    diagnosis_table,
    explain,
)
from autotuner.identity import canonical, sha256
from autotuner.proposers.base import Proposal, ProposalRequest
from autotuner.proposers.prompt import PromptBuilder
from autotuner.resources import baseline_path
from autotuner.review.show import show_text
from autotuner.review.status import status_text
from autotuner.scoring import in_process

TINY = {
    "workloads.scenarios": ["multiturn"], "workloads.screen": ["multiturn"],
    "workloads.requests": 150, "workloads.scenario_requests": {},
    "workloads.heldout_seeds": [1001, 1002], "objective.ladder": [1.0, 1.4],
    "budget.trials": 2, "budget.proposals": 2, "search.seeds": [],
    "search.islands": 1, "search.finalists": 2, "gate.bootstrap": 500,
    "gate.capacity_rel_tol": 0.05, "parallelism": 1,
    # campaign mechanics on tiny instances: capacities unchecked on longer runs, which
    # tests/test_gaming.py, test_gate.py and test_scoring.py exercise (it doubles a gate's cost)
    "gate.capacity_max_multiple": 1,
}

# least_outstanding with another docstring, a chunk-size tunable (another default) and the
# fixed-chunk partition it inherits written out under other names: the promoted "win".
DISGUISED_LEAST_OUTSTANDING = '''"""A new router: balances outstanding work (my idea)."""

TUNABLES = {
    "chunk": {"type": "int", "low": 64, "high": 4096, "log": True, "default": 1024},
}


def partition(replica, params):
    size = params["chunk"]
    left = min(size, replica.max_batch_tokens) - replica.decodes
    kv_left = replica.kv_free_tokens
    picked = []
    for w in replica.waiting:
        n = min(w.remaining, left, kv_left)
        if n <= 0:
            break
        picked.append((w.id, n))
        left -= n
        kv_left -= n
    return (size, tuple(picked))


def route(request, cluster, params):
    """Least loaded first."""
    target = min(cluster.replicas, key=lambda rep: (rep.outstanding, rep.waiting_tokens,
                                                   rep.replica))
    return target.replica
'''


class ScriptedProposer:
    name = "scripted"

    def __init__(self, codes: list[str]):
        self.codes = list(codes)
        self.requests: list[ProposalRequest] = []

    def propose(self, request, check):
        self.requests.append(request)
        return Proposal(self.codes.pop(0), True, "") if self.codes else \
            Proposal(None, False, "empty")


@pytest.fixture(autouse=True)
def no_endpoint(monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL"):
        monkeypatch.delenv(var, raising=False)


def _campaign(tmp_path: Path, name: str, codes: list[str], **extra):
    cfg = load_config(**{**TINY, "results_dir": str(tmp_path / "results"), "name": name,
                         **extra})
    out = io.StringIO()
    proposer = ScriptedProposer(codes)
    rc = Campaign(cfg, simulator=in_process, stream=out, tty=False, proposer=proposer).run()
    assert rc == 0, out.getvalue()
    SENT[name] = proposer.requests
    return cfg, out.getvalue()


SENT: dict[str, list[ProposalRequest]] = {}  # campaign name -> the requests its proposer got


def test_a_disguised_reference_is_labelled_scored_and_never_promoted(tmp_path):
    fixed = baseline_path("fixed_chunk").read_text()
    fixed_copy = fixed.replace('"default": 512', '"default": 300').replace(
        "Fixed-chunk baseline", "My new chunked scheduler")
    cfg, out = _campaign(tmp_path, "copies", [DISGUISED_LEAST_OUTSTANDING, fixed_copy])
    with Archive(cfg.campaign_dir / "archive.sqlite") as archive:
        first, second = archive.candidates(origin="proposal")
        # scored like any proposal (least_outstanding gains on multi-turn sessions, so without
        # the label it would be a finalist), but labelled and kept from the gate
        assert first.copy_of == "least_outstanding" and not first.promotable
        assert first.train_score is not None and first.train_score > 0
        assert first.status == A.TUNED and first.gate is None
        assert archive.get_meta("promoted") is None
        # the baseline in disguise is the baseline: refused as a duplicate of it, labelled
        assert second.copy_of == "fixed_chunk" and second.status == A.PROPOSAL_FAILED
        assert second.failure.startswith("duplicate of baseline")
        assert "the reference policy fixed_chunk" in second.failure
        shown = show_text(archive, first)
        table = status_text(cfg.campaign_dir, cfg, archive)
    assert "copy of the reference policy least_outstanding" in shown
    assert "never promoted as a discovery" in shown
    assert "copy of least_outstanding" in table
    assert f"{first.id} (copy of least_outstanding) is not a finalist" in out
    assert "promoted: none" in out and "best on training: none" in out
    # each request showed the parent's diagnostics, read from its stored training runs
    first_request, second_request = SENT["copies"]
    diag = first_request.parent.diagnosis
    assert first_request.parent.candidate_id == "baseline" and diag is not None
    (row,) = diag.workloads
    assert row.workload == "multiturn@1" and len(row.rates) == 2
    assert {f.axis for f in row.figures} >= {"ttft_tail", "tbt_tail", "imbalance", "cache_hits"}
    assert all(f.policy == f.baseline for f in row.figures)  # the baseline against itself
    prompt = PromptBuilder().user(first_request)
    assert "diagnostics (mean over the loads):" in prompt
    assert "workload ttft_p99_s gap_p99_ms imbalance_pct cache_hit_pct" in prompt
    assert "zero on every workload: preempt" in prompt
    assert second_request.parent.candidate_id == "baseline"  # asked before c0001 was scored


def test_a_word_for_word_seed_copy_is_a_duplicate_of_that_seed(tmp_path):
    seed = baseline_path("least_outstanding").read_text()
    cfg, _ = _campaign(tmp_path, "seedcopy", [seed, DISGUISED_LEAST_OUTSTANDING],
                       **{"search.seeds": ["least_outstanding"], "budget.proposals": 2})
    with Archive(cfg.campaign_dir / "archive.sqlite") as archive:
        proposals = archive.candidates(origin="proposal")
        assert [c.copy_of for c in proposals] == ["least_outstanding"] * 2
        assert all(c.status == A.PROPOSAL_FAILED for c in proposals)
        assert all(c.failure.startswith("duplicate of seed-least_outstanding")
                   for c in proposals)
        assert archive.get_meta("promoted") is None


def test_an_archive_from_before_the_label_opens_with_it(tmp_path):
    import sqlite3

    db = tmp_path / "archive.sqlite"
    with Archive(db) as archive:
        archive.add_candidate(origin="proposal", code="x = 1\n", status=A.PENDING)
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE candidates DROP COLUMN copy_of")
    conn.execute("ALTER TABLE candidates DROP COLUMN explanation")
    conn.commit()
    conn.close()
    with Archive(db) as archive:
        (cand,) = archive.candidates()
        assert cand.copy_of == "" and cand.explanation is None and cand.promotable


HONEST = (Path(__file__).resolve().parent / "gaming" / "honest_cache_aware.py").read_text()


def _stored_mean(archive: Archive, code: str, params: dict, label: str, rates: list[float],
                 field: str) -> float:
    """A metric's mean over the runs at ``rates`` on ``label``, read straight from the
    archive's evaluations (not through autotuner.diagnose)."""
    rows = archive.conn.execute(
        "SELECT rate, result FROM evaluations WHERE code_sha=? AND params=? AND workload=?",
        (sha256(code), canonical(params), label)).fetchall()
    by_rate = {round(r, 9): json.loads(res) for r, res in rows if r is not None}
    values = [by_rate[round(r, 9)][field] for r in rates]
    return sum(values) / len(values)


def test_a_winner_is_explained_by_what_its_measured_figures_say(tmp_path):
    """Cache-aware routing wins on multi-turn sessions by keeping a conversation where its
    history is cached: the explanation names that (prefix-cache hits, or the balance it keeps),
    never the inter-token tail, which its larger chunk makes worse; and each figure it cites is
    the stored runs' own."""
    # least_outstanding as the reference bar: on two 600-request held-out instances the honest
    # router clears prefix_aware by a lower bound a hair under the margin (as in test_campaign)
    cfg, out = _campaign(tmp_path, "why", [HONEST], **{"budget.proposals": 1,
                                                       "search.finalists": 1,
                                                       "gate.references": ["least_outstanding"]})
    with Archive(cfg.campaign_dir / "archive.sqlite") as archive:
        (cand,) = archive.candidates(origin="proposal")
        assert cand.status == A.PROMOTED, (cand.status, cand.failure, out)
        base = archive.get_meta("baseline")
        why = Explanation.from_dict(cand.explanation)
        shown = show_text(archive, cand)
        assert why.changed == ("route",) and why.tunables_added == ("decode_weight",)
        assert why.carried_by in ("cache_hits", "imbalance") and why.symptom != "tbt_tail"
        (credit,) = why.gains
        assert credit.workload == "multiturn@101" and credit.gain > 0
        assert [f.axis for f in credit.causes][0] == why.carried_by
        diag = why.diagnosis.workloads[0]
        assert list(credit.causes) + list(credit.symptoms) + list(credit.costs) and all(
            f in diag.figures for f in (*credit.causes, *credit.symptoms, *credit.costs))
        for figure in diag.figures:  # every figure is the stored runs' mean at the same rates
            field = {"cache_hits": "prefix_hit_rate", "imbalance": "replica_imbalance",
                     "ttft_tail": "ttft_p99", "tbt_tail": "tbt_p99"}.get(figure.axis)
            if field is None:
                continue
            assert figure.policy == pytest.approx(_stored_mean(
                archive, cand.code, cand.params, credit.workload, list(diag.rates), field))
            assert figure.baseline == pytest.approx(_stored_mean(
                archive, base["code"], base["params"], credit.workload, list(diag.rates), field))
    record = json.loads((cfg.campaign_dir / "promotions" / f"{cand.id}.json").read_text())
    assert Explanation.from_dict(record["explanation"]) == why
    for line in why.lines():
        assert line in shown and f"why: {line}" in out
    print("\n".join(why.lines()))


def _five_workload_diagnosis(labels: list[str]) -> Diagnosis:
    figures = (Figure("ttft_tail", 9.45, 7.61), Figure("tbt_tail", 0.0545, 0.0447),
               Figure("imbalance", 0.17, 0.079), Figure("preemptions", 0.12, 0.05),
               Figure("cache_hits", 0.11, 0.19))
    return Diagnosis("c0003", "fixed_chunk", "train",
                     tuple(WorkloadDiagnosis(label, 0.01, (1.0, 1.5), figures)
                           for label in labels))


def test_the_diagnostics_table_is_short_and_the_first_prompt_keeps_its_cap():
    """The default campaign's first request (the baseline as parent, five workloads, every
    axis present) keeps the table under the default cap, dropping only inspirations; a
    scored parent's row is its figures' relative changes, + where it loses."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_llm_proposer import _campaign_like_request

    from autotuner.proposers.llm.config import LLMConfig

    req = _campaign_like_request()
    diag = _five_workload_diagnosis([w.label for w in req.workloads])
    fixed = baseline_path("fixed_chunk").read_text()
    first = replace(req, parent=replace(req.parent, candidate_id="baseline", code=fixed,
                                        diagnosis=diag))
    cap = LLMConfig().prompt_token_cap
    fitted = PromptBuilder().fit(first, cap)
    assert fitted.tokens <= cap <= 2000
    assert all(d.startswith("inspiration") for d in fitted.dropped)
    prompt = fitted.messages[1]["content"]
    assert "workload ttft_p99_s gap_p99_ms imbalance_pct preempt_per_100_req cache_hit_pct\n" \
        "bursty/1 9.4 54 17 12 11\n" in prompt
    table = diagnosis_table(diag, same_as_baseline=False)
    assert table.columns == ("workload", "ttft_p99", "gap_p99", "imbalance", "preempt",
                             "cache_hit")
    row = diag.workloads[0]
    assert table.rows[0] == ("bursty/1", *(f"{100 * f.loss:+.0f}" for f in row.figures))
    assert table.rows[0][-1] == "+42"  # fewer cache hits than the baseline: a loss
    same = Diagnosis("c0003", "fixed_chunk", "train", (WorkloadDiagnosis(
        "chat/1", 0.0, (1.0,), (Figure("ttft_tail", 1.0, 0.98),)),))
    assert diagnosis_table(same, same_as_baseline=False).rows == (("chat/1", "0"),)  # noise


def test_autotuner_gate_on_a_disguised_reference_says_it_is_that_reference(tmp_path):
    import argparse

    from autotuner.commands.gate import run as run_gate_command
    from autotuner.config import write_config
    from autotuner.policy import read_policy_file

    folder = tmp_path / "results" / "c"
    cfg = load_config(**{"name": "c", "results_dir": str(tmp_path / "results"),
                         "workloads.scenarios": ["multiturn"], "workloads.screen": [],
                         "workloads.heldout_requests": {"multiturn": 150},
                         "workloads.heldout_seeds": [1001],
                         "gate.bootstrap": 200, "gate.capacity_rel_tol": 0.1,
                         "gate.references": [], "parallelism": 1})
    write_config(cfg, folder / "config.toml")
    fixed = baseline_path("fixed_chunk")
    with Archive(folder / "archive.sqlite") as archive:
        archive.set_meta("baseline", {"name": "fixed_chunk.py", "code": fixed.read_text(),
                                      "params": read_policy_file(fixed).defaults(),
                                      "caps": {"train": {}}, "reference": {"train": {}}})
    policy = tmp_path / "my_router.py"
    policy.write_text(DISGUISED_LEAST_OUTSTANDING)
    out = io.StringIO()
    args = argparse.Namespace(policy=str(policy), config=None, campaign=str(folder),
                              sandbox=None, parallelism=1, json=False)
    run_gate_command(args, out, io.StringIO(), simulator=in_process)
    assert (f"note: {policy} is the reference policy least_outstanding (the same program up to "
            "names, docstrings and tunable defaults): not a discovery") in out.getvalue()


def test_explain_ranks_causes_where_it_gains_and_lists_costs_and_flat_workloads():
    won = WorkloadDiagnosis("multiturn@1", 0.2, (1.0, 1.4), (
        Figure("cache_hits", 0.30, 0.10),  # hits tripled: -200 % in the worse direction
        Figure("imbalance", 0.05, 0.10),  # halved: -50 %
        Figure("tbt_tail", 0.09, 0.05),  # worse: a cost
        Figure("ttft_tail", 3.0, 6.0),
        Figure("preemptions", 0.0, 0.0)))
    flat = WorkloadDiagnosis("chat@1", 0.005, (1.0, 1.4), (
        Figure("imbalance", 0.01, 0.30), Figure("ttft_tail", 0.5, 0.5)))
    old = WorkloadDiagnosis("bursty@1", 0.1, (1.0,), ())  # runs cached before the figures
    diag = Diagnosis("c0004", "fixed_chunk.py", "validation", (won, flat, old))
    why = explain(diag, changed=["route"], tunables=["chunk_size", "w"],
                  baseline_tunables=["chunk_size"])
    assert why.carried_by == "cache_hits" and why.symptom == "ttft_tail"
    assert why.flat == ("chat@1",)  # its imbalance moved, but it does not gain there
    credit = {g.workload: g for g in why.gains}
    assert [f.axis for f in credit["multiturn@1"].causes] == ["cache_hits", "imbalance"]
    assert [f.axis for f in credit["multiturn@1"].costs] == ["tbt_tail"]
    assert credit["bursty@1"].causes == () and why.tunables_added == ("w",)
    lines = why.lines()
    assert lines[0] == ("changes route against the fixed_chunk.py baseline (partition as the "
                        "baseline's); tunables +w")
    assert lines[2] == ("  multiturn@1 +20.0%: prefix-cache hits 10% -> 30%; replica "
                        "imbalance 0.1 -> 0.05; TTFT p99 6 s -> 3 s; at a cost: inter-token "
                        "gap p99 0.05 s -> 0.09 s")
    assert Explanation.from_dict(json.loads(json.dumps(why.to_dict()))) == why
    table = diagnosis_table(diag, same_as_baseline=True)
    assert "preempt" in table.zero and table.rows[2][1:] == ("-",) * (len(table.columns) - 1)
