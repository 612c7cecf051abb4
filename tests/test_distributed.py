"""Campaigns on real distributed engines: a Ray cluster this test starts (``ray start --head``,
two CPUs, so two worker processes) and a PostgreSQL cluster it initialises, as a user would run
them. Each skips, saying why, only when the engine is not installed (``.ci/run`` installs both).

- Ray: the same seed makes the same decisions as the local executor; a Ray worker killed in the
  middle of an evaluation loses nothing (Ray runs the task again; each result is stored once).
- PostgreSQL as Optuna's storage: a campaign killed with SIGKILL while tuning resumes from the
  studies there, runs no finished evaluation again, and its tuned values are the studies' best.
- A missing ``ray`` package, an unreachable cluster, a bad storage URL: one line, exit 2,
  nothing left behind.
"""

from __future__ import annotations

import glob
import importlib.util
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autotuner import archive as A
from autotuner.archive import Archive
from autotuner.campaign import Campaign
from autotuner.config import load_config
from autotuner.policy import read_policy_source
from autotuner.resources import baseline_path
from autotuner.scoring import Evaluator, Instance, Job, execute_job, in_process, sandboxed
from autotuner.tune import load_result, open_rdb_storage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_campaign import TINY, _spawn, _tuning_under_way, _wait_for  # noqa: E402

# one proposal in flight: with more, the order proposals arrive in (and so their ids) depends
# on the proposer threads' timing whatever the executor
SMALL = {**TINY, "budget.proposals": 2, "search.seeds": [], "search.in_flight": 1,
         "workloads.heldout_seeds": [1001], "gate.references": ["power_of_two"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 90.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode} before it listened")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{what} did not listen on port {port} within {timeout:g} s")


