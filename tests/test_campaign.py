"""The campaign loop end to end: offline proposer, LLM proposer against a scripted server,
kill -9 and resume, Ctrl-C, and the real sandbox through the CLI.

Most campaigns here run trusted files (baselines and what proposers make of them) with the
in-process simulator so that they take seconds; one runs through ``autotuner run`` with the real
sandbox. Workloads are small multiturn instances (long sessions where routing matters, and short
runs).
"""

from __future__ import annotations

import io
import json
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
from autotuner.archive import Archive
from autotuner.campaign import Campaign, Progress
from autotuner.config import load_config
from autotuner.proposers.base import Proposal
from autotuner.resources import baseline_path
from autotuner.scoring import in_process

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from chat_server import ChatServer, ok  # noqa: E402

TINY = {
    "workloads.scenarios": ["multiturn"], "workloads.screen": ["multiturn"],
    "workloads.requests": 150, "workloads.scenario_requests": {},
    "workloads.heldout_seeds": [1001, 1002], "objective.ladder": [1.0, 1.4],
    "budget.trials": 2, "budget.proposals": 3, "search.seeds": ["least_outstanding"],
    "search.islands": 2, "search.finalists": 1, "gate.bootstrap": 500,
    "gate.capacity_rel_tol": 0.05, "parallelism": 1,
    # campaign mechanics on tiny instances: capacities unchecked on longer runs, which
    # tests/test_gaming.py, test_gate.py and test_scoring.py exercise (it doubles a gate's cost)
    "gate.capacity_max_multiple": 1,
}


def tiny(tmp_path: Path, **extra) -> object:
    return load_config(**{**TINY, "results_dir": str(tmp_path / "results"), **extra})


