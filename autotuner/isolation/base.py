"""The backend base class: how a worker is started (on the forker thread), how a spare worker is
kept ready, and the self-test that says whether a backend works here.

Backends, strongest first: ``bwrap`` (bubblewrap: user, pid, net, ipc, uts namespaces, a root
built only of what the worker needs, read-only), ``docker`` (no network, read-only root, tmpfs
scratch, cgroup limits, no capabilities, non-root; gVisor's runsc when registered) and
``process`` (a plain child with rlimits and a scrubbed environment; namespaces where it can get
them). Each subclass implements ``spawn``; ``registry`` finds them by name and detects the
strongest that works.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .forker import in_forker, settle, settled_or_none
from .handle import WorkerHandle
from .host import sweep_orphans
from .limits import Limits, WorkerFault


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
