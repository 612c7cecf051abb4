"""Shared fixtures for the sandbox tests: backends to parametrize over, canaries, leftovers.

Each backend's availability is its real self-test; an unavailable one is skipped with the reason.
The leftover checks are exact because the test process makes itself a child subreaper: anything
a worker leaves behind (even a grandchild that escaped into its own session) is re-parented to
the test process, where it is counted.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import stat
import time
from pathlib import Path

import pytest

from autotuner.isolation import BACKEND_ORDER, backend_status, release_spares

PR_SET_CHILD_SUBREAPER = 36
CANARY_ENV = "AUTOTUNER_CANARY"
CANARY_FILES = (Path("/tmp/autotuner_canary"), Path.home() / ".autotuner_canary")
# Paths the hostile corpus tries to write; none may exist on the host afterwards.
PWNED = (Path("/tmp/autotuner_pwned"), Path("/tmp/autotuner_pwned_env"),
         Path("/root/autotuner_pwned"), Path("/autotuner_pwned"), Path("/usr/autotuner_pwned"))


def backend_params() -> list:
    params = []
    for name in BACKEND_ORDER:
        ok, why = backend_status(name)
        params.append(pytest.param(name, id=name, marks=pytest.mark.skipif(
            not ok, reason=f"sandbox backend {name} unavailable here: {why}")))
    return params


def make_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children() -> list[int]:
    """Pids whose parent is this process (zombies included)."""
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat_line = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat_line.rsplit(")", 1)[1].split()
        if fields[1] == me and not _is_resource_tracker(int(entry)):
            found.append(int(entry))
    return found


def _is_resource_tracker(pid: int) -> bool:
    """multiprocessing's resource tracker: one per process that ever used a process pool, kept
    by Python until that process exits; not something a sandbox left behind."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"multiprocessing.resource_tracker" in cmdline


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def assert_no_leftovers(scratch_root: Path, backend: str) -> None:
    """No spare, child, zombie, scratch directory, pids cgroup or container is left."""
    release_spares()
    deadline = time.monotonic() + 5
    while True:
        reap()
        left = children()
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"processes left behind: {left}"
    assert not list(scratch_root.glob("autotuner-sandbox-*")), "scratch directories left behind"
    for root in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        if root.is_dir():
            mine = list(root.glob(f"autotuner-sandbox-{os.getpid()}-*"))
            assert not mine, f"pids cgroups left behind: {mine}"
    if backend == "docker":
        from autotuner.isolation.docker import leftover_containers

        assert not leftover_containers(os.getpid()), "containers left behind"


class Canaries:
    """Secret values planted where a policy would look: the environment and two files."""

    def __init__(self) -> None:
        self.env_value = "canary-env-" + secrets.token_hex(12)
        self.file_value = "canary-file-" + secrets.token_hex(12)
        self.planted: list[Path] = []

    def plant(self) -> None:
        os.environ[CANARY_ENV] = self.env_value
        for path in CANARY_FILES:
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                fd = os.open(path, flags, stat.S_IRUSR | stat.S_IWUSR)
            except OSError:
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self.file_value)
            self.planted.append(path)

    def remove(self) -> None:
        os.environ.pop(CANARY_ENV, None)
        for path in self.planted:
            try:
                if path.read_text() == self.file_value:
                    path.unlink()
            except OSError:
                pass

    def assert_absent(self, *texts: str) -> None:
        for text in texts:
            assert self.env_value not in text, "the environment canary leaked"
            assert self.file_value not in text, "the file canary leaked"


def no_pwned_files() -> list[Path]:
    return [p for p in PWNED if p.exists()]