def _stop_group(proc: subprocess.Popen, first: signal.Signals, grace: float) -> None:
    """``first`` to the process group the engine started, then SIGKILL what is left."""
    for sig, wait_s in ((first, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue


# ------------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A one-node Ray cluster with two CPUs, started like a user would, stopped at the end; this
    process is its driver (``RAY_ADDRESS``)."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("the ray package is not installed (pip install '.[ray]'; .ci/run does)")
    ray_cli = Path(sys.executable).with_name("ray")
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's unix socket paths
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    log = open(Path(temp) / "start.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         f"--temp-dir={temp}", "--include-dashboard=false", "--disable-usage-stats",
         "--object-store-memory=100000000"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    old = os.environ.get("RAY_ADDRESS")
    try:
        _wait_port(port, proc, "ray start")
        os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        ray.shutdown()
        if old is None:
            os.environ.pop("RAY_ADDRESS", None)
        else:
            os.environ["RAY_ADDRESS"] = old
        _stop_group(proc, signal.SIGTERM, grace=1.0)  # a throwaway cluster: no need to wait
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def decisions(folder: Path) -> tuple[list[tuple], object, object, int]:
    """What a campaign decided: each candidate's id, status, tuned values and parent, what it
    promoted, and how many evaluations it stored."""
    with Archive(folder / "archive.sqlite") as archive:
        assert archive.integrity_ok()
        cands = [(c.id, c.status, c.params, c.parent_id, c.train_score, c.validation_score)
                 for c in archive.candidates()]
        return (cands, archive.get_meta("promoted"), archive.get_meta("promotions"),
                archive.evaluation_count())


def test_a_ray_campaign_decides_as_the_local_executor_for_the_same_seed(tmp_path, ray_cluster):
    logs = {}
    for executor in ("local", "ray"):
        cfg = load_config(**{**SMALL, "name": executor, "executor": executor,
                             "results_dir": str(tmp_path / "results")})
        out = io.StringIO()
        rc = Campaign(cfg, simulator=in_process, stream=out, tty=False).run()
        assert rc == 0, out.getvalue()
        logs[executor] = out.getvalue()
    local, ray_run = (decisions(tmp_path / "results" / e) for e in ("local", "ray"))
    assert ray_run == local
    statuses = {c[1] for c in local[0]}
    assert len(local[0]) == 3 and statuses & {A.TUNED, A.GATE_FAILED, A.PROMOTED}, local
    assert f"executor: Ray cluster at {ray_cluster}: 1 node(s), 2 CPUs" in logs["ray"]
    assert logs["ray"].count("ray node: ") == 1, logs["ray"]  # said once, not per task
    assert "executor: " not in logs["local"] and "ray node" not in logs["local"]
    config = load_config(tmp_path / "results" / "ray" / "config.toml")
    assert config.executor == "ray"  # what `autotuner resume` runs it with


def _kill_first_ray_evaluation(killed: list[str], stop: threading.Event) -> None:
    """Kill (SIGKILL) the first Ray worker seen running an evaluation task."""
    while not stop.is_set() and not killed:
        ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        for line in ps.splitlines():
            pid, _, title = line.strip().partition(" ")
            if title.startswith("ray::evaluate-"):  # a worker's title names its task
                time.sleep(0.05)  # into the evaluation (its title is set as it starts)
                try:
                    still = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                    if still.decode(errors="replace").split()[:1] != title.split()[:1]:
                        break  # that task finished meanwhile: look again
                    os.kill(int(pid), signal.SIGKILL)
                except (FileNotFoundError, ProcessLookupError):
                    break
                killed.append(title.split()[0].removeprefix("ray::evaluate-"))
                return
        time.sleep(0.05)


def test_a_ray_worker_killed_mid_evaluation_loses_nothing(tmp_path, ray_cluster):
    from autotuner.isolation import detect_backend
    from autotuner.scoring.ray_executor import RayTasks, connect_ray

    try:
        detect_backend()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no sandbox backend works here: {exc}")
    connect_ray("auto")
    code = baseline_path("fixed_chunk").read_text()
    # long enough (a capacity search over 400 requests) that a quiet machine cannot finish a
    # task between two looks of the killer
    jobs = [Job(code, {}, Instance("chat", seed, 400), kind="capacity") for seed in range(4)]
    jobs.append(jobs[0])  # a duplicate within the batch runs once
    nodes: list[str] = []
    stored: list[int] = []
    killed: list[str] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_ray_evaluation, args=(killed, stop))
    killer.start()
    archive = Archive(tmp_path / "archive.sqlite")
    try:
        evaluator = Evaluator(archive, executor=RayTasks(sessions=True, on_node=nodes.append))
        results = evaluator.evaluate(jobs, on_result=lambda i, r: stored.append(i))
    finally:
        stop.set()
        killer.join()
    keys = [row[0] for row in archive.conn.execute("SELECT key FROM evaluations")]
    archive.close()
    assert killed, "no Ray worker was seen evaluating"
    assert sorted(stored) == [0, 1, 2, 3] and evaluator.ran == 4
    assert sorted(keys) == sorted({job.key() for job in jobs})
    assert all(r.get("capacity") and not r.get("error") for r in results), results
    assert results[4] == results[0]
    assert len(nodes) == 1 and nodes[0].startswith(f"{socket.gethostname()}: "), nodes
    # the killed job's result is the one the local sandbox computes
    (victim,) = [i for i, job in enumerate(jobs[:4]) if job.key().startswith(killed[0])]
    again = execute_job(jobs[victim], sandboxed)
    assert {k: v for k, v in results[victim].items() if k != "seconds"} == \
        {k: v for k, v in again.items() if k not in ("seconds", "cpu_s")}


# ------------------------------------------------------------------------------- errors
def _cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "RAY_"))}
    full_env.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-m", "autotuner", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["unreachable ray", "bad storage url", "unreachable postgres"])
