"""The kill -9 bar: kill a campaign at random moments, resume it each time, and count what broke.

Runs a small campaign through the real command line and sandbox (``autotuner run``, then
``autotuner resume`` after each kill), sends SIGKILL to the campaign's own process at ``--kills``
seeded random moments (never to its process group: a user's ``kill -9 PID`` reaches only that
process, so whatever it started must clean up by itself), optionally while busy processes keep
every core loaded (``--load``), and finally prints and checks:

- resumes finished: every resume either ran until the next kill or finished (exit 0, phase
  ``done``, the whole proposal budget archived, no candidate left half-done), no traceback;
- evaluations lost: stored in the archive before a kill, missing afterwards; repeated: started
  again after they had been stored (every job's start and end is logged by a shim around
  ``autotuner.scoring.evaluator.execute_job`` that also runs in the pool's spawned workers);
  evaluations the kills turned into stored failures ("killed", "SIGKILL", "lost");
- leftovers: processes the campaign started that are still alive ``--grace`` seconds after the
  campaign process died (its parent gone: pool workers, bwrap, sandbox workers), pids cgroups
  (``autotuner-sandbox-<pid>-*``) and Docker containers (label ``...parent=<pid>``) of those
  processes, scratch directories in the runs' private TMPDIR, and staging folders of setups.

Exit status 0 when every count is 0 and the campaign finished, 1 otherwise.

    python scripts/kill_resume.py --kills 3                  # a short check, a few minutes
    python scripts/kill_resume.py --kills 10 --load --proposals 8   # the bar: 2 busy per core
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAME = "killme"

# The campaign runner: the real CLI, with each evaluation job's start and end logged. Spawned
# pool workers import this file as __mp_main__, so the shim is in place there too.
RUNNER = textwrap.dedent("""
    import os, sys
    from autotuner.scoring import evaluator

    _LOG = os.environ["KILL_RESUME_LOG"]
    _real = evaluator.execute_job

    def _write(line):
        fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\\n").encode())
        finally:
            os.close(fd)

    def execute_job(job, simulator=None):
        key = job.key()
        _write(f"start {key} {os.getpid()}")
        out = _real(job, simulator)
        _write(f"done {key} {os.getpid()}")
        return out

    evaluator.execute_job = execute_job

    if __name__ == "__main__":
        from autotuner.commands.main import main
        sys.exit(main(sys.argv[1:]))
""")

CONFIG = """
name = "{name}"
parallelism = {parallelism}
[sandbox]
backend = "{sandbox}"
[workloads]
scenarios = ["multiturn"]
screen = ["multiturn"]
requests = {requests}
scenario_requests = {{}}
heldout_requests = {{}}
heldout_seeds = [1001, 1002]
[objective]
ladder = [1.0, 1.4]
[budget]
proposals = {proposals}
trials = {trials}
wall_time_s = 7200
[search]
seeds = ["least_outstanding"]
islands = 2
finalists = 1
in_flight = 1
[gate]
bootstrap = 500
capacity_rel_tol = 0.05
"""

KILL_WORDS = ("killed", "sigkill", "lost", "broken")


# ------------------------------------------------------------------------------- processes
def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    return int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:160]


def _descendants(root: int) -> dict[int, int]:
    """pid -> start time of every live descendant of ``root`` (itself included)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _stat(int(entry))
        if st is None:
            continue
        children.setdefault(st[0], []).append(int(entry))
        starts[int(entry)] = st[1]
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in starts:
            out[pid] = starts[pid]
        todo.extend(children.get(pid, ()))
    return out


def _alive(tracked: dict[int, int]) -> dict[int, str]:
    """The tracked processes still alive (same pid and start time), with their command lines."""
    out = {}
    for pid, start in tracked.items():
        st = _stat(pid)
        if st is not None and st[1] == start:
            out[pid] = _cmdline(pid)
    return out


def _cgroups(pids: set[int]) -> list[str]:
    found = []
    for root in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        try:
            entries = list(root.glob("autotuner-sandbox-*"))
        except OSError:
            continue
        for path in entries:
            parts = path.name.split("-")
            if len(parts) > 2 and parts[2].isdigit() and int(parts[2]) in pids:
                found.append(str(path))
    return found


