"""The isolation backends themselves: detection, forcing, what the worker can see, and limits.

Every behavioural test runs on every backend that passes its self-test here; the others skip
with the self-test's reason. The policies below run with the static check and the loader's
fence bypassed, so only the isolation stands between them and the machine.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
from pathlib import Path

import pytest
from sandbox_support import Canaries, assert_no_leftovers, backend_params, make_subreaper

from autotuner.evaluate import evaluate
from autotuner.isolation import (
    BACKEND_ORDER,
    Limits,
    SandboxUnavailable,
    detect_backend,
    get_backend,
    host,
    registry,
)
from autotuner.isolation.base import Backend
from autotuner.isolation.handle import WorkerHandle, describe_exit
from autotuner.isolation.limits import WORKER_ENV, HostLayout
from autotuner.simulation import WorkloadSpec

SPEC = WorkloadSpec(scenario="chat", requests=50, seed=0)
LIMITS = Limits(wall_s=8.0, cpu_s=6, memory_bytes=1 << 30, output_bytes=8 << 20,
                stderr_bytes=64 << 10)

# Reports what the worker can see as short codes in its exception (failure reasons are cut to
# 400 characters): probe("name", fn) -> "name=ok" or "name=ErrorType".
PROBE = '''
import os, socket

TUNABLES = {}
WRITE_SYSTEM = True


def _try(name, fn):
    try:
        fn()
        return name + "=ok"
    except BaseException as exc:
        return name + "=" + type(exc).__name__


def _write(path):
    with open(path, "w") as f:
        f.write("x")


def route(request, cluster, params):
    items = [
        _try("scratch", lambda: _write(os.path.join(os.getcwd(), "probe.txt"))),
        _try("tmp", lambda: _write("/tmp/autotuner_probe_" + str(os.getpid()))
             if WRITE_SYSTEM else None),
        _try("usr", lambda: _write("/usr/autotuner_probe") if WRITE_SYSTEM else None),
        _try("pkg", lambda: _write(os.path.join(os.path.dirname(os.__file__), "x.py"))
             if WRITE_SYSTEM else None),
        _try("net", lambda: socket.create_connection(("1.1.1.1", 53), timeout=1)),
        _try("uid0", lambda: None if os.getuid() != 0 else 1 / 0),
        "env=" + ",".join(sorted(os.environ)),
    ]
    raise RuntimeError("PROBE " + " ".join(items))
'''


def _probe(backend: str) -> dict[str, str]:
    # The process backend really can write there (documented as weaker): never try it.
    code = PROBE.replace("WRITE_SYSTEM = True", f"WRITE_SYSTEM = {backend != 'process'}")
    ev = evaluate(code, name="probe.py", workload=SPEC, sandbox=backend, limits=LIMITS,
                  skip_check=True)
    assert ev.verdict == "failed"
    text = ev.reasons[0].split("PROBE ", 1)[1]
    text = re.sub(r" \(at line \d+\)$", "", text)  # where in the file it raised
    return dict(item.split("=", 1) for item in text.split())


# ------------------------------------------------------------------------------ detection
def test_detect_picks_the_strongest_working_backend_and_caches_it():
    first = detect_backend()
    assert detect_backend() is first
    for name in BACKEND_ORDER:
        ok, _ = registry.backend_status(name)
        if ok:
            assert first.name == name
            break


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(SandboxUnavailable, match="no sandbox backend named 'nope'"):
        get_backend("nope")


def test_forced_unavailable_backend_is_a_clear_error(monkeypatch):
    backend = registry._cached("docker")
    monkeypatch.setattr(backend, "_status", (False, "no docker engine answers"))
    with pytest.raises(SandboxUnavailable, match="'docker' is not available here: no docker"):
        get_backend("docker")


def test_process_backend_warns_once(capsys, monkeypatch):
    ok, why = registry.backend_status("process")
    if not ok:
        pytest.skip(why)
    monkeypatch.setattr(registry, "_WARNED", set())
    get_backend("process")
    get_backend("process")
    err = capsys.readouterr().err
    assert err.count("weaker") == 1


def test_exit_statuses_become_reasons():
    lim = Limits(cpu_s=7, memory_bytes=512 << 20)
    assert "CPU time limit (7 s)" in describe_exit(-24, signal_offset=False, limits=lim)
    assert "SIGKILL" in describe_exit(137, signal_offset=True, limits=lim)
    assert "SIGSEGV" in describe_exit(-11, signal_offset=False, limits=lim)
    assert "memory limit (512 MiB)" in describe_exit(137, signal_offset=True, limits=lim,
                                                      oom_killed=True)
    assert "status 3" in describe_exit(3, signal_offset=True, limits=lim)


def _bind_sources(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a in ("--ro-bind", "--ro-bind-try",
                                                              "--bind", "--bind-try")]


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _layouts(tmp_path: Path) -> list[HostLayout]:
    """This process's layout, and one of a checkout and venv under a home directory in /tmp
    (where a new user's clone may well be): the rule must hold for both."""
    real = HostLayout.of_this_process()
    home = tmp_path / "home"
    checkout, venv = home / "src" / "autotuner", home / ".venv"
    fake = HostLayout(
        python=str(venv / "bin" / "python3.11"), prefix=str(venv),
        worker=str(checkout / "sandbox" / "worker.py"),
        lib_binds=((str(checkout / "autotuner"), "autotuner"),
                   (str(venv / "lib" / "site-packages" / "numpy"), "numpy"),
                   (str(checkout / "baselines"), "baselines")))
    return [real, fake]


def test_bwrap_binds_only_what_the_worker_needs(tmp_path, monkeypatch):
    """What matters is what is bound, not where the checkout lives: the system directories,
    the interpreter, and exactly the worker's own files; never a directory that holds them
    (the checkout, the home directory, /tmp, /) and nothing writable."""
    from autotuner.isolation.bwrap import _SYSTEM_DIRS, bwrap_argv

    real, fake = _layouts(tmp_path)
    for layout, home in ((real, os.path.expanduser("~")), (fake, str(tmp_path / "home"))):
        monkeypatch.setenv("HOME", home)
        argv = bwrap_argv(layout, LIMITS)
        needed = {*_SYSTEM_DIRS, "/etc/ld.so.cache", "/etc/ld.so.conf", layout.prefix,
                  layout.python, layout.worker, *(host for host, _ in layout.lib_binds)}
        sources = _bind_sources(argv)
        assert set(sources) <= needed, set(sources) - needed
        assert {layout.worker, *(host for host, _ in layout.lib_binds)} <= set(sources)
        checkout = str(Path(layout.worker).parents[1])
        for path in sources:
            for holder in ("/", os.path.expanduser("~"), "/home", "/root", "/tmp", "/var",
                           "/run", "/etc", checkout):
                assert not _inside(holder, path), f"{path} exposes all of {holder}"
        assert "--bind" not in argv and "--bind-try" not in argv  # nothing host-side writable
        assert "--unshare-all" in argv and "--unshare-user" in argv and "--clearenv" in argv
        assert "--die-with-parent" in argv and "--remount-ro" in argv


# ------------------------------------------------------------------------------ behaviour
@pytest.fixture()
def scratch_root(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    make_subreaper()
    return tmp_path


@pytest.mark.parametrize("backend", backend_params())
def test_what_the_worker_can_see(backend, scratch_root):
    canaries = Canaries()
    canaries.plant()
    try:
        seen = _probe(backend)
    finally:
        canaries.remove()
    assert seen["scratch"] == "ok", "the private scratch directory must be writable"
    assert seen["net"] != "ok", "no network"
    assert set(seen["env"].split(",")) <= set(WORKER_ENV) | {"PWD", "HOSTNAME",
                                                            "PYTHONDONTWRITEBYTECODE",
                                                            "PYTHONHASHSEED"}
    if backend != "process":  # it runs as the user, with the user's rights (documented)
        assert seen["usr"] != "ok" and seen["pkg"] != "ok", "the system must be read-only"
        assert seen["uid0"] == "ok", "the worker must not be root"
        assert not list(Path("/tmp").glob("autotuner_probe_*")), "its /tmp must be private"
    assert_no_leftovers(scratch_root, backend)


@pytest.mark.parametrize("backend", backend_params())
def test_cpu_limit_stops_a_spinning_worker_before_the_wall_limit(backend, scratch_root):
    code = "TUNABLES = {}\n\ndef route(request, cluster, params):\n    while True:\n        pass\n"
    ev = evaluate(code, workload=SPEC, sandbox=backend, skip_check=True,
                  limits=LIMITS.with_(wall_s=20.0, cpu_s=1))
    assert ev.verdict == "failed"
    assert "CPU time limit" in ev.reasons[0] or "SIGKILL" in ev.reasons[0], ev.reasons
    assert ev.wall_s < 15
    assert_no_leftovers(scratch_root, backend)


@pytest.mark.parametrize("backend", backend_params())
def test_output_cap_on_stdout(backend, scratch_root):
    # Writes a flood straight to the result channel (whichever fd it is), not through print().
    code = (
        "import os\nTUNABLES = {}\n\ndef route(request, cluster, params):\n"
        "    while True:\n        for fd in range(3, 10):\n            try:\n"
        "                os.write(fd, b'[' * 65536)\n"
        "            except OSError:\n                pass\n"
    )
    ev = evaluate(code, workload=SPEC, sandbox=backend, skip_check=True,
                  limits=LIMITS.with_(output_bytes=1 << 20))
    assert ev.verdict == "failed"
    assert "output limit" in ev.reasons[0] or "garbage" in ev.reasons[0], ev.reasons
    assert_no_leftovers(scratch_root, backend)


@pytest.mark.parametrize("backend", backend_params())
def test_spare_workers_serve_one_request_each_and_are_released(backend, scratch_root):
    from autotuner.resources import baseline_path

    code = baseline_path("fixed_chunk").read_text()
    first = evaluate(code, workload=SPEC, sandbox=backend, limits=LIMITS, warm=True)
    second = evaluate(code, workload=SPEC, sandbox=backend, limits=LIMITS, warm=True)
    assert first.ok and second.ok
    assert json.dumps(first.metrics) == json.dumps(second.metrics)
    assert_no_leftovers(scratch_root, backend)


# ------------------------------------------------------------------------------ threads
# Sleeps on the first request, so the worker is still running when the thread that started it
# has ended (the sleep is allowed because the check is bypassed: this tests the sandbox).
SLOW_START = '''
import time

TUNABLES = {}


def route(request, cluster, params):
    if request.id == 0:
        time.sleep(2.0)
    return request.id % len(cluster.replicas)
'''


class StartedFromAThread(Backend):
    """Each worker is asked for from a new thread that ends soon after (as spares and proposal
    threads do): a parent-death signal tied to that thread would kill the worker."""

    def __init__(self, inner: Backend, linger_s: float):
        super().__init__(name=inner.name, same_runtime=inner.same_runtime)
        self.inner, self.linger_s = inner, linger_s

    def start(self, request: bytes, limits: Limits, *, warm: bool = False) -> WorkerHandle:
        box: dict = {}

        def ask() -> None:
            box["handle"] = self.inner.start(request, limits, warm=warm)
            time.sleep(self.linger_s)  # long enough for the worker to be fully set up

        thread = threading.Thread(target=ask)
        thread.start()
        thread.join()
        return box["handle"]


@pytest.mark.parametrize("backend", backend_params())
def test_a_worker_outlives_the_thread_that_asked_for_it(backend, scratch_root):
    proxy = StartedFromAThread(get_backend(backend, warn=False), linger_s=1.0)
    ev = evaluate(SLOW_START, workload=SPEC, sandbox=proxy, skip_check=True,
                  limits=LIMITS.with_(wall_s=30.0))
    assert ev.ok, ev.reasons
    assert_no_leftovers(scratch_root, backend)


@pytest.mark.parametrize("backend", backend_params())
def test_spares_outlive_the_threads_that_prepared_them(backend, scratch_root, monkeypatch):
    from autotuner.resources import baseline_path

    wasted: list[bool] = []
    close = WorkerHandle.close

    def counting_close(self: WorkerHandle) -> None:
        if not self._closed:
            wasted.append(not self.sent)  # a spare that never got its request
        close(self)

    monkeypatch.setattr(WorkerHandle, "close", counting_close)
    code = baseline_path("fixed_chunk").read_text()
    proxy = StartedFromAThread(get_backend(backend, warn=False), linger_s=0.0)
    for _ in range(4):
        ev = evaluate(code, workload=SPEC, sandbox=proxy, limits=LIMITS, warm=True)
        assert ev.ok, ev.reasons
        time.sleep(0.5)  # the preparing thread has long ended: the spare must still be there
    assert not any(wasted), f"{sum(wasted)} spares died before they were used"
    assert_no_leftovers(scratch_root, backend)


# ------------------------------------------------------------------------------ kill -9
# A campaign-like process: a spare waiting, and a worker busy with a policy that never returns.
KILLED_OWNER = '''
import sys, threading, time
from autotuner.evaluate import evaluate
from autotuner.isolation import Limits, get_backend
from autotuner.resources import baseline_path
from autotuner.simulation import WorkloadSpec

backend = get_backend(sys.argv[1], warn=False)
spec = WorkloadSpec(scenario="chat", requests=50, seed=0)
limits = Limits(wall_s=120.0, cpu_s=120, memory_bytes=1 << 30)
spin = "TUNABLES = {}\\n\\ndef route(request, cluster, params):\\n    while True:\\n        pass\\n"
assert evaluate(baseline_path("fixed_chunk").read_text(), workload=spec, sandbox=backend,
                limits=limits, warm=True).ok
threading.Thread(target=evaluate, args=(spin,), daemon=True,
                 kwargs=dict(workload=spec, sandbox=backend, limits=limits, skip_check=True,
                             warm=True)).start()
time.sleep(3.0)
print("ready", flush=True)
time.sleep(600)
'''


def _owned_by(pid: int, root: Path) -> list[Path]:
    return [p for p in root.glob(f"autotuner-sandbox-{pid}-*")]


@pytest.mark.parametrize("backend", backend_params())
def test_kill_9_of_the_owner_leaves_nothing_once_the_next_backend_starts(backend, scratch_root):
    import subprocess
    import sys

    from sandbox_support import children, reap

    env = dict(os.environ, TMPDIR=str(scratch_root),
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    owner = subprocess.Popen([sys.executable, "-c", KILLED_OWNER, backend], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        assert _owned_by(owner.pid, scratch_root) or backend != "process"
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # its workers are re-parented to us (subreaper)
        reap()
        if not children():
            break
        time.sleep(0.1)
    assert not children(), "workers outlived their owner"

    removed = get_backend(backend, warn=False).sweep_orphans()
    left = _owned_by(owner.pid, scratch_root)
    for root in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        if root.is_dir():
            left += _owned_by(owner.pid, root)
    assert not left, f"left behind after the sweep: {left} (removed {removed})"
    if backend == "docker":
        from autotuner.isolation.docker import leftover_containers

        assert not leftover_containers(owner.pid), "containers left behind"
    assert_no_leftovers(scratch_root, backend)


# ------------------------------------------------------------------------------ determinism
# Routes by str hashes and by the iteration order of a set of strings: both are salted per
# process unless the worker's hash seed is fixed.
HASHING = '''
TUNABLES = {}
NAMES = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"}


def route(request, cluster, params):
    first = list(NAMES)[request.id % len(NAMES)]
    return hash(first + str(request.id)) % len(cluster.replicas)
'''


@pytest.mark.parametrize("backend", backend_params())
def test_the_same_policy_decides_the_same_in_every_worker(backend, scratch_root):
    from autotuner.sim.engine import ClusterSpec

    cluster = ClusterSpec(replicas=4)
    runs = [evaluate(HASHING, workload=SPEC, cluster=cluster, sandbox=backend, limits=LIMITS)
            for _ in range(3)]
    assert all(ev.ok for ev in runs), [ev.reasons for ev in runs]
    routes = [tuple(ev.result.replica.tolist()) for ev in runs]
    assert routes[0] == routes[1] == routes[2], "str hashing differs between workers"
    assert runs[0].metrics == runs[1].metrics == runs[2].metrics
    assert_no_leftovers(scratch_root, backend)


def test_the_sweep_removes_only_what_dead_owners_left(scratch_root):
    me = host.owner_tag()
    pid, start, ns = me.split("-")
    reused = f"{pid}-{int(start) + 1}-{ns}"  # this pid, started at another time: a dead owner
    foreign = f"{pid}-{int(start) + 1}-{int(ns) + 1}"  # another pid namespace: not judged here
    names = {tag: scratch_root / f"autotuner-sandbox-{tag}-abcd1234"
             for tag in (me, reused, foreign)}
    for path in names.values():
        (path / "scratch").mkdir(parents=True)
        (path / "scratch" / "file").write_text("x")
        os.chmod(path / "scratch", 0o500)  # as a worker may leave it
    cgroups = []
    root = host.pids_cgroup_root()
    if root is not None:
        for tag in (me, reused, foreign):
            cgroups.append(root / f"autotuner-sandbox-{tag}-999999")
            cgroups[-1].mkdir()
    try:
        removed = host.sweep_orphans()
        assert not names[reused].exists() and str(names[reused]) in removed
        assert names[me].exists() and names[foreign].exists()
        if cgroups:
            assert [c.exists() for c in cgroups] == [True, False, True]
    finally:
        for path in cgroups:
            if path.exists():
                path.rmdir()
        for path in names.values():
            host.remove_scratch(path)
