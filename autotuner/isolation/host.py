"""What a worker leaves on the host, and who removes it: pids cgroups, scratch directories and
containers are named after their owner, and whoever next starts a backend removes what dead
owners left (a ``kill -9`` skips every teardown).

The pids cgroup is also the process limit when running as root (the kernel never applies
RLIMIT_NPROC to root), so ``child_setup``, the ``preexec_fn`` every local backend uses, lives here.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .limits import Limits, die_with_parent_preexec, rlimit_preexec

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