@pytest.fixture(autouse=True)
def no_endpoint(monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL"):
        monkeypatch.delenv(var, raising=False)


def run(cfg, **kwargs) -> tuple[int, str]:
    out = io.StringIO()
    rc = Campaign(cfg, simulator=in_process, stream=out, tty=False, **kwargs).run()
    return rc, out.getvalue()


def test_tiny_offline_campaign_end_to_end(tmp_path):
    cfg = tiny(tmp_path, name="t")
    rc, out = run(cfg)
    assert rc == 0, out
    assert "proposer: offline proposer (no LLM endpoint configured)" in out
    folder = tmp_path / "results" / "t"
    assert load_config(folder / "config.toml") == cfg
    assert (folder / "optuna.journal").stat().st_size > 0
    with Archive(folder / "archive.sqlite") as archive:
        assert archive.get_meta("phase") == "done"
        assert archive.integrity_ok()
        base = archive.get("baseline")
        assert base.status == A.TUNED and "chunk_size" in base.params
        meta = archive.get_meta("baseline")
        assert set(meta["caps"]["train"]) == {"multiturn@1"}
        assert set(meta["caps"]["validation"]) == {"multiturn@101"}
        proposals = archive.candidates(origin="proposal")
        assert len(proposals) == 3
        for cand in proposals:
            assert cand.parent_id is not None and cand.proposer == "offline"
            if cand.code is not None:
                assert (folder / "candidates" / f"{cand.id}.py").read_text() == cand.code
                assert cand.diff.startswith("---")
        assert any(c.status in (A.TUNED, A.FINALIST, A.PROMOTED, A.GATE_FAILED)
                   for c in proposals)
        seed = archive.get("seed-least_outstanding")
        assert seed.status == A.TUNED and seed.island == 1
        # the archive's promotion and the files agree, whichever way the gate went
        promoted = archive.get_meta("promoted")
        winners = [c.id for c in proposals if c.status == A.PROMOTED]
        assert winners == archive.get_meta("promotions", []) == ([promoted] if promoted else [])
        written = sorted(p.name for p in (folder / "promotions").glob("c*"))
        assert written == sorted(f"{c}.{ext}" for c in winners for ext in ("json", "py"))
    assert "finished" in out and "review: autotuner status" in out
    assert f"promoted: {promoted or 'none'}" in out

    # a finished campaign resumes to "finished", and a new run refuses to overwrite it
    rc, out = run(cfg, resume=True)
    assert rc == 0 and "is finished" in out and "nothing was changed" in out
    with pytest.raises(Exception, match="already exists"):
        Campaign(cfg, simulator=in_process, stream=io.StringIO()).run()


HONEST = (ROOT / "tests" / "gaming" / "honest_cache_aware.py").read_text()


def test_a_clearly_better_proposal_is_promoted_with_its_record(tmp_path):
    """Routing by waiting prefill net of prefix-cache hits gains capacity on multi-turn sessions
    honestly (tests/test_gate.py): the campaign validates it, gates it and promotes it, and the
    promoted files are the archived candidate's."""
    # the reference bar is least_outstanding: on two 600-request held-out instances the honest
    # router clears prefix_aware by +7.6 %, lower bound +5.0 %, a hair under the 5 % margin (its
    # margin over both is tested on larger instances in tests/test_gaming.py)
    cfg = tiny(tmp_path, name="win", **{"budget.proposals": 1, "search.seeds": [],
                                        "gate.references": ["least_outstanding"]})
    rc, out = run(cfg, proposer=ScriptedProposer([Proposal(HONEST, True, "")]))
    assert rc == 0, out
    folder = cfg.campaign_dir
    with Archive(folder / "archive.sqlite") as archive:
        (cand,) = archive.candidates(origin="proposal")
        assert cand.status == A.PROMOTED, (cand.status, cand.failure, out)
        assert cand.train_score > 0 and cand.validation_score > 0
        assert archive.get_meta("promoted") == cand.id == "c0001"
        assert archive.get_meta("promotions") == [cand.id]
        gate = cand.gate
    assert gate["passed"] and all(c["passed"] for c in gate["conditions"])
    record = json.loads((folder / "promotions" / "c0001.json").read_text())
    assert record["candidate"] == "c0001" and record["campaign"] == "win"
    assert record["params"] == cand.params and record["baseline"]["name"] == "fixed_chunk.py"
    assert (folder / "promotions" / "c0001.py").is_file()
    assert "PROMOTED c0001" in out and "promoted: c0001 (held-out capacity +" in out


class ScriptedProposer:
    """Returns what it is given, in order; records the requests."""

    name = "scripted"

    def __init__(self, proposals):
        self.proposals = list(proposals)
        self.requests = []

    def propose(self, request, check):
        self.requests.append(request)
        return self.proposals.pop(0) if self.proposals else Proposal(None, False, "empty")


def test_failures_are_archived_with_reasons_and_the_loop_goes_on(tmp_path):
    fixed = baseline_path("fixed_chunk").read_text()
    crash = fixed.replace("return request.id % len(cluster.replicas)", "return 99")
    bad_import = "import os\n" + fixed
    proposer = ScriptedProposer([
        Proposal(None, False, "no code in reply", prompt_tokens=10, completion_tokens=3,
                 cost_usd=0.5),
        Proposal(crash, True, ""),
        Proposal(bad_import, True, ""),
        Proposal(fixed + "\n# same program\n", True, ""),
    ])
    cfg = tiny(tmp_path, name="f", **{"budget.proposals": 4, "search.seeds": [],
                                       "budget.usd": 100.0})
    rc, out = run(cfg, proposer=proposer)
    assert rc == 0, out
    with Archive(cfg.campaign_dir / "archive.sqlite") as archive:
        by = {c.id: c for c in archive.candidates(origin="proposal")}
        reasons = [c.failure for c in by.values()]
        assert any("no code in reply" in r for r in reasons)
        assert any("illegal decision" in r or "replica 99" in r for r in reasons)
        assert any("check rejected" in r and "import" in r for r in reasons)
        assert any("duplicate of baseline" in r for r in reasons)
        assert archive.spend()["cost_usd"] == pytest.approx(0.5)
        cats = archive.failures_by_reason()
        assert cats.get("no code") == 1 and cats.get("check") == 1
    # the proposer saw the parent's scores and the objective
    req = proposer.requests[0]
    assert req.parent.candidate_id == "baseline" and req.objective.slo["ttft_s"] == cfg.slo.ttft_s
    assert "multiturn@1" in [w.label for w in req.workloads]


def test_llm_campaign_against_a_scripted_chat_server(tmp_path):
    fixed = baseline_path("fixed_chunk").read_text()
    better = fixed.replace(
        "def route(request, cluster, params):\n    return request.id % len(cluster.replicas)",
        "def route(request, cluster, params):\n"
        "    best = min(cluster.replicas, key=lambda r: (r.outstanding, r.replica))\n"
        "    return best.replica")
    replies = [
        ok("OK", prompt_tokens=13, completion_tokens=1),  # the setup's one test request
        ok("I would route by load, but here is only prose."),  # unusable: sent back once
        ok(f"Least outstanding routing:\n```python\n{better}```\n", prompt_tokens=1000,
           completion_tokens=500),
    ]
    with ChatServer(replies, default=ok("no code, sorry")) as server:
        cfg = tiny(tmp_path, name="llm", **{
            "proposer.kind": "llm", "proposer.llm.base_url": server.base_url,
            "proposer.llm.model": "gpt-4o-mini", "proposer.llm.max_check_retries": 1,
            "budget.proposals": 2, "search.seeds": [], "search.in_flight": 1})
        rc, out = run(cfg)
        requests = list(server.requests)
    assert rc == 0, out
    assert "LLM proposer: model gpt-4o-mini" in out and "answered a test request" in out
    assert requests[0].all_text == "Reply with the single word OK."
    assert "def partition" in requests[1].all_text and "capacity" in requests[1].all_text
    with Archive(cfg.campaign_dir / "archive.sqlite") as archive:
        first, second = archive.candidates(origin="proposal")
        assert first.code is not None and "min(cluster.replicas" in first.code
        assert first.attempts == 2 and first.model == "gpt-4o-mini"
        assert first.prompt_tokens == 1100 and first.completion_tokens == 550
        assert first.cost_usd == pytest.approx((1100 * 0.15 + 550 * 0.60) / 1e6)
        assert first.status in (A.TUNED, A.FINALIST, A.PROMOTED, A.GATE_FAILED)
        assert first.train_score is not None and first.train_score > 0
        assert second.status == A.PROPOSAL_FAILED and second.failure
        assert len(first.raw) == 2


# argv: the config overrides (JSON), the log of evaluations started, and optionally the name of
# the policy file (``c0002.py``) whose first evaluation never ends, so that a test's Ctrl-C lands
# mid-evaluation in the search with work left, whatever the machine's load.
# SIGINT is reset to Python's handler first: a process started from a non-interactive shell's
# background job (``pytest ... &``) inherits SIGINT ignored and Python keeps it ignored, while
# the Ctrl-C that these tests stand for reaches a terminal's foreground job, where it is not.
KILLABLE = textwrap.dedent("""
    import json, os, signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from autotuner import scoring
    from autotuner.campaign import Campaign
    from autotuner.config import load_config
    from autotuner.scoring import evaluator

    log = open(sys.argv[2], "a")
    hold = sys.argv[3] if len(sys.argv) > 3 else None
    real = evaluator.execute_job

    def logged(job, simulator=None):
        key = job.key()
        log.write("start " + key + "\\n"); log.flush()
        if job.name == hold:
            log.write("held " + key + "\\n"); log.flush()
            while True:
                time.sleep(0.05)
        out = real(job, simulator)
        return out

    evaluator.execute_job = logged
    overrides = json.loads(sys.argv[1])
    cfg = load_config(**overrides)
    resume = os.path.exists(os.path.join(cfg.results_dir, cfg.name, "archive.sqlite"))
    sys.exit(Campaign(cfg, resume=resume, simulator=scoring.in_process, tty=False).run())
""")


def _spawn(tmp_path: Path, overrides: dict, log: Path, hold: str | None = None
           ) -> subprocess.Popen:
    script = tmp_path / "campaign_script.py"
    script.write_text(KILLABLE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["PYTHONPATH"] = str(ROOT)
    held = [hold] if hold is not None else []
    return subprocess.Popen([sys.executable, str(script), json.dumps(overrides), str(log), *held],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(db: Path, predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError("the campaign ended before the moment to stop it:\n"
                                 + proc.stdout.read().decode())
        if db.exists():
            try:
                conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
                try:
                    if predicate(conn):
                        return
                finally:
                    conn.close()
            except sqlite3.OperationalError:
                pass
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the campaign")


def _tuning_under_way(conn: sqlite3.Connection) -> bool:
    row = conn.execute("SELECT COUNT(*) FROM candidates WHERE origin='proposal' AND "
                       "status='tuning'").fetchone()
    evals = conn.execute("SELECT COUNT(*) FROM evaluations").fetchone()[0]
    return row[0] > 0 and evals > 0


def test_kill_9_mid_run_then_resume_repeats_no_finished_evaluation(tmp_path):
    overrides = {**TINY, "name": "k", "results_dir": str(tmp_path / "results"),
                 "budget.proposals": 3, "budget.trials": 3}
    db = tmp_path / "results" / "k" / "archive.sqlite"
    log1, log2 = tmp_path / "run1.log", tmp_path / "run2.log"
    proc = _spawn(tmp_path, overrides, log1)
    try:
        _wait_for(db, _tuning_under_way, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with Archive(db) as archive:
        assert archive.integrity_ok()
        finished = {row[0] for row in archive.conn.execute("SELECT key FROM evaluations")}
        phase = archive.get_meta("phase")
    assert finished and phase == "search"

    proc = _spawn(tmp_path, overrides, log2)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()
    assert "resuming campaign k" in out.decode()
    started_again = {line.split()[1] for line in log2.read_text().splitlines()}
    assert started_again, "the resumed campaign ran nothing new"
    assert not started_again & finished, "a finished evaluation ran again after resume"
    with Archive(db) as archive:
        assert archive.integrity_ok()
        assert archive.get_meta("phase") == "done"
        proposals = archive.candidates(origin="proposal")
        assert len(proposals) == 3
        assert all(c.status not in (A.PENDING, A.TUNING) for c in proposals)
        keys = [row[0] for row in archive.conn.execute("SELECT key FROM evaluations")]
        assert len(keys) == len(set(keys))
        assert finished <= set(keys)


def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path):
    overrides = {**TINY, "name": "c", "results_dir": str(tmp_path / "results"),
                 "budget.proposals": 2}
    db = tmp_path / "results" / "c" / "archive.sqlite"
    log = tmp_path / "log"
    # the first proposal's first evaluation never ends: Ctrl-C lands in the search, mid-run
    proc = _spawn(tmp_path, overrides, log, hold="c0002.py")
    try:
        _wait_for(db, lambda c: c.execute("SELECT value FROM meta WHERE key='phase'")
                  .fetchone() == ('"search"',) and "held " in log.read_text(), proc)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = out.decode()
    assert proc.returncode == 130, text
    assert "stopped cleanly" in text and "autotuner resume" in text
    assert "Traceback" not in text
    with Archive(db) as archive:
        assert archive.integrity_ok() and archive.get_meta("phase") == "search"
        assert archive.get("c0002").status in (A.PENDING, A.TUNING)
    proc = _spawn(tmp_path, overrides, log)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()
    with Archive(db) as archive:
        assert archive.get_meta("phase") == "done"
        proposals = archive.candidates(origin="proposal")
        assert len(proposals) == 2
        assert all(c.status not in (A.PENDING, A.TUNING) for c in proposals)


def test_autotuner_run_through_the_cli_with_the_real_sandbox(tmp_path):
    from autotuner.isolation import detect_backend

    try:
        detect_backend()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no sandbox backend works here: {exc}")
    config = tmp_path / "tiny.toml"
    config.write_text(textwrap.dedent("""
        name = "cli"
        [workloads]
        scenarios = ["multiturn"]
        screen = ["multiturn"]
        requests = 120
        scenario_requests = {}
        heldout_seeds = [1001, 1002]
        [objective]
        ladder = [1.0, 1.4]
        [budget]
        proposals = 2
        trials = 2
        [search]
        seeds = []
        finalists = 1
        [gate]
        bootstrap = 500
        capacity_rel_tol = 0.05
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "autotuner", "run", "--config", str(config)], cwd=tmp_path,
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert "offline proposer (no LLM endpoint configured)" in err
    assert "sandbox:" in err and "finished" in err
    status = subprocess.run([sys.executable, "-m", "autotuner", "status", "cli"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert "baseline" in status.stdout and "c0001" in status.stdout


def test_progress_rewrites_one_line_on_a_terminal_and_prints_plain_lines_otherwise():
    tty = io.StringIO()
    p = Progress(tty, tty=True)
    p.status("proposals 1/3")
    p.log("c0001: tuned")
    p.status("proposals 2/3")
    assert tty.getvalue().count("\r\x1b[K") >= 3 and "c0001: tuned\n" in tty.getvalue()
    plain = io.StringIO()
    p = Progress(plain, tty=False, plain_every=0.0)
    p.status("proposals 1/3")
    p.log("c0001: tuned")
    assert "\r" not in plain.getvalue() and "\x1b" not in plain.getvalue()
    assert plain.getvalue() == "proposals 1/3\nc0001: tuned\n"


def test_proposals_still_out_when_time_is_up_are_abandoned_and_recorded(tmp_path, monkeypatch):
    import threading

    from autotuner.campaign import search

    monkeypatch.setattr(search, "ABANDON_GRACE_S", 0.2)
    asked = threading.Event()

    class Hanging:
        name = "hanging"

        def propose(self, request, check):
            asked.set()
            threading.Event().wait(60)  # an endpoint that never answers
            return Proposal(None, False, "too late")

    cfg = tiny(tmp_path, name="h", **{"search.seeds": [], "budget.proposals": 1})
    out = io.StringIO()
    c = Campaign(cfg, proposer=Hanging(), simulator=in_process, stream=out, tty=False)
    c.search_over = asked.is_set  # the wall-time budget ends once the proposal is out
    assert c.run() == 0, out.getvalue()
    with Archive(cfg.campaign_dir / "archive.sqlite") as archive:
        (cand,) = archive.candidates(origin="proposal")
        assert cand.status == A.PROPOSAL_FAILED and cand.failure.startswith("abandoned")
        assert archive.get_meta("phase") == "done"


def test_a_setup_error_leaves_no_campaign_behind(tmp_path, capsys):
    from autotuner.commands.main import main

    rc = main(["run", "--proposer", "llm", "--name", "nomodel", "--results-dir",
               str(tmp_path / "results")])
    assert rc == 2
    assert "no model configured" in capsys.readouterr().err
    assert not (tmp_path / "results" / "nomodel").exists()


# ------------------------------------------------------------------ the folder's lifecycle
def _snapshot(folder: Path) -> dict[str, str]:
    """Every row of every archive table, and every other file's bytes, as digests."""
    import hashlib

    out = {}
    conn = sqlite3.connect(f"file:{folder / 'archive.sqlite'}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in sorted(tables):
            rows = sorted(repr(tuple(r)) for r in conn.execute(f"SELECT * FROM {table}"))
            out[f"table {table}"] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
    finally:
        conn.close()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith("archive.sqlite"):
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_resume_of_a_finished_campaign_says_so_and_changes_nothing(tmp_path, capsys):
    from autotuner.commands.main import main

    # the wall-time budget ends the search after one proposal of three: finished, with
    # proposals left in the budget (the case that used to reopen the search)
    cfg = tiny(tmp_path, name="fin", **{"budget.proposals": 3, "budget.min_proposals": 1,
                                        "budget.wall_time_s": 1.0, "search.in_flight": 1,
                                        "search.seeds": []})
    rc, out = run(cfg)
    assert rc == 0, out
    folder = cfg.campaign_dir
    with Archive(folder / "archive.sqlite") as archive:
        assert archive.get_meta("phase") == "done"
        assert archive.count(origin="proposal") < 3
    before = _snapshot(folder)
    rc, out = run(load_config(folder / "config.toml"), resume=True)
    assert rc == 0 and "campaign fin is finished" in out and "nothing was changed" in out
    assert _snapshot(folder) == before
    rc = main(["resume", str(folder)])
    err = capsys.readouterr().err
    assert rc == 0 and "is finished" in err and "--proposals" in err, err
    assert _snapshot(folder) == before
    # a budget that leaves no room changes nothing either
    rc = main(["resume", str(folder), "--proposals", "5"])
    err = capsys.readouterr().err
    assert rc == 0 and "leaves no room" in err, err
    assert _snapshot(folder) == before


def test_resume_with_a_larger_budget_searches_on(tmp_path):
    cfg = tiny(tmp_path, name="more", **{"budget.proposals": 1, "search.seeds": []})
    rc, out = run(cfg)
    assert rc == 0, out
    more = load_config(cfg.campaign_dir / "config.toml", **{"budget.proposals": 2})
    rc, out = run(more, resume=True, extend=True)
    assert rc == 0 and "resuming campaign more" in out, out
    with Archive(cfg.campaign_dir / "archive.sqlite") as archive:
        assert archive.count(origin="proposal") == 2
        assert archive.get_meta("phase") == "done"


SETUP_TOML = """
name = "s"
results_dir = "{results}"
parallelism = 1
[workloads]
scenarios = ["multiturn"]
screen = ["multiturn"]
requests = 60
scenario_requests = {{}}
heldout_seeds = [1001]
{traces}
[objective]
baseline = "{baseline}"
ladder = [1.0]
[budget]
proposals = 1
trials = 1
[search]
seeds = []
{proposer}
"""


def _setup_case(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A campaign file that fails its setup in one way, and a word the error must contain."""
    fixed = baseline_path("fixed_chunk").read_text()
    fields = {"results": tmp_path / "results", "traces": "", "baseline": "fixed_chunk",
              "proposer": ""}
    if case == "missing baseline":
        fields["baseline"], needle = str(tmp_path / "nowhere.py"), "nowhere.py"
    elif case == "refused baseline":
        (tmp_path / "refused.py").write_text("import os\n" + fixed)
        fields["baseline"], needle = str(tmp_path / "refused.py"), "refused by the static check"
    elif case == "bad trace":
        (tmp_path / "bad.csv").write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n"
                                          "0.0,10,5\n1.0,x,5\n")
        fields["traces"], needle = f'traces = ["{tmp_path / "bad.csv"}"]', "bad.csv"
    elif case == "failing baseline":
        (tmp_path / "failing.py").write_text(fixed.replace(
            "return request.id % len(cluster.replicas)", "return 99"))
        fields["baseline"], needle = (str(tmp_path / "failing.py"),
                                              "the baseline (at its default parameters) fails")
    elif case == "unreachable endpoint":
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        fields["proposer"] = (f'[proposer]\nkind = "llm"\n[proposer.llm]\nmodel = "m"\n'
                              f'base_url = "http://127.0.0.1:{port}/v1"\n')
        needle = f"LLM endpoint: cannot reach http://127.0.0.1:{port}/v1"
    else:
        raise AssertionError(case)
    path = tmp_path / "campaign.toml"
    path.write_text(SETUP_TOML.format(**fields))
    return path, needle


@pytest.mark.parametrize("case", ["missing baseline", "refused baseline", "bad trace",
                                  "failing baseline", "unreachable endpoint"])
def test_a_failed_setup_leaves_nothing_and_the_same_command_runs_again(tmp_path, capsys, case):
    from autotuner.commands.main import main

    if case == "failing baseline":
        from autotuner.isolation import detect_backend

        try:
            detect_backend()
        except Exception as exc:  # noqa: BLE001
            pytest.skip(f"no sandbox backend works here: {exc}")
    config, needle = _setup_case(tmp_path, case)
    results = tmp_path / "results"
    for _ in range(2):  # the second run is the same command: the same error, no "exists"
        t0 = time.monotonic()
        rc = main(["run", "--config", str(config)])
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert rc == 2, err
        assert lines[-1].startswith("autotuner run: error:") and needle in lines[-1], err
        assert "Traceback" not in err and "already exists" not in err
        assert not results.exists() or list(results.iterdir()) == [], list(results.iterdir())
        if case == "unreachable endpoint":
            assert len(lines) == 1 and time.monotonic() - t0 < 15


def test_a_baseline_that_breaks_the_evaluator_is_one_line(tmp_path, capsys, monkeypatch):
    from autotuner import scoring
    from autotuner.commands.main import main

    def broken(*args, **kwargs):
        raise RuntimeError("the worker was killed before it wrote anything (SIGKILL)\nmore")

    monkeypatch.setattr(scoring.evaluator, "simulator_for", lambda: broken)
    # the warm-worker sessions the evaluator uses by default break the same way
    monkeypatch.setattr(scoring.evaluator.SessionSimulator, "__call__",
                        lambda self, *args, **kwargs: broken())
    monkeypatch.setattr(scoring, "sandbox_description", lambda backend: ("test", False))
    config, _ = _setup_case(tmp_path, "missing baseline")
    config.write_text(config.read_text().replace(str(tmp_path / "nowhere.py"), "fixed_chunk"))
    rc = main(["run", "--config", str(config)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("autotuner run: error: setup failed (baseline: capacity"), last
    assert "RuntimeError: the worker was killed before it wrote anything (SIGKILL) more" in last
    assert "nothing was kept" in last
    assert list((tmp_path / "results").iterdir()) == []


def test_a_setup_killed_half_way_is_cleared_by_the_next_run(tmp_path):
    cfg = tiny(tmp_path, name="again", **{"budget.proposals": 1, "search.seeds": []})
    stale = tmp_path / "results" / ".again.setup"
    (stale / "candidates").mkdir(parents=True)
    (stale / "archive.sqlite").write_bytes(b"half written")
    from autotuner.campaign import campaign_dir

    with pytest.raises(Exception, match="setup was interrupted"):
        campaign_dir("again", str(tmp_path / "results"))
    rc, out = run(cfg)
    assert rc == 0, out
    assert "removed the unfinished setup" in out
    assert not stale.exists() and (cfg.campaign_dir / "archive.sqlite").is_file()
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["again"]


def test_a_failure_after_setup_is_one_line_with_the_traceback_kept(tmp_path):
    from autotuner.campaign import CampaignError

    def breaks_on_proposals(code, params, cluster, wl, slo, horizon, sandbox, name):
        if name.startswith("c0"):
            raise RuntimeError("the worker was lost")
        return in_process(code, params, cluster, wl, slo, horizon, sandbox, name)

    cfg = tiny(tmp_path, name="late", **{"budget.proposals": 1, "search.seeds": []})
    campaign = Campaign(cfg, simulator=breaks_on_proposals, stream=io.StringIO(), tty=False)
    with pytest.raises(CampaignError) as info:
        campaign.run()
    message = str(info.value)
    assert "\n" not in message and "RuntimeError: the worker was lost" in message
    assert "autotuner resume" in message and "errors.log" in message
    log = (cfg.campaign_dir / "errors.log").read_text()
    assert "Traceback" in log and "the worker was lost" in log
    with Archive(cfg.campaign_dir / "archive.sqlite") as archive:
        assert archive.get("baseline").status == A.TUNED  # what was done is kept


POOL_THEN_DIE = textwrap.dedent("""
    import os, signal, sys, time
    from autotuner.scoring import Evaluator, NoCache

    if __name__ == "__main__":
        evaluator = Evaluator(NoCache(), parallelism=2)
        pool = evaluator.executor._get_pool()
        futures = [pool.submit(time.sleep, 60) for _ in range(4)]  # the queue, buffered
        print(" ".join(str(pid) for pid in pool._processes), flush=True)
        time.sleep(float(sys.argv[1]))
        if futures[0].running() or float(sys.argv[1]) == 0:
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 of the campaign process
        print("the workers never started their jobs", file=sys.stderr)
""")


@pytest.mark.parametrize("delay", [0.0, 4.0], ids=["while-workers-start", "while-they-work"])
def test_pool_workers_die_with_the_killed_campaign_process(tmp_path, delay):
    script = tmp_path / "pool.py"
    script.write_text(POOL_THEN_DIE)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "out"  # a file, not a pipe: orphans holding a pipe would stall the test
    with open(out, "w") as f:
        proc = subprocess.run([sys.executable, str(script), str(delay)], stdout=f,
                              stderr=subprocess.STDOUT, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL, out.read_text()
    workers = [int(pid) for pid in out.read_text().split()[:2]]
    assert len(workers) == 2
    deadline = time.monotonic() + 15
    alive = workers
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in workers if _running(pid)]
    for pid in alive:  # do not leave them behind if the assertion fails
        os.kill(pid, signal.SIGKILL)
    assert not alive, "pool workers outlived the killed campaign process"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_ctrl_c_during_setup_keeps_nothing(tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    cfg = tiny(tmp_path, name="ci", **{"search.seeds": []})
    out = io.StringIO()
    rc = Campaign(cfg, simulator=interrupted, stream=out, tty=False).run()
    assert rc == 130 and "interrupted during setup: nothing was kept" in out.getvalue()
    assert list((tmp_path / "results").iterdir()) == []
