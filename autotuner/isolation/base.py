"""What every isolation backend shares: the limits, the worker handle, detection and lookup.

A backend starts ``sandbox/worker.py`` in an isolated process and hands back a ``WorkerHandle``:
the trusted side writes one request on its stdin and reads its stdout line by line while the
worker is still running (so the trusted replay overlaps the worker's simulation on another core).
Everything the handle reads is capped in bytes and bounded by one wall-clock deadline; any breach,
crash or signal becomes a ``WorkerFault`` with a reason a person (or a proposer) can act on, and
``close()`` always leaves no process, container or scratch directory behind.

Backends, strongest first: ``bwrap`` (bubblewrap: user, pid, net, ipc, uts namespaces, a root
built only of what the worker needs, read-only), ``docker`` (no network, read-only root, tmpfs
scratch, cgroup limits, no capabilities, non-root; gVisor's runsc when registered) and
``process`` (a plain child with rlimits and a scrubbed environment; namespaces where it can get
them). ``detect_backend()`` runs the worker's self-test under each and keeps the first that works.

Workers die with this process and never before: every one is forked by a single long-lived
thread (``in_forker``; parent-death signals are per thread), and the worker exits when its stdin,
which only this process holds open, ends. What a ``kill -9`` leaves on the host (pids cgroups,
scratch directories, containers) is named after its owner and removed by the next process that
starts a backend (``sweep_orphans``).
"""

from __future__ import annotations

import atexit
import errno
import os
import queue
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

BACKEND_ORDER = ("bwrap", "docker", "process")
PR_SET_PDEATHSIG = 1

# The longest line the protocol can need: the worker flushes its decision log in batches well
# below this (sandbox/worker.py). Past it the trusted side stops buffering and gives up.
MAX_LINE_BYTES = 32 << 20

# Environment variables a worker may see: only these, with these values, never the parent's.
WORKER_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/scratch",
    "TMPDIR": "/scratch",
    # str and bytes hashes (hash(), set order) the same in every run: a policy's decisions must
    # not depend on a per-process salt. Read because the worker runs without -E/-I (see below).
    "PYTHONHASHSEED": "0",
    # numpy's BLAS would otherwise start one thread per core (and each counts as a process).
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


# How every backend starts the worker's interpreter: no site (-S), no user site (-s), no script
# directory on sys.path (-P), no bytecode written (-B). Not -I/-E: those would also ignore
# PYTHONHASHSEED, and the worker's environment is exactly WORKER_ENV anyway (each backend
# clears everything else), so no other PYTHON* variable can reach it.
PYTHON_FLAGS = ("-S", "-s", "-P", "-B")


class SandboxUnavailable(RuntimeError):
    """A backend that cannot run here (forced with ``--sandbox`` or asked for by name)."""


class SandboxBroken(SandboxUnavailable):
    """The evaluation machinery (the sandbox, or the processes that drive it) failed repeatedly
    for reasons that are not the policy's, e.g. a worker killed before the policy ran: nothing
    about the policy is known, so nothing is recorded (``autotuner resume`` evaluates it
    afresh)."""


class WorkerFault(Exception):
    """The worker broke a limit, crashed, or said something that is not the protocol.

    ``str()`` is the reason given to the user and the proposer; it never quotes worker output.
    """


