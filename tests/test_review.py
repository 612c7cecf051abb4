"""Reviewing a campaign: status, diff, show, replay (through ``autotuner.commands.main.main``)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

from autotuner.archive import Archive
from autotuner.campaign import Campaign
from autotuner.commands.main import main
from autotuner.config import load_config
from autotuner.proposers.base import Proposal
from autotuner.resources import baseline_path
from autotuner.review import candidate_diff
from autotuner.scoring import in_process

HONEST = (Path(__file__).resolve().parent / "gaming" / "honest_cache_aware.py").read_text()

FIXED = baseline_path("fixed_chunk").read_text()
LEAST = FIXED.replace(
    "def route(request, cluster, params):\n    return request.id % len(cluster.replicas)",
    "def route(request, cluster, params):\n"
    "    best = min(cluster.replicas, key=lambda r: (r.outstanding, r.waiting_tokens, r.replica))\n"
    "    return best.replica",
)


class Scripted:
    name = "scripted"

    def __init__(self, codes):
        self.codes = list(codes)

    def propose(self, request, check):
        if not self.codes:
            return Proposal(None, False, "no code in reply")
        return Proposal(self.codes.pop(0), True, "", attempts=1, model="scripted")


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    cfg = load_config(**{
        "name": "r", "results_dir": str(root / "results"),
        "workloads.scenarios": ["multiturn"], "workloads.screen": ["multiturn"],
        "workloads.requests": 150, "workloads.scenario_requests": {},
        "workloads.heldout_seeds": [1001, 1002, 1003], "objective.ladder": [1.0, 1.4],
        "budget.trials": 2, "budget.proposals": 2, "search.seeds": [], "search.finalists": 1,
        "gate.bootstrap": 500, "gate.capacity_rel_tol": 0.05, "gate.references": [],
        "parallelism": 1,
        # 150 multiturn requests are too few to rank two policies reliably: the review views
        # need a tuned proposal, whatever its score
        "search.screen_threshold": -0.5})
    rc = Campaign(cfg, proposer=Scripted([LEAST]), simulator=in_process, stream=io.StringIO(),
                  tty=False).run()
    assert rc == 0
    return cfg.campaign_dir


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_status_table_and_json(campaign, capsys):
    rc, out, _ = cli(capsys, "status", str(campaign))
    assert rc == 0
    assert "baseline" in out and "c0001" in out and "c0002" in out
    assert "proposal_failed" in out and "no code in reply" in out
    assert "failures by reason: no code 1" in out
    rc, out, _ = cli(capsys, "status", str(campaign), "--json")
    data = json.loads(out)
    ids = [c["id"] for c in data["candidates"]]
    assert ids == ["baseline", "c0001", "c0002"]
    assert data["phase"] == "done" and data["failures"] == {"no code": 1}
    assert "code" not in data["baseline"]


def test_diff_of_code_and_params(campaign, capsys):
    rc, out, _ = cli(capsys, "diff", str(campaign), "c0001")
    assert rc == 0
    assert "--- baseline.py" in out and "+++ c0001.py" in out
    assert "-    return request.id % len(cluster.replicas)" in out
    assert "+    return best.replica" in out
    assert "\x1b[" not in out  # piped: plain
    rc, colored, _ = cli(capsys, "diff", str(campaign), "1", "--color", "always")
    assert "\x1b[32m+    return best.replica" in colored
    rc, same, _ = cli(capsys, "diff", str(campaign), "c0001", "--against", "c0001")
    assert "identical" in same
    rc, _, err = cli(capsys, "diff", str(campaign), "c0002")
    assert rc == 2 and "has no code" in err
    rc, _, err = cli(capsys, "diff", str(campaign), "c0042")
    assert rc == 2 and "no candidate" in err


def test_show(campaign, capsys):
    rc, out, _ = cli(capsys, "show", str(campaign), "c0001")
    assert rc == 0
    assert "lineage: c0001" in out and "<- baseline" in out
    assert "train scores per workload" in out and "multiturn@1" in out
    assert "def route(request, cluster, params)" in out
    assert "cost:" in out
    rc, out, _ = cli(capsys, "show", str(campaign), "c0002")
    assert "failures: no code in reply" in out


def test_status_and_show_give_every_attempt_of_a_failed_proposal(campaign, capsys, tmp_path):
    import shutil

    from autotuner import archive as A

    folder = tmp_path / "r"
    shutil.copytree(campaign, folder)
    escape = FIXED.replace("    return request.id % len(cluster.replicas)",
                           "    ().__class__.__base__.__subclasses__()\n    return 0")
    importing = "import os\n" + FIXED
    replies = [f"```python\n{escape}```", "I cannot do that.", f"```python\n{importing}```"]
    with Archive(folder / "archive.sqlite") as archive:
        cand = archive.add_candidate(
            origin="proposal", code=None, status=A.PROPOSAL_FAILED, parent_id="baseline",
            failure="check rejected after 3 attempts: line 1: import os is not allowed",
            attempts=3, raw=replies, files_dir=folder / "candidates")
    rc, out, _ = cli(capsys, "show", str(folder), cand.id)
    assert rc == 0
    attempts = out.split("attempts (each reply checked again here):\n")[1].splitlines()[:3]
    assert attempts[0].startswith("  1: refused by the check:") and "__" in attempts[0]
    assert attempts[1] == "  2: no code in reply"
    assert attempts[2].startswith("  3: refused by the check:") and "import" in attempts[2]
    assert "--- proposer's reply 1 of 3 ---" in out and "__subclasses__" in out
    rc, out, _ = cli(capsys, "status", str(folder))
    lines = out.splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith(cand.id))
    assert lines[row + 1].startswith("    attempt 1: refused by the check: line 30")
    assert lines[row + 2] == "    attempt 2: no code in reply"
    assert lines[row + 3].startswith("    attempt 3: refused by the check:")
    rc, out, _ = cli(capsys, "status", str(folder), "--json")
    (data,) = [c for c in json.loads(out)["candidates"] if c["id"] == cand.id]
    assert len(data["attempts"]) == 3


def test_replay_beside_the_tuned_baseline(campaign, capsys):
    rc, out, err = cli(capsys, "replay", f"{campaign}:c0001", "--workload", "multiturn",
                       "--requests", "120", "--rate", "1.5", "--sandbox", "process")
    assert rc == 0, err
    assert "policy" in out and "baseline" in out and "SLO attainment" in out
    assert "TTFT p90" in out
    for row in ("longest wait", "wait/deadline", "late finish", "Jain", "starved", "inversions"):
        assert row in out
    rc, out, err = cli(capsys, "replay", f"{campaign}:c0001", "--workload", "multiturn",
                       "--requests", "120", "--capacity", "--json", "--sandbox", "process")
    assert rc == 0, err
    report = json.loads(out)
    row = report["results"][0]
    assert row["workload"] == "multiturn@1001"
    assert row["policy"]["capacity"] > 0 and row["baseline"]["capacity"] > 0
    assert row["gain"] == pytest.approx(row["policy"]["capacity"] / row["baseline"]["capacity"]
                                        - 1)
    assert report["baseline"].startswith("tuned fixed_chunk")
    # beside capacity: output tokens/s of both at 2 x the baseline's capacity
    sat = row["saturation"]
    assert sat["rate"] == pytest.approx(2 * row["baseline"]["capacity"])
    assert sat["policy"] > 0 and sat["baseline"] > 0
    assert row["policy"]["at_capacity"]["jain_slowdown"] > 0


def test_replay_of_a_policy_file_and_bad_targets(campaign, capsys, tmp_path):
    path = tmp_path / "p.py"
    path.write_text(LEAST)
    rc, out, err = cli(capsys, "replay", str(path), "--workload", "multiturn", "--requests",
                       "100", "--rate", "1.0", "--sandbox", "process")
    assert rc == 0, err
    assert "default parameters" in out
    rc, _, err = cli(capsys, "replay", str(tmp_path / "missing.py"))
    assert rc == 2 and "no such policy file" in err
    rc, _, err = cli(capsys, "replay", f"{campaign}:c0001", "--workload", "nope")
    assert rc == 2 and "unknown workload" in err


def test_diff_of_tuned_parameters(campaign, tmp_path):
    """The parameter diff, on a candidate whose tuned values certainly differ from the
    baseline's (the tiny campaign's own may or may not)."""
    from autotuner import archive as A

    folder = tmp_path / "r"
    shutil.copytree(campaign, folder)
    with Archive(folder / "archive.sqlite") as archive:
        base = archive.get("baseline")
        cand = archive.add_candidate(origin="proposal", code=LEAST, status=A.TUNED,
                                     parent_id="baseline",
                                     params={"chunk_size": base.params["chunk_size"] + 1},
                                     files_dir=folder / "candidates")
        text = candidate_diff(archive, cand, "baseline")
        same = candidate_diff(archive, archive.get(cand.id), cand.id)
    assert f"--- baseline tuned parameters\n+++ {cand.id} tuned parameters" in text
    assert f"-chunk_size = {base.params['chunk_size']}\n" in text
    assert f"+chunk_size = {base.params['chunk_size'] + 1}\n" in text
    assert same == f"{cand.id} and {cand.id} are identical (code and tuned parameters)\n"


@pytest.fixture(scope="module")
def promoted(tmp_path_factory):
    """A tiny campaign that promotes routing by waiting prefill work net of prefix-cache hits
    (the honest control of ``tests/gaming``; ``test_report`` uses the same campaign)."""
    root = tmp_path_factory.mktemp("promoted")
    cfg = load_config(**{
        "name": "p", "results_dir": str(root / "results"),
        "workloads.scenarios": ["multiturn"], "workloads.screen": ["multiturn"],
        "workloads.requests": 150, "workloads.scenario_requests": {},
        "workloads.heldout_seeds": [1001, 1002, 1003], "objective.ladder": [1.0, 1.4],
        "budget.trials": 2, "budget.proposals": 1, "search.seeds": [], "search.finalists": 1,
        "gate.bootstrap": 500, "gate.capacity_rel_tol": 0.05, "gate.references": [],
        "search.screen_threshold": -0.5, "parallelism": 1})
    rc = Campaign(cfg, proposer=Scripted([HONEST]), simulator=in_process,
                  stream=io.StringIO(), tty=False).run()
    assert rc == 0
    with Archive(cfg.campaign_dir / "archive.sqlite") as archive:
        assert archive.get_meta("promoted") == "c0001", archive.get("c0001").failure
    return cfg.campaign_dir


def test_a_promotion_is_reviewed_by_name_and_its_record_replays(promoted, capsys, tmp_path):
    assert (promoted / "promotions" / "c0001.py").is_file()
    assert (promoted / "promotions" / "baseline.py").is_file()
    rc, out, _ = cli(capsys, "diff", str(promoted), "promoted", "--against", "baseline")
    assert rc == 0 and "+++ c0001.py" in out and "--- baseline.py" in out
    rc, out, _ = cli(capsys, "show", str(promoted), "promoted")
    assert rc == 0 and out.startswith("candidate c0001: promoted")
    assert "gate: passed" in out and "pass  capacity" in out
    # the record alone repeats the gate, through the sandbox: the same capacities, and it passes
    record = promoted / "promotions" / "c0001.json"
    rc, out, err = cli(capsys, "replay", str(record), "--sandbox", "process", "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["identical_capacities"] is True and data["reproduced"]["passed"] is True
    assert data["reproduced"]["failed"] == []
    other = tmp_path / "other.json"
    other.write_text('{"kind": "something else"}')
    rc, _, err = cli(capsys, "replay", str(other))
    assert rc == 2 and err == f"autotuner replay: error: {other}: not a promotion record\n"


def test_replay_slo_overrides_are_checked(capsys):
    from autotuner.config import SLOConfig
    from autotuner.review import ReviewError, slo_override

    base = SLOConfig()
    assert slo_override(base) is base
    got = slo_override(base, ttft_s=10.0, share=0.8)
    assert (got.ttft_s, got.tpot_s, got.share) == (10.0, base.tpot_s, 0.8)
    with pytest.raises(ReviewError, match="--share"):
        slo_override(base, share=1.5)
    with pytest.raises(ReviewError, match="--tpot-slo"):
        slo_override(base, tpot_s=float("nan"))
