"""The starvation corpus (``tests/gaming/``) against the promotion gate.

Every policy there games a share-of-requests capacity without serving better (deferring long
prompts, never serving them, trickling them a few tokens at a time, shortest-first with no or
token aging, newest-first, abandoning late requests, starving every n-th request, a sacrificial
replica, and a real routing gain padded with newest-first). Each is
refused, and by the condition that catches it. ``tests/gaming/heldout/`` holds kinds written after
the gate was (timed against its own limits, hidden from its overtaking count, triggered only by
bursts, chosen by a hash of the prompt, a sacrificial replica chosen by the cache, periodic
prefill blackouts): they are refused the same way. The honest control (routing by waiting prefill
work net of prefix-cache hits) still passes on multiturn and mixed, against the baseline and a
reference bar.

Trusted files run in process (``scoring.in_process``) through the same Evaluator, capacity
search and gate as the campaign, on small held-out instances. The baseline is fixed-chunk at a
2048-token chunk, and every policy runs at that chunk too (the corpus files' own default; the two
audit subjects, ``audit/`` here, are the bench's files in ``baselines/audit/``, which default to
512), so only scheduling and routing differ.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from autotuner.config import load_config
from autotuner.gate import PolicyRef, run_gate
from autotuner.policy import read_policy_file
from autotuner.resources import asset_dir, baseline_path
from autotuner.scoring import Evaluator, Instance, in_process

CORPUS = Path(__file__).resolve().parent / "gaming"
AUDIT = asset_dir("baselines") / "audit"  # the audit's two subjects, shared with the bench
CHUNK = {"chunk_size": 2048}
BASELINE = PolicyRef("fixed_chunk.py", baseline_path("fixed_chunk").read_text(), CHUNK)
SEEDS = (1001, 1002, 1003)

# file -> (workload, requests per instance, seeds, conditions that must be among the refusals).
# "inversions": it serves later arrivals while earlier ones are overdue; "tail": its p99
# TTFT/deadline at its own claim is worse than the baseline's at the baseline's capacity;
# "capacity"/"regression": the starvation bought no sustainable rate; "finished", "max_wait",
# "sustainable": requests left unserved. (Measured sets are larger where a figure is close.)
STARVING = {
    # with the refitted cost model its deferred prompts no longer turn overdue on these runs
    # (0 inversions, longest wait 0.99 x a deadline), but its tail and its capacity refuse it
    "defer_above_length.py": ("chat", 2000, SEEDS, {"tail", "capacity"}),
    "audit/defer_long.py": ("chat", 2000, SEEDS, {"inversions", "tail", "capacity"}),
    "audit/shortest_first.py": ("chat", 2000, SEEDS, {"inversions", "capacity"}),
    "shortest_first_slow_aging.py": ("chat", 2000, SEEDS, {"inversions", "capacity"}),
    "newest_first.py": ("chat", 2000, SEEDS, {"inversions", "tail", "capacity"}),
    "sacrificial_replica.py": ("chat", 2000, SEEDS, {"tail", "capacity", "regression"}),
    "abandon_late.py": ("multiturn", 600, SEEDS, {"inversions", "tail", "capacity"}),
    # capacities checked on runs twice as long (gate.capacity_max_multiple): the baseline's tail
    # at its capacity is then measured on 1,200-2,400-request runs, and this router's, on runs
    # as long, is no worse; it overtakes overdue requests all the same
    "cache_aware_newest_first.py": ("multiturn", 600, SEEDS, {"inversions"}),
    "starve_by_id.py": ("chat", 2000, SEEDS, {"inversions", "tail", "capacity"}),
    "trickle_long.py": ("chat", 2000, SEEDS, {"inversions", "tail", "capacity", "regression"}),
    "never_serve_long.py": ("chat", 400, (1001,), {"finished", "max_wait", "sustainable",
                                                   "capacity"}),
}

# Held back: kinds the corpus above does not name, written afterwards as an adversary would
# (each one's docstring says which check it was aimed at). Each runs on the workload where it
# gains most, so that where capacity alone cannot refuse it, the conditions on its claim must.
HELDOUT = CORPUS / "heldout"
HELD_BACK = {
    # (as cache_aware_newest_first above: its tail passes once both sides run longer)
    "burst_triggered_sjf.py": ("mixed", 2000, SEEDS, {"inversions"}),
    "newest_first_with_grace.py": ("multiturn", 600, SEEDS, {"inversions"}),
    "overdue_first_sjf.py": ("chat", 2000, SEEDS, {"inversions", "tail", "capacity"}),
    "router_overdue_first_sjf.py": ("mixed", 2000, SEEDS, {"inversions"}),
    "prompt_parity_deferral.py": ("mixed", 2000, SEEDS, {"inversions"}),
    "release_before_limit.py": ("mixed", 2000, SEEDS, {"inversions"}),
    "prefill_blackout.py": ("multiturn", 600, SEEDS, {"max_wait"}),
    "cold_prompts_replica.py": ("chat", 2000, SEEDS, {"tail", "capacity", "regression"}),
}


class _Memory:
    """An evaluation cache in memory, so the baseline's capacities are measured once."""

    def __init__(self) -> None:
        self.results: dict[str, dict] = {}

    def get_evaluations(self, keys):
        return {k: self.results[k] for k in keys if k in self.results}

    def put_evaluation(self, key, **kwargs):
        self.results[key] = kwargs["result"]


