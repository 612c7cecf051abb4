"""bubblewrap: the default on Linux. The worker sees a root built only of what it needs.

Namespaces: user (the worker is uid/gid 65534 with no capabilities, and cannot make further user
namespaces), pid (it sees only itself; everything dies with bwrap), net (only a down loopback),
ipc, uts, cgroup. Filesystem: a fresh root, remounted read-only, holding ``/usr`` and the library
directories, the dynamic loader's cache, the Python installation (its site-packages hidden under
an empty tmpfs), and, under ``/sandbox/lib``, only the ``autotuner`` and ``numpy`` directories and
the baseline policies, each bound read-only. Nothing of ``/home``, ``/root``, ``/etc``, ``/tmp``,
``/var`` or the checkout is visible. Writable: ``/scratch`` and ``/tmp``, size-capped tmpfs.
Limits: rlimits on the bwrap process (inherited: CPU, address space, file size, open files) and
RLIMIT_NPROC set by the worker inside its user namespace, where it counts only its own tasks.
``--die-with-parent`` ties the sandbox to the thread that forked bwrap, which is why every worker
is forked by the forker thread (forker.in_forker), which lives as long as this process.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

from .base import Backend
from .handle import PopenWorker, WorkerHandle
from .host import PidsCgroup, child_setup, pids_cgroup_root
from .limits import PYTHON_FLAGS, WORKER_ENV, HostLayout, Limits

_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")


@functools.lru_cache(maxsize=1)
def _bwrap_help() -> str:
    exe = shutil.which("bwrap")
    if not exe:
        return ""
    try:
        out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout + out.stderr


def bwrap_argv(layout: HostLayout, limits: Limits, exe: str = "bwrap") -> list[str]:
    """The full command line; kept separate so tests can read what is and is not bound."""
    argv = [
        exe, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
        "--cap-drop", "ALL", "--uid", "65534", "--gid", "65534", "--hostname", "sandbox",
        "--clearenv",
    ]
    if "--disable-userns" in _bwrap_help():
        argv.append("--disable-userns")
    for key, value in WORKER_ENV.items():
        argv += ["--setenv", key, value]
    for path in _SYSTEM_DIRS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    for path in ("/etc/ld.so.cache", "/etc/ld.so.conf"):
        argv += ["--ro-bind-try", path, path]
    prefix = layout.prefix
    if not any(prefix == d or prefix.startswith(d + "/") for d in _SYSTEM_DIRS):
        argv += ["--ro-bind", prefix, prefix]
    if not layout.python.startswith(prefix + "/"):
        argv += ["--ro-bind", layout.python, layout.python]
    # The interpreter's own site-packages could hold anything the user installed: hide it.
    stdlib = os.path.join(prefix, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}")
    for hidden in ("site-packages", "dist-packages"):
        if os.path.isdir(os.path.join(stdlib, hidden)):
            argv += ["--tmpfs", os.path.join(stdlib, hidden)]
    for host, name in layout.lib_binds:
        argv += ["--ro-bind", host, f"/sandbox/lib/{name}"]
    argv += ["--ro-bind", layout.worker, "/sandbox/worker.py"]
    argv += ["--dev", "/dev", "--proc", "/proc"]
    argv += ["--size", str(limits.scratch_bytes), "--tmpfs", "/scratch"]
    argv += ["--size", str(1 << 20), "--tmpfs", "/tmp"]
    argv += ["--chdir", "/scratch", "--remount-ro", "/"]
    argv += ["--", layout.python, *PYTHON_FLAGS, "/sandbox/worker.py", "/sandbox/lib"]
    return argv


class BwrapBackend(Backend):
    def __init__(self) -> None:
        super().__init__(
            name="bwrap",
            strength="bubblewrap: user/pid/net/ipc namespaces, read-only minimal root, rlimits",
            weaker=False,
            same_runtime=True,
        )
        self._layout: HostLayout | None = None

    def probe(self) -> tuple[bool, str]:
        exe = shutil.which("bwrap")
        if not exe:
            return False, "bwrap is not installed (apt-get install bubblewrap)"
        if sys.platform != "linux":
            return False, "bwrap needs Linux"
        version = _bwrap_help()
        self.detail = "bubblewrap" + (", userns disabled inside" if "--disable-userns" in version
                                      else "")
        if os.geteuid() == 0:
            # The kernel exempts root's processes from RLIMIT_NPROC, even in a user namespace.
            self.detail += ", pids cgroup" if pids_cgroup_root() else \
                ", NO process limit (root without a writable pids cgroup)"
        return self._selftest()

    def spawn(self, limits: Limits) -> WorkerHandle:
        if self._layout is None:
            self._layout = HostLayout.of_this_process()
        argv = bwrap_argv(self._layout, limits, shutil.which("bwrap") or "bwrap")
        # bwrap itself and its pid 1 count too.
        cgroup = PidsCgroup(limits.processes + 2) if pids_cgroup_root() else None
        return PopenWorker(
            argv, limits, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            cwd="/", preexec=child_setup(limits, cgroup, die_with_parent=True),
            signal_offset=True,
            cleanup=cgroup.remove if cgroup else None,
        )