@dataclass(frozen=True)
class Limits:
    """Per-evaluation resource limits, enforced by every backend (by rlimits, cgroups or both).

    wall_s: wall-clock deadline for the whole worker run; cpu_s: CPU seconds (RLIMIT_CPU or the
    cgroup's share); memory_bytes: address space (RLIMIT_AS) or cgroup memory; processes: tasks
    the worker may have, threads included (RLIMIT_NPROC inside a namespace, or the pids cgroup);
    output_bytes: the most the trusted side reads from stdout (the decision log); stderr_bytes:
    the most it accepts on stderr (noise, discarded); scratch_bytes: the private writable
    directory; file_bytes: largest file the worker may write (RLIMIT_FSIZE); open_files:
    RLIMIT_NOFILE.
    """

    wall_s: float = 120.0
    cpu_s: int = 120
    memory_bytes: int = 2 << 30
    processes: int = 16
    output_bytes: int = 256 << 20
    stderr_bytes: int = 1 << 20
    scratch_bytes: int = 16 << 20
    file_bytes: int = 16 << 20
    open_files: int = 256

    def with_(self, **changes: Any) -> Limits:
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {
            "wall_s": self.wall_s, "cpu_s": self.cpu_s, "memory_bytes": self.memory_bytes,
            "processes": self.processes, "file_bytes": self.file_bytes,
            "open_files": self.open_files,
        }


def rlimit_preexec(limits: Limits, *, nproc: bool = False) -> Callable[[], None]:
    """A ``preexec_fn`` that applies the rlimits to the child (hard = soft, so no raising).

    RLIMIT_NPROC is left to the worker by default: outside a user namespace it counts every
    process of the uid, so it is only meaningful where the worker itself sets it.
    """
    import resource

    cpu = max(1, int(limits.cpu_s))
    pairs = [
        (resource.RLIMIT_CPU, (cpu, cpu + 1)),  # SIGXCPU at cpu, SIGKILL one second later
        (resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes)),
        (resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes)),
        (resource.RLIMIT_CORE, (0, 0)),
        (resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files)),
    ]
    if nproc:
        pairs.append((resource.RLIMIT_NPROC, (limits.processes, limits.processes)))

    def apply() -> None:
        for which, value in pairs:
            try:
                resource.setrlimit(which, value)
            except (ValueError, OSError):
                soft, hard = resource.getrlimit(which)
                if hard != resource.RLIM_INFINITY:
                    resource.setrlimit(which, (min(value[0], hard), hard))

    return apply


_PIDS_ROOT: list[Path | None] = []


def pids_cgroup_root() -> Path | None:
    """Where this process may create pids cgroups (root only; v1 or v2), or None.

    Needed because the kernel never applies RLIMIT_NPROC to root's processes, not even inside
    a user namespace that root created, so for root the process limit must be a cgroup.
    """
    if _PIDS_ROOT:
        return _PIDS_ROOT[0]
    found = None
    if sys.platform == "linux" and os.geteuid() == 0:
        v1 = Path("/sys/fs/cgroup/pids")
        v2 = Path("/sys/fs/cgroup")
        try:
            if (v1 / "cgroup.procs").exists() and os.access(v1, os.W_OK):
                found = v1
            elif "pids" in (v2 / "cgroup.subtree_control").read_text().split() and \
                    os.access(v2, os.W_OK):
                found = v2
        except OSError:
            found = None
    _PIDS_ROOT.append(found)
    return found


# ------------------------------------------------------------------------------- ownership
# Everything a worker leaves on the host (pids cgroups, scratch directories, containers) is named
# after its owner: pid, the pid's start time (so a reused pid is not mistaken for the owner) and
# the pid namespace (so another container's processes are never judged from here). A kill -9
# skips every teardown; whoever next starts a backend removes what dead owners left.
_NAME = re.compile(r"^autotuner-sandbox-(\d+)-(\d+)-(\d+)-")
_OLD_CGROUP = re.compile(r"^autotuner-sandbox-(\d+)-\d+-\d{15,}$")  # before owner tags


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def owner_tag() -> str:
    """``PID-STARTTIME-PIDNS`` of this process: the prefix of every name it leaves on the host."""
    pid = os.getpid()
    return f"{pid}-{_start_time(pid) or 0}-{_pid_namespace()}"


def owner_alive(tag: str) -> bool | None:
    """Whether the process a tag names still runs; None when it cannot be told from here
    (another pid namespace)."""
    try:
        pid, start, ns = (int(part) for part in tag.split("-"))
    except ValueError:
        return None
    if ns != _pid_namespace():
        return None
    return _start_time(pid) == start


