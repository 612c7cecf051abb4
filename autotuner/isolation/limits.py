"""What a sandboxed worker is allowed: its resource limits, the environment and interpreter flags
it starts with, where its code comes from, and the errors raised when it or a sandbox fails.

Every backend applies these the same way (by rlimits, cgroups or both); ``limits.py`` is where a
limit or a variable the worker may see is added, never in one backend alone.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1

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
