"""The SQLite archive: candidates, lineage, scores, the evaluation cache, and crash safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from autotuner import archive as A
from autotuner.archive import Archive, ArchiveError, evaluation_key, program_sha

PARENT = "TUNABLES = {}\n\n\ndef route(request, cluster, params):\n    return 0\n"
CHILD = PARENT.replace("return 0", "return request.id % len(cluster.replicas)")


@pytest.fixture
def archive(tmp_path):
    with Archive(tmp_path / "archive.sqlite") as a:
        yield a


def test_candidates_lineage_diff_and_files(archive, tmp_path):
    files = tmp_path / "candidates"
    base = archive.add_candidate(candidate_id="baseline", origin="baseline", code=PARENT,
                                 status=A.TUNED, files_dir=files)
    child = archive.add_candidate(origin="proposal", code=CHILD, status=A.PENDING,
                                  parent_id=base.id, island=2, proposer="offline",
                                  prompt_tokens=10, completion_tokens=5, cost_usd=0.01,
                                  raw=["reply"], files_dir=files)
    grandchild = archive.add_candidate(origin="proposal", code=None, parent_id=child.id,
                                       status=A.PROPOSAL_FAILED, failure="no code in reply")
    assert child.id == "c0001" and grandchild.id == "c0002"
    assert (files / "baseline.py").read_text() == PARENT
    assert (files / "c0001.py").read_text() == CHILD
    assert not (files / "c0002.py").exists()
    assert "-    return 0" in child.diff and "+    return request.id" in child.diff
    assert [c.id for c in archive.lineage(grandchild.id)] == ["c0002", "c0001", "baseline"]
    assert child.raw == ["reply"] and child.island == 2
    assert archive.spend() == {"prompt_tokens": 10, "completion_tokens": 5, "tokens": 15,
                               "cost_usd": pytest.approx(0.01)}
    updated = archive.update(child.id, status=A.TUNED, params={"x": 1.5}, train_score=0.12)
    assert updated.params == {"x": 1.5} and updated.train_score == 0.12
    assert [c.id for c in archive.candidates(status=A.TUNED)] == ["baseline", "c0001"]
    assert [c.id for c in archive.candidates(origin="proposal", island=2)] == ["c0001"]
    assert archive.count(origin="proposal") == 2


def test_update_refuses_unknown_columns_statuses_and_ids(archive):
    c = archive.add_candidate(origin="proposal", code=PARENT, status=A.PENDING)
    with pytest.raises(ArchiveError):
        archive.update(c.id, code="x")
    with pytest.raises(ArchiveError):
        archive.update(c.id, status="great")
    with pytest.raises(ArchiveError):
        archive.update("c9999", status=A.FAILED)


def test_scores_and_meta(archive):
    c = archive.add_candidate(origin="proposal", code=PARENT, status=A.TUNED)
    archive.set_scores(c.id, "train", {"chat@1": (0.1, {"goodput": [1, 2]}),
                                       "mixed@1": (float("nan"), {})})
    archive.set_scores(c.id, "train", {"chat@1": (0.2, {"goodput": [3]})})
    scores = archive.scores(c.id)
    assert scores["train"]["chat@1"] == (0.2, {"goodput": [3]})
    assert scores["train"]["mixed@1"][0] is None
    archive.set_meta("baseline", {"params": {"chunk_size": 512}})
    assert archive.get_meta("baseline") == {"params": {"chunk_size": 512}}
    assert archive.get_meta("nothing", 3) == 3


def test_evaluation_cache_is_keyed_by_every_input(archive):
    k = evaluation_key("sha", {"a": 1}, {"scenario": "chat", "seed": 1}, 10.0, {"slo": 2})
    assert k == evaluation_key("sha", {"a": 1}, {"seed": 1, "scenario": "chat"}, 10.0, {"slo": 2})
    for other in (
        evaluation_key("sha2", {"a": 1}, {"scenario": "chat", "seed": 1}, 10.0, {"slo": 2}),
        evaluation_key("sha", {"a": 2}, {"scenario": "chat", "seed": 1}, 10.0, {"slo": 2}),
        evaluation_key("sha", {"a": 1}, {"scenario": "chat", "seed": 2}, 10.0, {"slo": 2}),
        evaluation_key("sha", {"a": 1}, {"scenario": "chat", "seed": 1}, 11.0, {"slo": 2}),
        evaluation_key("sha", {"a": 1}, {"scenario": "chat", "seed": 1}, 10.0, {"slo": 3}),
    ):
        assert other != k
    assert archive.get_evaluation(k) is None
    archive.put_evaluation(k, candidate_id=None, code_sha="sha", params={"a": 1},
                           workload="chat@1", rate=10.0, result={"attainment": 0.5}, seconds=1.0)
    # a second write of the same key keeps the first (a finished evaluation is final)
    archive.put_evaluation(k, candidate_id=None, code_sha="sha", params={"a": 1},
                           workload="chat@1", rate=10.0, result={"attainment": 0.9}, seconds=1.0)
    assert archive.get_evaluation(k) == {"attainment": 0.5}
    assert archive.get_evaluations([k, "missing"]) == {k: {"attainment": 0.5}}
    assert archive.evaluation_count() == 1


def test_a_failed_transaction_leaves_nothing(archive):
    with pytest.raises(RuntimeError):
        with archive.transaction():
            archive.conn.execute("INSERT INTO meta(key, value) VALUES('x', '1')")
            raise RuntimeError("boom")
    assert archive.get_meta("x") is None


def test_program_identity_ignores_comments_and_layout(archive):
    commented = "# a comment\n" + PARENT.replace("return 0", "return 0  # zero")
    assert program_sha(commented) == program_sha(PARENT)
    assert program_sha(CHILD) != program_sha(PARENT)
    archive.add_candidate(origin="proposal", code=PARENT, status=A.PENDING)
    assert archive.same_program(commented) == "c0000"
    assert archive.same_program(CHILD) is None


def test_failure_categories(archive):
    for status, failure in [
        (A.PROPOSAL_FAILED, "check rejected after 3 attempts: line 2: import os"),
        (A.PROPOSAL_FAILED, "no code in reply"),
        (A.PROPOSAL_FAILED, "duplicate of c0001 (the same program)"),
        (A.FAILED, "chat@1: illegal decision: partition(replica 0): budget must be >= 0"),
        (A.FAILED, "chat@1: the worker was killed (timed out)"),
        (A.SCREENED_OUT, "screen score -10% below threshold"),
    ]:
        archive.add_candidate(origin="proposal", code=None, status=status, failure=failure)
    assert archive.failures_by_reason() == {
        "check": 1, "no code": 1, "duplicate": 1, "illegal decision": 1, "timeout": 1,
        "screened out": 1}


WRITER = textwrap.dedent("""
    import sys
    from autotuner import archive as A
    from autotuner.archive import Archive
    a = Archive(sys.argv[1])
    code = "TUNABLES = {}\\n\\n\\ndef route(request, cluster, params):\\n    return %d\\n"
    i = 0
    print("ready", flush=True)
    while True:
        c = a.add_candidate(origin="proposal", code=code % i, status=A.PENDING,
                            parent_id=None if i == 0 else "c%04d" % (i - 1))
        a.update(c.id, status=A.TUNED, params={"i": i}, train_score=i / 1000)
        a.set_scores(c.id, "train", {"w%d" % k: (k / 10, {"k": k}) for k in range(5)})
        a.put_evaluation("key%d" % i, candidate_id=c.id, code_sha="s", params={}, workload="w",
                         rate=1.0, result={"i": i, "pad": "x" * 2000}, seconds=0.1)
        i += 1
""")


def test_sigkill_at_any_moment_leaves_a_consistent_archive(tmp_path):
    """Kill a busy writer several times at random moments; every time the archive opens, passes
    SQLite's integrity check, and holds only whole changes (each row complete)."""
    db = tmp_path / "archive.sqlite"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for delay in (0.3, 0.55, 0.8):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE,
                                env=env)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with Archive(db) as a:
            assert a.integrity_ok()
            rows = a.candidates()
            assert rows, "the writer wrote nothing before it was killed"
            for c in rows:
                assert c.code is not None and c.code_sha == A.sha256(c.code)
                assert c.diff == "" or c.diff.startswith("---")
            # updates and score sets are whole: a candidate's 5 scores come all or none
            for c in rows:
                n = len(a.scores(c.id).get("train", {}))
                assert n in (0, 5)
            # the next writer starts after the last whole candidate (ids stay unique)
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()