def orphaned(name: str) -> bool:
    """Whether a leftover's name says its owner is dead (never for a live or unknown owner)."""
    old = _OLD_CGROUP.match(name)
    if old:
        return not Path(f"/proc/{old.group(1)}").exists()
    m = _NAME.match(name + "-")
    return bool(m) and owner_alive("-".join(m.groups())) is False


def remove_scratch(path: Path) -> None:
    """rmtree, also of files and directories the worker made read-only."""
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        subprocess.run(["chmod", "-R", "u+rwX", str(path)], capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


def sweep_orphans() -> list[str]:
    """Remove pids cgroups (killing what is left in them) and scratch directories whose owner
    is dead. Returns their paths."""
    removed = []
    root = pids_cgroup_root()
    if root is not None:
        for path in root.glob("autotuner-sandbox-*"):
            if path.is_dir() and orphaned(path.name):
                PidsCgroup.remove_path(path)
                if not path.exists():
                    removed.append(str(path))
    for path in Path(tempfile.gettempdir()).glob("autotuner-sandbox-*"):
        m = _NAME.match(path.name)
        if m and path.is_dir() and owner_alive("-".join(m.groups())) is False:
            remove_scratch(path)
            if not path.exists():
                removed.append(str(path))
    return removed


class PidsCgroup:
    """A throw-away pids cgroup holding one worker: the process limit when running as root."""

    _seq = 0

    def __init__(self, max_pids: int):
        root = pids_cgroup_root()
        if root is None:
            raise OSError("no writable pids cgroup")
        PidsCgroup._seq += 1
        self.path = root / f"autotuner-sandbox-{owner_tag()}-{PidsCgroup._seq}"
        self.path.mkdir()
        try:
            (self.path / "pids.max").write_text(str(max_pids))
        except OSError:
            self.remove()
            raise
        self._procs = str(self.path / "cgroup.procs")

    def join(self) -> None:
        """Run in the child before exec: move it (and so all it starts) into the cgroup."""
        fd = os.open(self._procs, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    def remove(self) -> None:
        self.remove_path(self.path)

    @staticmethod
    def remove_path(path: Path) -> None:
        """rmdir, killing whatever still runs in it first (a cgroup with tasks cannot go)."""
        for _ in range(200):
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                try:
                    for pid in (path / "cgroup.procs").read_text().split():
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except (ProcessLookupError, PermissionError, ValueError):
                            pass
                except OSError:
                    pass
                time.sleep(0.01)


def die_with_parent_preexec() -> Callable[[], None]:
    """A ``preexec_fn`` part: SIGKILL this child when the thread that forked it ends.

    Only meaningful for children forked by the forker thread (``in_forker``), which ends only
    with the process. If the parent is already gone by the time the signal is armed, exit.
    """
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return arm


def child_setup(limits: Limits, cgroup: PidsCgroup | None, *,
                die_with_parent: bool = False) -> Callable[[], None]:
    """``preexec_fn``: join the pids cgroup (if any), arm the parent-death signal (if asked),
    then apply the rlimits."""
    steps = [cgroup.join] if cgroup is not None else []
    if die_with_parent:
        steps.append(die_with_parent_preexec())
    steps.append(rlimit_preexec(limits))

    def setup() -> None:
        for step in steps:
            step()

    return setup


def signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def describe_exit(status: int | None, *, signal_offset: bool, limits: Limits,
                  oom_killed: bool = False) -> str:
    """Turn a worker's exit status into a reason. ``signal_offset``: 128+N means signal N."""
    if oom_killed:
        return f"killed by the memory limit ({limits.memory_bytes >> 20} MiB)"
    if status is None:
        return "the worker did not exit"
    sig = 0
    if status < 0:
        sig = -status
    elif signal_offset and 128 < status < 128 + 65:
        sig = status - 128
    if sig:
        name = signal_name(sig)
        if name == "SIGXCPU":
            return f"the CPU time limit ({limits.cpu_s} s) was exceeded ({name})"
        hint = {
            "SIGKILL": "was killed (memory, CPU or process limit)",
            "SIGSEGV": "crashed (stack overflow from deep recursion, or memory exhausted)",
            "SIGBUS": "crashed (memory exhausted)",
            "SIGABRT": "aborted (out of memory or an internal error)",
        }.get(name, "was killed")
        return f"the worker {hint} ({name})"
    if status == 0:
        return "the worker exited without sending its result"
    return f"the worker exited with status {status} before sending its result"


# ------------------------------------------------------------------------------- the handle
@dataclass
class ExitInfo:
    status: int | None  # as the backend reports it
    reason: str  # a sentence; "" when status is 0
    ok: bool


class WorkerHandle:
    """A started worker: one request in, capped line-wise output out, and a clean teardown.

    Subclasses implement ``_poll(timeout)``, ``_kill()``, ``_exit_info(timeout)`` and
    ``_cleanup()``; this class enforces the deadline and the byte caps.
    """

    def __init__(self, limits: Limits):
        self.limits = limits
        self.started = time.monotonic()
        self.deadline = self.started + limits.wall_s + 60.0  # reset by send()
        self.sent = False
        self.out_bytes = 0
        self.err_bytes = 0
        self.err_tail = b""  # for AUTOTUNER_SANDBOX_DEBUG only; never shown otherwise
        self._buf = bytearray()
        self._lines: list[bytes] = []
        self.out_eof = False
        self.err_eof = False
        self.killed_by_us: str | None = None
        self._closed = False

    # -- to implement
    def _send(self, request: bytes) -> None:
        """Start delivering the request on the worker's stdin (then close it)."""
        raise NotImplementedError

    def alive(self) -> bool:
        """Whether a spare worker is still waiting for its request."""
        return True

    def _poll(self, timeout: float) -> list[tuple[str, bytes]]:
        """Wait up to ``timeout`` s; return ("out"|"err", data) chunks, b"" meaning EOF."""
        raise NotImplementedError

    def _kill(self) -> None:
        raise NotImplementedError

    def _exit_info(self, timeout: float) -> ExitInfo:
        raise NotImplementedError

    def _cleanup(self) -> None:
        """Remove whatever the run left (scratch, container). Called once, after the kill."""

    def send(self, request: bytes) -> None:
        """Hand the worker its one request; the wall-time limit counts from here."""
        if self.sent:
            raise RuntimeError("a worker takes exactly one request")
        self.sent = True
        self.started = time.monotonic()
        self.deadline = self.started + self.limits.wall_s
        self._send(request)

    # -- reading
    def _fault(self, reason: str) -> WorkerFault:
        self.killed_by_us = reason
        self.kill()
        return WorkerFault(reason)

    def _pump(self, timeout: float) -> None:
        for stream, data in self._poll(timeout):
            if stream == "out":
                if not data:
                    self.out_eof = True
                    continue
                self.out_bytes += len(data)
                if self.out_bytes > self.limits.output_bytes:
                    raise self._fault(
                        f"output limit: the worker wrote more than "
                        f"{self.limits.output_bytes >> 20} MiB on stdout"
                    )
                self._buf += data
                if b"\n" in data:
                    *lines, rest = bytes(self._buf).split(b"\n")
                    self._lines.extend(lines)
                    self._buf = bytearray(rest)
                if len(self._buf) > MAX_LINE_BYTES:
                    raise self._fault(f"garbage output: a line of more than "
                                      f"{MAX_LINE_BYTES >> 20} MiB (the protocol's lines are "
                                      "far shorter)")
            else:
                if not data:
                    self.err_eof = True
                    continue
                self.err_bytes += len(data)
                self.err_tail = (self.err_tail + data)[-65536:]
                if self.err_bytes > self.limits.stderr_bytes:
                    raise self._fault(
                        f"output limit: the worker wrote more than "
                        f"{self.limits.stderr_bytes >> 10} KiB on stderr (print() output counts)"
                    )

    def next_line(self) -> bytes | None:
        """The next stdout line, or None at end of output. Raises WorkerFault on a breach."""
        while not self._lines:
            if self.out_eof:
                if self._buf:
                    line, self._buf = bytes(self._buf), bytearray()
                    return line
                return None
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise self._fault(f"timed out: no result within the {self.limits.wall_s:g} s "
                                  "wall-time limit")
            self._pump(min(left, 1.0))
        return self._lines.pop(0)

    def finish(self) -> ExitInfo:
        """After stdout ended: drain stderr, wait for the exit (bounded), report it."""
        while not self.err_eof:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise self._fault(f"timed out: the worker did not exit within the "
                                  f"{self.limits.wall_s:g} s wall-time limit")
            self._pump(min(left, 1.0))
        left = max(0.5, self.deadline - time.monotonic())
        info = self._exit_info(left)
        if info.status is None:
            raise self._fault(f"timed out: the worker did not exit within the "
                              f"{self.limits.wall_s:g} s wall-time limit")
        return info

    def kill(self) -> None:
        if self._closed:
            return
        try:
            self._kill()
        except Exception:  # noqa: BLE001 - teardown must not raise
            pass

    def close(self) -> None:
        """Kill whatever is left and remove every trace of the run. Idempotent."""
        if self._closed:
            return
        self.kill()
        self._closed = True
        try:
            self._cleanup()
        finally:
            if os.environ.get("AUTOTUNER_SANDBOX_DEBUG") and self.err_tail:
                sys.stderr.write("--- sandbox worker stderr (debug) ---\n")
                sys.stderr.write(self.err_tail.decode("utf-8", "replace") + "\n")

    def __enter__(self) -> WorkerHandle:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class PopenWorker(WorkerHandle):
    """A worker run as a local child (bwrap, unshare, or plain): pipes and a process group."""

    def __init__(self, argv: Sequence[str], limits: Limits, *,
                 env: dict[str, str], cwd: str | None = None,
                 preexec: Callable[[], None] | None = None, signal_offset: bool = False,
                 cleanup: Callable[[], None] | None = None):
        super().__init__(limits)
        self.signal_offset = signal_offset
        self._cleanup_fn = cleanup
        try:
            self.proc = subprocess.Popen(
                list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=env, cwd=cwd, preexec_fn=preexec,
                start_new_session=True, close_fds=True,
            )
        except BaseException:
            if cleanup:
                cleanup()
            raise
        self._sel = selectors.DefaultSelector()
        for stream, pipe in (("out", self.proc.stdout), ("err", self.proc.stderr)):
            assert pipe is not None
            os.set_blocking(pipe.fileno(), False)
            self._sel.register(pipe.fileno(), selectors.EVENT_READ, stream)
        self._writer: threading.Thread | None = None

    def _send(self, request: bytes) -> None:
        # Written by a thread: it may exceed the pipe buffer, and the worker reads all of stdin
        # before it writes anything, so the thread cannot deadlock with our reading of stdout.
        self._writer = threading.Thread(target=self._write, args=(request,), daemon=True)
        self._writer.start()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _write(self, request: bytes) -> None:
        # stdin stays open after the request: the worker takes its end of file as this
        # process's death (sandbox/worker.py), so only close() or a kill -9 may close it.
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write(request)
            stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def _poll(self, timeout: float) -> list[tuple[str, bytes]]:
        chunks = []
        for key, _ in self._sel.select(timeout):
            try:
                data = os.read(key.fd, 1 << 20)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno != errno.EINTR:
                    data = b""
                else:
                    continue
            if not data:
                self._sel.unregister(key.fd)
            chunks.append((key.data, data))
        return chunks

    def _kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()

    def _exit_info(self, timeout: float) -> ExitInfo:
        # wait4, not wait: its rusage covers the whole reaped tree, which tells a CPU-limit kill
        # apart even where a wrapper (unshare) reports its child's signal as a plain status.
        end = time.monotonic() + timeout
        while True:
            if self.proc.returncode is not None:
                status, cpu = self.proc.returncode, 0.0
                break
            try:
                pid, raw, usage = os.wait4(self.proc.pid, os.WNOHANG)
            except ChildProcessError:
                status, cpu = self.proc.wait(1), 0.0
                break
            if pid:
                status = os.waitstatus_to_exitcode(raw)
                self.proc.returncode = status
                cpu = usage.ru_utime + usage.ru_stime
                break
            if time.monotonic() > end:
                return ExitInfo(None, "", False)
            time.sleep(0.005)
        if status == 0:
            return ExitInfo(0, "", True)
        if cpu >= self.limits.cpu_s - 0.05:
            return ExitInfo(status, f"the CPU time limit ({self.limits.cpu_s} s) was exceeded",
                            False)
        return ExitInfo(status, describe_exit(status, signal_offset=self.signal_offset,
                                              limits=self.limits), False)

    def _cleanup(self) -> None:
        try:
            # The group may hold stragglers even after the leader exited normally.
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if self._writer is not None:
            self._writer.join(1)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if pipe:
                    pipe.close()
            except OSError:
                pass
        self._sel.close()
        if self._cleanup_fn:
            self._cleanup_fn()


# ------------------------------------------------------------------------------- the layout
@dataclass(frozen=True)
class HostLayout:
    """Where the worker's code lives on this machine, and where a sandbox shows it.

    The worker finds ``autotuner`` and ``numpy`` in ``/sandbox/lib`` (bound read-only one by
    one, so nothing else from site-packages or the checkout is visible) and is started with
    ``PYTHON_FLAGS`` in exactly ``WORKER_ENV``, so no site-packages, user site, other PYTHON*
    variable or cwd reaches it.
    """

    python: str  # the real interpreter binary
    prefix: str  # its installation (sys.base_prefix): stdlib and libpython
    worker: str  # sandbox/worker.py
    lib_binds: tuple[tuple[str, str], ...]  # (host dir, name under /sandbox/lib)

    @staticmethod
    def of_this_process() -> HostLayout:
        import numpy

        from autotuner.resources import asset_dir

        pkg = Path(__file__).resolve().parents[1]
        npdir = Path(numpy.__file__).resolve().parent
        binds = [(str(pkg), "autotuner"), (str(npdir), "numpy")]
        libs = npdir.parent / "numpy.libs"  # wheels ship their BLAS beside the package
        if libs.is_dir():
            binds.append((str(libs), "numpy.libs"))
        binds.append((str(asset_dir("baselines")), "baselines"))
        return HostLayout(
            python=os.path.realpath(sys.executable),
            prefix=os.path.realpath(sys.base_prefix),
            worker=str(asset_dir("sandbox") / "worker.py"),
            lib_binds=tuple(binds),
        )


# ------------------------------------------------------------------------------- the forker
_FORKERS: dict[int, tuple[threading.Thread, queue.SimpleQueue]] = {}
_FORKER_LOCK = threading.Lock()


def _serve_forever(jobs: queue.SimpleQueue) -> None:
    while True:
        fn, args, future = jobs.get()
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            future.set_exception(exc)


def in_forker(fn: Callable[..., Any], *args: Any) -> Future:
    """Run ``fn(*args)`` on this process's forker thread; every worker is forked there.

    Why one thread: a worker's parent-death signal (bwrap's ``--die-with-parent``, the process
    backend's PR_SET_PDEATHSIG) is sent when the *thread* that forked it ends, not the process.
    Workers are asked for from threads that end at any moment (spare preparation, proposal
    threads), which used to kill them mid-evaluation. The forker never returns, so its workers
    die exactly when this process dies (including ``kill -9``), and never before.
    """
    pid = os.getpid()
    with _FORKER_LOCK:
        entry = _FORKERS.get(pid)
        if entry is None or not entry[0].is_alive():
            jobs: queue.SimpleQueue = queue.SimpleQueue()
            thread = threading.Thread(target=_serve_forever, args=(jobs,), daemon=True,
                                      name="autotuner-worker-forker")
            thread.start()
            entry = _FORKERS[pid] = (thread, jobs)
    future: Future = Future()
    if threading.current_thread() is entry[0]:  # already on it (a backend's own start-up)
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001
            future.set_exception(exc)
        return future
    entry[1].put((fn, args, future))
    return future


def settle(future: Future) -> WorkerHandle:
    """The forker's handle; if the caller is interrupted while waiting, the handle is closed
    once it exists, so no worker is left behind."""
    try:
        return future.result()
    except BaseException:
        future.add_done_callback(_close_if_handle)
        raise


def settled_or_none(future: Future | None) -> WorkerHandle | None:
    """A spare's handle, or None when there is none or it could not start."""
    if future is None:
        return None
    try:
        return settle(future)
    except Exception:  # noqa: BLE001 - no spare; the next start() spawns one
        return None


def _close_if_handle(future: Future) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()


# ------------------------------------------------------------------------------- backends
@dataclass
class Backend:
    """One way of isolating the worker. ``available()`` runs the worker's self-test under it."""

    name: str = ""
    strength: str = ""  # one line for users: what it isolates
    weaker: bool = False  # the CLI warns when a weaker backend is used
    same_runtime: bool = True  # the worker runs this process's Python and numpy
    detail: str = ""  # filled in by available(): variant, runtime, versions
    _status: tuple[bool, str] | None = field(default=None, repr=False)
    _spare: Future | None = field(default=None, repr=False)  # of a WorkerHandle
    _spare_lock: Any = field(default_factory=threading.Lock, repr=False)
    _swept: bool = field(default=False, repr=False)

    def spawn(self, limits: Limits) -> WorkerHandle:
        """Start a worker that imports its code and then waits for its request.

        Called only on the forker thread (see ``in_forker``); never call it directly.
        """
        raise NotImplementedError

    def sweep_orphans(self) -> list[str]:
        """Remove what sandboxes of dead owners left (a ``kill -9`` skips every teardown).

        Runs once per process, before this backend's first worker. Returns what was removed.
        """
        return sweep_orphans()

    def _spawn(self, limits: Limits) -> WorkerHandle:
        if not self._swept:
            self._swept = True
            try:
                self.sweep_orphans()
            except Exception:  # noqa: BLE001 - someone else's leftovers must not stop us
                pass
        return self.spawn(limits)

    def start(self, request: bytes, limits: Limits, *, warm: bool = False) -> WorkerHandle:
        """A worker running ``request``. ``warm``: use (and afterwards prepare) a spare worker.

        A spare is a fresh worker started ahead of time, so that its interpreter and imports
        overlap other work; it still serves exactly one request. ``release_spares()`` (also run
        at exit) stops any that are left. Every worker is forked by the forker thread, whichever
        thread asks.
        """
        handle = self._take_spare(limits) if warm else None
        if handle is None:
            handle = settle(in_forker(self._spawn, limits))
        try:
            handle.send(request)
        except BaseException:
            handle.close()
            raise
        if warm:
            self._prepare_spare(limits)
        return handle

    def _take_spare(self, limits: Limits) -> WorkerHandle | None:
        with self._spare_lock:
            pending, self._spare = self._spare, None
        spare = settled_or_none(pending)
        if spare is None:
            return None
        if spare.limits == limits and spare.alive():
            return spare
        spare.close()
        return None

    def _prepare_spare(self, limits: Limits) -> None:
        pending = in_forker(self._spawn, limits)
        with self._spare_lock:
            old, self._spare = self._spare, pending
        spare = settled_or_none(old)
        if spare is not None:
            spare.close()

    def release_spare(self) -> None:
        with self._spare_lock:
            pending, self._spare = self._spare, None
        spare = settled_or_none(pending)
        if spare is not None:
            spare.close()

    def probe(self) -> tuple[bool, str]:
        """Whether this backend can run here, with the reason if not. Not cached."""
        return self._selftest()

    def available(self) -> tuple[bool, str]:
        if self._status is None:
            try:
                self._status = self.probe()
            except Exception as exc:  # noqa: BLE001 - any failure means "not here"
                self._status = (False, f"{type(exc).__name__}: {exc}")
        return self._status

    def _selftest(self, limits: Limits | None = None) -> tuple[bool, str]:
        import json

        limits = limits or Limits(wall_s=60.0, cpu_s=30, output_bytes=1 << 16)
        handle = self.start(b'{"selftest": true}\n', limits)
        try:
            line = handle.next_line()
            info = handle.finish()
        except WorkerFault as exc:
            return False, f"self-test failed: {exc}"
        finally:
            handle.close()
        try:
            answer = json.loads(line or b"")
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or answer.get("selftest") != "ok":
            return False, f"self-test failed: {info.reason or 'no answer'}"
        if not info.ok:
            return False, f"self-test failed: {info.reason}"
        self.detail = (self.detail + ", " if self.detail else "") + \
            f"python {answer.get('python')}, numpy {answer.get('numpy')}"
        return True, ""

    def describe(self) -> str:
        return f"{self.name} ({self.detail})" if self.detail else self.name


def _make(name: str) -> Backend:
    if name == "bwrap":
        from .bwrap import BwrapBackend

        return BwrapBackend()
    if name == "docker":
        from .docker import DockerBackend

        return DockerBackend()
    if name == "process":
        from .process import ProcessBackend

        return ProcessBackend()
    raise SandboxUnavailable(
        f"no sandbox backend named {name!r} (known: {', '.join(BACKEND_ORDER)}, auto)"
    )


_CACHE: dict[tuple[int, str], Backend] = {}
_DETECTED: dict[int, Backend] = {}
_WARNED: set[int] = set()
_LOCK = threading.Lock()


def _cached(name: str) -> Backend:
    key = (os.getpid(), name)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _make(name)
        return _CACHE[key]


def backend_status(name: str) -> tuple[bool, str]:
    """(available, reason if not) for a backend by name; runs its self-test once per process."""
    return _cached(name).available()


def detect_backend() -> Backend:
    """The strongest backend that passes its self-test here; cached for this process."""
    pid = os.getpid()
    if pid in _DETECTED:
        return _DETECTED[pid]
    reasons = []
    for name in BACKEND_ORDER:
        backend = _cached(name)
        ok, why = backend.available()
        if ok:
            _DETECTED[pid] = backend
            return backend
        reasons.append(f"{name}: {why}")
    raise SandboxUnavailable("no sandbox backend works here (" + "; ".join(reasons) + ")")


def get_backend(name: str | None = None, *, warn: bool = True) -> Backend:
    """A backend by name (``None`` or ``"auto"``: detect). Unavailable by name is an error.

    When the chosen backend is weaker (``process``), a one-line warning goes to stderr, once
    per process.
    """
    if name in (None, "", "auto"):
        backend = detect_backend()
    else:
        backend = _cached(name)
        ok, why = backend.available()
        if not ok:
            raise SandboxUnavailable(f"sandbox backend {name!r} is not available here: {why}")
    if warn and backend.weaker and os.getpid() not in _WARNED:
        _WARNED.add(os.getpid())
        print(f"autotuner: warning: using the {backend.name!r} sandbox, which is weaker: "
              f"{backend.strength}", file=sys.stderr)
    return backend


def release_spares() -> None:
    """Stop every spare worker this process keeps (tests call it before counting children)."""
    for (pid, _), backend in list(_CACHE.items()):
        if pid == os.getpid():
            backend.release_spare()


atexit.register(release_spares)


def available_backends() -> list[tuple[str, bool, str]]:
    """Every known backend with (available, reason): what tests parametrize over."""
    return [(name, *backend_status(name)) for name in BACKEND_ORDER]