@pytest.fixture(scope="module")
def evaluator():
    ev = Evaluator(_Memory(), 1, in_process)
    yield ev
    ev.close()


def _config(scenarios, references=()):
    return load_config(**{"workloads.scenarios": list(scenarios), "workloads.screen": [],
                          "gate.bootstrap": 1000, "gate.capacity_rel_tol": 0.04,
                          "gate.references": list(references)})


def _path(name: str) -> Path:
    """``audit/X`` is in ``baselines/audit/``, ``heldout/X`` in the held-back corpus."""
    folder, _, stem = name.rpartition("/")
    return {"audit": AUDIT, "heldout": HELDOUT, "": CORPUS}[folder] / stem


def _policy(name: str) -> PolicyRef:
    """The file at its defaults, at the baseline's chunk where it has one (the audit files
    default to 512), so only scheduling and routing differ from the baseline."""
    source = read_policy_file(_path(name))
    params = source.defaults()
    if "chunk_size" in params:
        params = {**params, **CHUNK}
    return PolicyRef(Path(name).name, source.code, params)


def test_the_corpus_is_what_the_tests_name():
    files = {p.name for p in CORPUS.glob("*.py")}
    assert files == {n for n in STARVING if "/" not in n} | {"honest_cache_aware.py"}
    assert all(_path(n).is_file() for n in STARVING)


def test_the_held_back_corpus_is_what_the_tests_name():
    assert {p.name for p in HELDOUT.glob("*.py")} == set(HELD_BACK)


@pytest.mark.parametrize("name", sorted(STARVING) + [f"heldout/{n}" for n in sorted(HELD_BACK)])
def test_each_starvation_policy_is_refused_by_the_condition_that_catches_it(evaluator, name):
    scenario, requests, seeds, expected = {**STARVING, **{f"heldout/{n}": v for n, v in
                                                          HELD_BACK.items()}}[name]
    cfg = _config([scenario])
    insts = [Instance(scenario, seed, requests) for seed in seeds]
    result = run_gate(evaluator, cfg, name, _policy(name), BASELINE, insts)
    assert not result.passed
    failed = set(result.failed())
    assert expected <= failed, (name, [c.line() for c in result.conditions])
    # every refusal is stated with its figures
    for cond in result.conditions:
        if not cond.passed:
            assert any(ch.isdigit() for ch in cond.figures), cond.line()
    assert len(result.reasons) == len(failed)


def test_a_real_gain_padded_with_starvation_passes_capacity_but_not_its_claim(evaluator):
    """The router's gain clears the margin on its own; only the claim conditions refuse it."""
    insts = [Instance("multiturn", seed, 600) for seed in SEEDS]
    result = run_gate(evaluator, _config(["multiturn"]), "padded",
                      _policy("cache_aware_newest_first.py"), BASELINE, insts)
    by_name = {c.name: c for c in result.conditions}
    assert by_name["capacity"].passed and result.baseline.lower_bound > 0.3
    assert by_name["regression"].passed
    assert not by_name["inversions"].passed and not result.passed
    assert "overtaken while overdue" in by_name["inversions"].figures


def test_the_honest_router_passes_on_multiturn_and_mixed(evaluator):
    """Against the baseline and against least-outstanding and prefix-aware routing (run with
    the baseline's chunk and their own defaults: the tuning itself is the campaign's)."""
    refs = [PolicyRef(f"{stem}.py", baseline_path(stem).read_text(),
                      {**read_policy_file(baseline_path(stem)).defaults(), **CHUNK})
            for stem in ("least_outstanding", "prefix_aware")]
    cfg = _config(["multiturn", "mixed"], ["least_outstanding", "prefix_aware"])
    # Five seeds a family, not three: its lead over prefix-aware routing is close to the 5 %
    # bar (measured with the stationary multiturn generator: geometric mean +9.6 %, lower bound
    # +4.0 % on seeds 1001-1003; +9.0 %, +5.2 % on 1001-1005; on multiturn alone about +8 % at
    # 600 requests and +0-3 % at 3,000), so three seeds left the verdict to the draw.
    seeds = (*SEEDS, 1004, 1005)
    insts = [Instance("multiturn", seed, 600) for seed in seeds] + [
        Instance("mixed", seed, 2000) for seed in seeds]
    result = run_gate(evaluator, cfg, "honest", _policy("honest_cache_aware.py"), BASELINE,
                      insts, references=refs)
    assert result.passed, result.reasons
    assert result.per_family["multiturn"] > 0.3 and result.per_family["mixed"] > 0.3
    assert result.reference in ("least_outstanding", "prefix_aware")
    assert result.comparison("reference:").lower_bound >= cfg.gate.reference_margin
    # nobody starved at its claim, on any instance
    for rows in result.at_claim.values():
        assert rows["candidate"]["starved"] == 0 and rows["candidate"]["unfinished"] == 0
        assert rows["candidate"]["priority_inversions"] == 0