def _containers(pids: set[int]) -> list[str]:
    try:
        import docker

        client = docker.from_env(timeout=10)
        found = []
        for pid in pids:
            label = f"org.autotuner.sandbox.parent={pid}"
            found += [c["Id"][:12] for c in client.api.containers(all=True,
                                                                   filters={"label": label})]
        return found
    except Exception:  # noqa: BLE001 - no engine here: nothing to leak
        return []


# ------------------------------------------------------------------------------- the archive
def _stored(db: Path) -> dict[str, str]:
    """Evaluation key -> result JSON of every evaluation in the archive ({} if none yet)."""
    if not db.is_file():
        return {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return dict(conn.execute("SELECT key, result FROM evaluations"))
    except sqlite3.Error:
        return {}
    finally:
        conn.close()


def _final_state(db: Path) -> dict[str, object]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
        statuses = [r[0] for r in conn.execute(
            "SELECT status FROM candidates WHERE origin='proposal'")]
        half = conn.execute("SELECT COUNT(*) FROM candidates WHERE status IN "
                            "('pending', 'tuning')").fetchone()[0]
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    return {"phase": meta.get("phase"), "proposals": len(statuses), "half_done": half,
            "integrity": integrity, "promoted": meta.get("promoted")}


# ------------------------------------------------------------------------------- one run
@dataclass
class Segment:
    """One start of the campaign (run or resume) until it was killed or exited."""

    command: str
    seconds: float = 0.0
    killed: bool = False
    returncode: int | None = None
    phase_at_kill: str | None = None
    pids: set[int] = field(default_factory=set)  # every process of this run (the log's pids)
    tracked: dict[int, int] = field(default_factory=dict)  # pid -> start time, for the end
    leftovers: dict[int, str] = field(default_factory=dict)
    traceback: bool = False


class Harness:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.workdir or tempfile.mkdtemp(prefix="kill-resume-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.tmp = self.work / "tmp"  # the runs' TMPDIR: scratch dirs left here are ours
        self.tmp.mkdir(exist_ok=True)
        self.log = self.work / "jobs.log"
        self.runner = self.work / "runner.py"
        self.runner.write_text(RUNNER)
        self.config = self.work / "campaign.toml"
        self.config.write_text(CONFIG.format(
            name=NAME, parallelism=args.parallelism, sandbox=args.sandbox,
            requests=args.requests, proposals=args.proposals, trials=args.trials))
        self.folder = self.work / "results" / NAME
        self.db = self.folder / "archive.sqlite"
        self.pids: set[int] = set()  # every process any run started (cgroup/container names)
        self.segments: list[Segment] = []
        self.stored_before: list[dict[str, str]] = []  # the archive after each kill

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH"))
                                            if p)
        env["TMPDIR"] = str(self.tmp)
        env["KILL_RESUME_LOG"] = str(self.log)
        return env

    def start(self) -> tuple[subprocess.Popen, str]:
        if self.db.is_file():
            argv, command = ["resume", str(self.folder)], "resume"
        else:  # never set up, or killed during setup: the same `run` again
            argv, command = ["run", "--config", str(self.config)], "run"
        out = open(self.work / f"run{len(self.segments) + 1}.log", "w")
        proc = subprocess.Popen([sys.executable, str(self.runner), *argv], cwd=self.work,
                                env=self.env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        out.close()
        return proc, command

    def phase(self) -> str | None:
        if not self.db.is_file():
            return "setup"
        try:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
            try:
                row = conn.execute("SELECT value FROM meta WHERE key='phase'").fetchone()
            finally:
                conn.close()
            return json.loads(row[0]) if row else None
        except sqlite3.Error:
            return None

    def segment(self, kill_after: float | None) -> Segment:
        proc, command = self.start()
        seg = Segment(command)
        tracked: dict[int, int] = {}
        t0 = time.monotonic()
        while proc.poll() is None:
            tracked.update(_descendants(proc.pid))
            if kill_after is not None and time.monotonic() - t0 >= kill_after:
                tracked.update(_descendants(proc.pid))
                seg.phase_at_kill = self.phase()
                os.kill(proc.pid, signal.SIGKILL)  # the campaign process only
                proc.wait()
                seg.killed = True
                break
            time.sleep(0.1)
        seg.seconds = time.monotonic() - t0
        seg.returncode = proc.returncode
        seg.pids = set(tracked)
        seg.tracked = dict(tracked)
        self.pids |= set(tracked)
        tracked.pop(proc.pid, None)
        time.sleep(self.args.grace)
        seg.leftovers = _alive(tracked)
        text = (self.work / f"run{len(self.segments) + 1}.log").read_text(errors="replace")
        seg.traceback = "Traceback" in text
        self.segments.append(seg)
        return seg


def _load(n: int) -> list[subprocess.Popen]:
    """``n`` busy processes (one core each), to run the campaign on a loaded machine."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                             start_new_session=True) for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=3, help="kill -9 this many times (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    ap.add_argument("--min-delay", type=float, default=1.0,
                    help="earliest kill, seconds after a (re)start (default 1)")
    ap.add_argument("--max-delay", type=float, default=15.0,
                    help="latest kill, seconds after a (re)start (default 15)")
    ap.add_argument("--load", type=int, nargs="?", const=2 * (os.cpu_count() or 1), default=0,
                    metavar="N", help="N busy processes meanwhile (bare --load: 2 per core)")
    ap.add_argument("--grace", type=float, default=10.0,
                    help="seconds after a run's end before its processes count as leftovers")
    ap.add_argument("--sandbox", default="auto", choices=["auto", "bwrap", "docker", "process"])
    ap.add_argument("--parallelism", type=int, default=2)
    ap.add_argument("--requests", type=int, default=150, help="requests per instance")
    ap.add_argument("--proposals", type=int, default=4, help="the campaign's proposal budget "
                    "(more: a longer campaign, room for more kills)")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--workdir", help="where the campaign and logs go (default: a new temp dir)")
    ap.add_argument("--keep-leftovers", action="store_true",
                    help="leave leftover processes and cgroups for inspection (default: after "
                    "counting them, kill them and remove the cgroups)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    h = Harness(args)
    rng = random.Random(args.seed)
    load = _load(args.load)
    t_start = time.monotonic()
    try:
        for _ in range(args.kills):
            seg = h.segment(rng.uniform(args.min_delay, args.max_delay))
            h.stored_before.append(_stored(h.db))
            print(f"{seg.command:>6}: {'killed' if seg.killed else f'exit {seg.returncode}'} "
                  f"after {seg.seconds:.1f} s (phase {seg.phase_at_kill or '-'}); "
                  f"{len(h.stored_before[-1])} evaluations stored; leftovers after "
                  f"{args.grace:g} s: {len(seg.leftovers)}", flush=True)
            if not seg.killed:
                break  # it finished (or failed) before the moment came
        final = h.segment(None)
        print(f"{final.command:>6}: exit {final.returncode} after {final.seconds:.1f} s",
              flush=True)
    finally:
        for p in load:
            p.kill()
            p.wait()
    report = _report(h, time.monotonic() - t_start)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    if not args.keep_leftovers:
        _clean_up(h)
    return 0 if report["passed"] else 1


def _clean_up(h: Harness) -> None:
    """Kill what the runs left (by pid and start time, so nothing else is hit) and remove their
    cgroups, so that measuring leaves the machine as it was."""
    for seg in h.segments:
        for pid in _alive(seg.tracked):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    time.sleep(0.5)
    for path in _cgroups(h.pids):
        try:
            os.rmdir(path)
        except OSError as exc:
            print(f"could not remove {path}: {exc}", file=sys.stderr)


def _report(h: Harness, wall: float) -> dict[str, object]:
    final_seg = h.segments[-1]
    state = _final_state(h.db) if h.db.is_file() else {}
    events = [line.split() for line in h.log.read_text().splitlines()] if h.log.exists() else []
    # which run each log line belongs to: the log is appended in order, and each segment's
    # lines come after the previous segment ended
    final = _stored(h.db)
    lost = sorted({k for snap in h.stored_before for k in snap} - set(final))
    run_of_pid = {str(pid): n for n, seg in enumerate(h.segments) for pid in seg.pids}
    starts_by_key: dict[str, int] = {}
    done_in_run: set[tuple[int, str]] = set()
    repeated = []
    for event in events:
        if len(event) != 3:
            continue
        kind, key, pid = event
        run = run_of_pid.get(pid)
        if kind == "done":
            if run is not None:
                done_in_run.add((run, key))
            continue
        starts_by_key[key] = starts_by_key.get(key, 0) + 1
        if run is None:
            continue
        # a repeat: stored when an earlier run was killed, or finished earlier in this run
        if (run > 0 and key in h.stored_before[run - 1]) or (run, key) in done_in_run:
            repeated.append(f"{key[:16]} (run {run + 1})")
    kill_failures = []
    for key, result in final.items():
        try:
            error = (json.loads(result).get("error") or "").lower()
        except ValueError:
            continue
        if any(word in error for word in KILL_WORDS):
            kill_failures.append(f"{key[:12]}: {error[:120]}")
    leftovers = {}
    for n, seg in enumerate(h.segments, 1):
        for pid, cmd in seg.leftovers.items():
            leftovers[f"run {n} pid {pid}"] = cmd
    still = {f"pid {pid}": cmd for seg in h.segments for pid, cmd in _alive(
        {p: t for p, t in seg.tracked.items() if p not in seg.leftovers}).items()}
    leftovers.update({f"at the end, {k}": v for k, v in still.items()})
    cgroups = _cgroups(h.pids)
    containers = _containers(h.pids)
    scratch = sorted(str(p) for p in h.tmp.iterdir())
    staging = sorted(str(p) for p in (h.work / "results").glob(".*.setup")) \
        if (h.work / "results").is_dir() else []
    killed = [s for s in h.segments if s.killed]
    resumes = h.segments[1:]
    broken = [s for s in h.segments if not s.killed and s.returncode not in (0, None)]
    finished = (final_seg.returncode == 0 and state.get("phase") == "done"
                and state.get("half_done") == 0 and state.get("integrity") == "ok"
                and state.get("proposals") == h.args.proposals)
    passed = (finished and not broken and not lost and not repeated and not kill_failures
              and not leftovers and not cgroups and not containers and not scratch
              and not staging and not any(s.traceback for s in h.segments))
    return {
        "workdir": str(h.work), "wall_s": wall, "load_processes": h.args.load,
        "kills": len(killed), "kill_moments_s": [round(s.seconds, 1) for s in killed],
        "phases_at_kill": [s.phase_at_kill for s in killed],
        "resumes": len(resumes), "resumes_failed": len(broken),
        "tracebacks": sum(s.traceback for s in h.segments),
        "finished": finished, "final": state,
        "evaluations_stored": len(final), "evaluations_started": len(starts_by_key),
        "lost": lost, "repeated": repeated, "kill_failures_stored": kill_failures,
        "leftover_processes": leftovers, "leftover_cgroups": cgroups,
        "leftover_containers": containers, "leftover_scratch": scratch,
        "leftover_setup_folders": staging, "passed": passed,
    }


def _print(r: dict[str, object]) -> None:
    final = r["final"] or {}
    print(f"kill -9 and resume, {r['kills']} kills at "
          f"{', '.join(f'{s:g} s' for s in r['kill_moments_s'])} into their runs (phases "
          f"{', '.join(str(p) for p in r['phases_at_kill'])}), {r['load_processes']} busy "
          f"processes meanwhile, {r['wall_s']:.0f} s in all; work in {r['workdir']}")
    print(f"  resumes finished: {r['resumes'] - r['resumes_failed']} of {r['resumes']}; "
          f"campaign finished: {'yes' if r['finished'] else 'NO'} (phase {final.get('phase')}, "
          f"{final.get('proposals')} proposals, {final.get('half_done')} half-done, "
          f"integrity {final.get('integrity')}); tracebacks: {r['tracebacks']}")
    print(f"  evaluations: {r['evaluations_stored']} stored, {r['evaluations_started']} "
          f"distinct started; lost {len(r['lost'])}, repeated {len(r['repeated'])}, "
          f"failures caused by the kills stored as results {len(r['kill_failures_stored'])}")
    print(f"  leftovers: processes {len(r['leftover_processes'])}, cgroups "
          f"{len(r['leftover_cgroups'])}, containers {len(r['leftover_containers'])}, scratch "
          f"dirs {len(r['leftover_scratch'])}, setup folders {len(r['leftover_setup_folders'])}")
    for name in ("lost", "repeated", "kill_failures_stored", "leftover_cgroups",
                 "leftover_containers", "leftover_scratch", "leftover_setup_folders"):
        for item in list(r[name])[:5]:
            print(f"    {name}: {item}")
    for where, cmd in list(r["leftover_processes"].items())[:10]:
        print(f"    leftover process ({where}): {cmd}")
    print("PASSED" if r["passed"] else "FAILED")


if __name__ == "__main__":
    sys.exit(main())
