"""The last resort: a plain child process with rlimits, a scrubbed environment, isolated Python.

WEAKER than bwrap and docker, and the CLI says so: the worker sees the whole filesystem with the
rights of the user it runs as, so it can read (and, outside its scratch directory, write) what
that user can. What it still gets, strongest variant first, whichever passes the self-test:

- ``unshare-nobody`` (root only): new net, pid, ipc, uts and mount namespaces (no network; it
  sees only its own processes, and all of them die with it) and uid/gid 65534 (nobody), so the
  user's private files are out of reach. Needs the Python installation readable by nobody.
- ``unshare``: the same namespaces plus a user namespace (so RLIMIT_NPROC counts only the
  worker's tasks), same owner on the host; every capability dropped (empty bounding set,
  no-new-privs) before Python starts.
- ``plain``: no namespaces at all (network reachable, and for root no process limit), only
  rlimits and no-new-privs.

Always: ``python -S -s -P -B``, an environment of only PATH/LANG/HOME/TMPDIR, PYTHONHASHSEED and
BLAS thread counts, a private scratch directory as cwd, HOME and TMPDIR (removed afterwards, and
named after its owner so that one left by a killed parent is removed by the next start), rlimits
on CPU, address space, file size and open files, RLIMIT_NPROC set by the worker itself, wall time
and output caps enforced by the parent, and the process group killed at the end. The worker dies
with its parent: the first process started carries PR_SET_PDEATHSIG, and the worker itself exits
when its stdin (whose other end only the parent holds) closes, which also covers the variant
whose --setuid clears the death signal.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .base import Backend
from .handle import PopenWorker, WorkerHandle
from .host import PidsCgroup, child_setup, owner_tag, pids_cgroup_root, remove_scratch
from .limits import PYTHON_FLAGS, WORKER_ENV, HostLayout, Limits

NOBODY = 65534
_NS = ["--net", "--pid", "--fork", "--kill-child", "--ipc", "--uts", "--mount-proc"]


def _variants() -> list[tuple[str, list[str]]]:
    """(name, command prefix) in order of strength; the self-test keeps the first that works."""
    unshare, setpriv = shutil.which("unshare"), shutil.which("setpriv")
    out: list[tuple[str, list[str]]] = []
    root = os.geteuid() == 0
    drop = [setpriv, "--bounding-set", "-all", "--inh-caps", "-all", "--no-new-privs"] \
        if setpriv else []
    if unshare and root:
        out.append(("unshare-nobody", [unshare, *_NS, "--setgid", str(NOBODY), "--setuid",
                                       str(NOBODY), "--"]))
    if unshare:
        # A user namespace even for root: RLIMIT_NPROC is then counted per namespace, which is
        # what makes the worker's process limit hold (root is exempt from it otherwise).
        out.append(("unshare", [unshare, "--user", *_NS, "--", *drop]))
    out.append(("plain", [*drop]))
    return out


class ProcessBackend(Backend):
    def __init__(self) -> None:
        super().__init__(
            name="process",
            strength="a plain child process: the worker can read (and write outside its scratch "
                     "directory) whatever your user can; prefer bwrap or docker",
            weaker=True,
            same_runtime=True,
        )
        self._layout: HostLayout | None = None
        self._prefix: list[str] | None = None
        self.variant = ""

    def probe(self) -> tuple[bool, str]:
        reasons = []
        for name, prefix in _variants():
            self._prefix, self.variant, self.detail = prefix, name, name
            if os.geteuid() == 0:
                self.detail += ", pids cgroup" if pids_cgroup_root() else ", NO process limit"
            ok, why = self._selftest()
            if ok:
                if name == "plain":
                    self.strength += "; no namespaces either: the network is reachable"
                return True, ""
            reasons.append(f"{name}: {why}")
        self._prefix = None
        return False, "; ".join(reasons)

    def spawn(self, limits: Limits) -> WorkerHandle:
        if self._layout is None:
            self._layout = HostLayout.of_this_process()
        if self._prefix is None:
            raise RuntimeError("process backend used before its self-test")
        layout = self._layout
        top = Path(tempfile.mkdtemp(prefix=f"autotuner-sandbox-{owner_tag()}-"))
        cgroup = None
        try:
            lib, scratch = top / "lib", top / "scratch"
            lib.mkdir()
            scratch.mkdir(mode=0o700)
            for host, name in layout.lib_binds:
                (lib / name).symlink_to(host)
            worker = lib / "worker.py"
            worker.symlink_to(layout.worker)
            if self.variant == "unshare-nobody":
                os.chown(scratch, NOBODY, NOBODY)
            os.chmod(lib, 0o555)
            os.chmod(top, 0o711)
            cgroup = PidsCgroup(limits.processes + 2) if pids_cgroup_root() else None
        except BaseException:
            remove_scratch(top)
            raise
        env = dict(WORKER_ENV, HOME=str(scratch), TMPDIR=str(scratch))
        argv = [*self._prefix, layout.python, *PYTHON_FLAGS, str(worker), str(lib)]

        def cleanup() -> None:
            if cgroup is not None:
                cgroup.remove()
            try:
                os.chmod(lib, 0o755)
            except OSError:
                pass
            remove_scratch(top)

        return PopenWorker(
            argv, limits, env=env, cwd=str(scratch),
            preexec=child_setup(limits, cgroup, die_with_parent=True),
            signal_offset=self.variant != "plain", cleanup=cleanup,
        )