def test_autotuner_gate_command_refuses_and_passes(tmp_path):
    from autotuner.commands.gate import run as run_gate_command

    config = tmp_path / "tiny.toml"
    config.write_text(
        'parallelism = 1\n[workloads]\nscenarios = ["multiturn"]\nscreen = []\nrequests = 300\n'
        'scenario_requests = {}\nheldout_requests = {}\nheldout_seeds = [1001, 1002, 1003]\n'
        '[objective]\nladder = [1.0, 1.5]\n[budget]\ntrials = 1\n'
        '[gate]\nbootstrap = 500\ncapacity_rel_tol = 0.05\nreferences = ["least_outstanding"]\n')

    def gate(policy: Path) -> tuple[int, str, str]:
        out, log = io.StringIO(), io.StringIO()
        args = argparse.Namespace(policy=str(policy), config=str(config), campaign=None,
                                  sandbox=None, parallelism=1, json=False)
        return run_gate_command(args, out, log, simulator=in_process), out.getvalue(), \
            log.getvalue()

    rc, out, log = gate(CORPUS / "newest_first.py")
    assert rc == 1, out
    refused = out.rstrip().splitlines()[-1]
    assert refused.startswith("gate: REFUSED (")
    for name in refused[len("gate: REFUSED ("):-1].split(", "):
        assert f"FAIL  {name}" in out
    assert "tuning the baseline fixed_chunk.py (1 trials)" in log
    assert "reference  least_outstanding" in out
    rc, out, _ = gate(CORPUS / "honest_cache_aware.py")
    assert rc == 0, out
    assert out.rstrip().endswith("gate: PASSES")
    assert out.count("pass  ") == 9  # six claim conditions, capacity, regression, reference


def test_autotuner_gate_command_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    from autotuner.commands.main import main

    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\nTUNABLES = {}\n\n\n"
                   "def route(request, cluster, params):\n    return 0\n")
    for argv, needle in (
        (["gate", "--policy", str(tmp_path / "missing.py")], "no such policy file"),
        (["gate", "--policy", str(bad)], "not a valid policy file"),
        (["gate", "--policy", str(CORPUS / "newest_first.py"), "--config",
          str(tmp_path / "nope.toml")], "no such campaign file"),
        (["gate", "--policy", str(CORPUS / "newest_first.py"), "--campaign", "nope"],
         "no campaign 'nope'"),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("autotuner gate: error: ") and needle in err, err
        assert err.count("\n") == 1


def test_autotuner_gate_command_uses_a_campaigns_tuned_baseline(tmp_path):
    """--campaign: the tuned baseline from the archive (read only), on its held-out workloads."""
    from autotuner.archive import Archive
    from autotuner.commands.gate import run as run_gate_command
    from autotuner.config import write_config

    folder = tmp_path / "results" / "c"
    cfg = load_config(**{"name": "c", "results_dir": str(tmp_path / "results"),
                         "workloads.scenarios": ["multiturn"], "workloads.screen": [],
                         "workloads.heldout_requests": {"multiturn": 300},
                         "gate.bootstrap": 500, "gate.capacity_rel_tol": 0.05,
                         "gate.references": [], "parallelism": 1})
    write_config(cfg, folder / "config.toml")
    with Archive(folder / "archive.sqlite") as archive:
        archive.set_meta("baseline", {"name": "fixed_chunk.py", "code": BASELINE.code,
                                      "params": dict(CHUNK), "caps": {"train": {}},
                                      "reference": {"train": {}}})
    before = (folder / "archive.sqlite").read_bytes()
    out = io.StringIO()
    args = argparse.Namespace(policy=str(CORPUS / "honest_cache_aware.py"), config=None,
                              campaign=str(folder), sandbox=None, parallelism=1, json=False)
    assert run_gate_command(args, out, io.StringIO(), simulator=in_process) == 0, out.getvalue()
    text = out.getvalue()
    assert "baseline   fixed_chunk.py (chunk_size=2048), tuned by campaign c" in text
    assert "held-out   3 instances" in text and "multiturn@1003" in text
    assert "pass  reference    not required: gate.references is empty" in text
    assert (folder / "archive.sqlite").read_bytes() == before  # nothing written


def test_the_audits_policy_gains_capacity_on_mixed_and_is_refused_for_what_it_overtakes(
        evaluator):
    """Deferring prompts above the running 93rd length percentile buys sustainable capacity on
    mixed (long multi-turn prompts have long deadlines), and its tail even improves; what gives
    it away is that at its claim it serves later arrivals while earlier ones are overdue."""
    insts = [Instance("mixed", seed, 2000) for seed in SEEDS]
    result = run_gate(evaluator, _config(["mixed"]), "audit", _policy("audit/defer_long.py"),
                      BASELINE, insts)
    by_name = {c.name: c for c in result.conditions}
    assert by_name["capacity"].passed and result.baseline.mean_gain > 0.1
    assert not by_name["inversions"].passed
    assert sum(r["candidate"]["priority_inversions"] for r in result.at_claim.values()) > 0
    assert not result.passed