def test_an_unusable_executor_or_storage_is_one_line_and_leaves_nothing(tmp_path, case):
    closed = free_port()
    args, env, needle = {
        "unreachable ray": (["--executor", "ray"], {"RAY_ADDRESS": f"127.0.0.1:{closed}"},
                            f"no Ray cluster reachable at 127.0.0.1:{closed}"),
        "bad storage url": (["--storage", "redis://x"], {}, "optuna_storage: must be empty"),
        "unreachable postgres": (["--storage", f"postgresql://u:secret@127.0.0.1:{closed}/x"],
                                 {}, "optuna_storage: postgresql://u:***@127.0.0.1"),
    }[case]
    proc = _cli(["run", "--proposals", "1", *args], tmp_path, **env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "secret" not in proc.stderr
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_without_the_ray_package_the_ray_executor_is_one_line(tmp_path, monkeypatch, capsys):
    from autotuner.commands.main import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--executor", "ray", "--proposals", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["autotuner run: error: executor: --executor ray needs the ray package: "
                   "pip install 'autotuner[ray]'"]
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------------------- PostgreSQL
def _pg_binary(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free port (as ``nobody`` when this is root, which
    initdb refuses), with an empty database; its URL."""
    initdb, postgres_bin = _pg_binary("initdb"), _pg_binary("postgres")
    if not initdb or not postgres_bin:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; "
                    ".ci/run does)")
    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is None:
        pytest.skip("no PostgreSQL driver for Python (pip install '.[ray]'; .ci/run does)")
    as_user: list[str] = []
    base = tempfile.mkdtemp(prefix="pg", dir="/tmp")
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root without runuser: initdb refuses root")
        as_user = [runuser, "-u", "nobody", "--"]
        shutil.chown(base, "nobody")
    data, port = f"{base}/data", free_port()
    subprocess.run([*as_user, initdb, "-D", data, "-A", "trust", "-U", "autotuner",
                    "--no-sync", "-E", "UTF8"], check=True, capture_output=True, timeout=120)
    proc = subprocess.Popen(
        [*as_user, postgres_bin, "-D", data, "-p", str(port), "-k", base,
         "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_port(port, proc, "postgres")
        time.sleep(0.5)  # listening comes a moment before accepting logins
        url = f"postgresql://autotuner@127.0.0.1:{port}/postgres"
        open_rdb_storage(url)  # ready (and Optuna's tables made)
        yield url
    finally:
        _stop_group(proc, signal.SIGINT, grace=10.0)  # PostgreSQL's fast shutdown
        shutil.rmtree(base, ignore_errors=True)


def test_a_campaign_with_studies_in_postgres_survives_kill_9_and_resumes(tmp_path, postgres):
    import optuna

    overrides = {**SMALL, "name": "pg", "results_dir": str(tmp_path / "results"),
                 "budget.trials": 3, "optuna_storage": postgres}
    folder = tmp_path / "results" / "pg"
    db = folder / "archive.sqlite"
    proc = _spawn(tmp_path, overrides, tmp_path / "run1.log")
    try:
        _wait_for(db, _tuning_under_way, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with Archive(db) as archive:
        finished = {row[0] for row in archive.conn.execute("SELECT key FROM evaluations")}
        prefix = archive.get_meta("optuna_prefix")
    assert finished and prefix and prefix.startswith("pg-")
    storage = open_rdb_storage(postgres)
    studies_then = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    assert f"{prefix}baseline" in studies_then

    proc = _spawn(tmp_path, overrides, tmp_path / "run2.log")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()
    assert "resuming campaign pg" in out.decode()
    started_again = {line.split()[1] for line in (tmp_path / "run2.log").read_text().splitlines()}
    assert not started_again & finished, "a finished evaluation ran again after resume"
    assert not (folder / "optuna.journal").exists()  # the studies are in PostgreSQL
    assert load_config(folder / "config.toml").optuna_storage == postgres  # resume's storage
    with Archive(db) as archive:
        assert archive.get_meta("phase") == "done"
        keys = [row[0] for row in archive.conn.execute("SELECT key FROM evaluations")]
        assert len(keys) == len(set(keys)) and finished <= set(keys)
        tuned = [c for c in archive.candidates() if c.status in
                 (A.TUNED, A.FINALIST, A.GATE_FAILED, A.PROMOTED)]
    assert len(tuned) >= 2
    for cand in tuned:
        tunables = read_policy_source(cand.code, f"{cand.id}.py").tunables
        result = load_result(storage, f"{prefix}{cand.id}", tunables)
        assert result is not None, f"no study {prefix}{cand.id} in PostgreSQL"
        assert result.trials == 3 and result.params == cand.params, cand.id
