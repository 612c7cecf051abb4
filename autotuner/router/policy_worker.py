"""The policy's ``route()`` in one long-lived sandboxed worker, asked once per request.

The worker is the campaign's (sandbox/worker.py, started by an isolation backend) in its
``serve_routes`` mode. The event loop reads its answers and resolves the futures by query id;
an answer that is late (past the deadline), malformed, out of range or an exception is a
``PolicyUnavailable`` and the caller falls back. A dead worker is restarted in the background
(at most once per ``RESTART_BACKOFF_S``), so a killed worker costs decisions, never requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import threading
import time
from collections.abc import Mapping
from typing import Any, get_type_hints

from autotuner.isolation import Backend, Limits, WorkerFault, get_backend
from autotuner.sim.api import ClusterView, PolicyError, ReplicaLoad, RequestView, coerce_route

RESTART_BACKOFF_S = 1.0
MAX_ANSWER_BYTES = 1 << 20
# One read of the worker's pipes: an answer is a few dozen bytes, and asking os.read for 1 MiB
# costs 15-35 us a call (CPython allocates the whole buffer, which glibc maps and unmaps).
READ_BYTES = 1 << 16
# Queries written and not yet answered (timed-out ones included): kept well below what a pipe
# buffers (64 KiB), so that writing a query never blocks the event loop behind a slow policy.
MAX_UNANSWERED = 128
# A worker that has answered nothing for this long while decisions pile up is stuck (a policy in
# an endless loop): it is killed, and so restarted.
STUCK_S = 5.0
START_TIMEOUT_S = 60.0
# A router runs for days: the per-run limits of a campaign's worker do not apply, but memory,
# processes and output stay capped.
LIVE_LIMITS = Limits(wall_s=10.0 * 365 * 86400, cpu_s=10 * 365 * 86400,
                     output_bytes=1 << 62)


def _printf_format(record: type) -> str:
    """A %-format writing one of ``record``'s tuples as a JSON array: %r (the shortest exact
    form) for its float fields, %d for its int ones."""
    kinds = ["%r" if kind is float else "%d" for kind in get_type_hints(record).values()]
    return "[" + ",".join(kinds) + "]"


_REQUEST_FORMAT = _printf_format(RequestView)
_LOAD_FORMAT = _printf_format(ReplicaLoad)


def query_line(query_id: int, request: RequestView, cluster: ClusterView) -> bytes:
    """One decision's query, ``[id, RequestView, now, [ReplicaLoad, ...]]`` as a JSON line, the
    compact form sandbox/worker.py's serve_routes reads. Formatted directly, in about half
    json.dumps's time on named tuples; every field is an int or a finite float (the router
    builds them itself)."""
    loads = ",".join([_LOAD_FORMAT % load for load in cluster.replicas])
    return (f"[{query_id:d},{_REQUEST_FORMAT % request},{cluster.now!r},[{loads}]]\n").encode()


class PolicyUnavailable(Exception):
    """No usable decision from the policy for this request; ``kind`` names why (a label)."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class PolicyWorker:
    """One sandboxed worker serving route() decisions; restarted when it dies."""

    def __init__(self, code: str, name: str, params: Mapping[str, Any] | None = None,
                 sandbox: str | Backend | None = None):
        self.code, self.name, self.params = code, name, dict(params or {})
        self.backend = sandbox if isinstance(sandbox, Backend) else get_backend(sandbox)
        self.restarts = 0
        self.last_error = ""
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._pending: dict[int, asyncio.Future] = {}
        self._attached = False
        self._loop: asyncio.AbstractEventLoop | None = None  # the router's, once attached
        self._buffer = b""
        self._err_bytes = 0
        self._unanswered = 0
        self._last_answer = 0.0
        self._handle: Any = None
        self._starting = False
        self._last_start = 0.0
        self._closed = False

    # -- lifecycle
    def start(self) -> None:
        """Start the worker and wait until the policy is loaded; raises when it cannot load.
        Blocking: called before the event loop runs, or from the restart thread."""
        payload = {"serve_routes": True, "code": self.code, "name": self.name,
                   "params": self.params, "limits": LIVE_LIMITS.as_dict()}
        handle = self.backend.start((json.dumps(payload) + "\n").encode(), LIVE_LIMITS)
        if not hasattr(handle, "proc"):
            handle.close()
            raise WorkerFault(f"the {self.backend.name} sandbox cannot serve a live router "
                              "(it needs a local worker process: use bwrap or process)")
        try:
            first = handle.next_line()
        except BaseException:
            handle.close()
            raise
        message = json.loads(first) if first else {}
        if not message.get("ready"):
            handle.close()
            error = (message.get("end") or {}).get("error") or "the worker exited at start"
            raise WorkerFault(str(error)[:400])
        with self._lock:
            self._handle, self._attached = handle, False

    def _attach(self, handle: Any) -> None:
        """Read the worker's answers on the event loop itself (no reader thread: a thread
        waiting for the GIL would add milliseconds to a decision)."""
        # Kept: asyncio.get_running_loop() is a getpid() system call on Python 3.11.
        loop = self._loop = asyncio.get_running_loop()
        self._buffer = b""
        self._err_bytes = 0
        self._unanswered = 0
        self._last_answer = time.monotonic()
        loop.add_reader(handle.proc.stdout.fileno(), self._readable, loop, handle, "out")
        loop.add_reader(handle.proc.stderr.fileno(), self._readable, loop, handle, "err")
        self._attached = True

    def _readable(self, loop: asyncio.AbstractEventLoop, handle: Any, stream: str) -> None:
        pipe = handle.proc.stdout if stream == "out" else handle.proc.stderr
        try:
            data = os.read(pipe.fileno(), READ_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if stream == "err":  # what the policy prints: drained so it cannot block the worker
            self._err_bytes += len(data)
            if data and self._err_bytes <= LIVE_LIMITS.stderr_bytes:
                return
            reason = "the policy worker wrote too much on stderr" if data else ""
        else:
            if data:
                *lines, self._buffer = (self._buffer + data).split(b"\n")
                if len(self._buffer) > MAX_ANSWER_BYTES:
                    lines, reason = [], "the policy worker sent a line too long"
                else:
                    self._unanswered -= len(lines)
                    self._last_answer = time.monotonic()
                    for line in lines:
                        self._resolve(line)
                    return
            reason = "the policy worker exited"
        if stream == "err" and not data:
            loop.remove_reader(pipe.fileno())
            return
        self._dead(loop, handle, reason)

    def _resolve(self, line: bytes) -> None:
        try:
            answer = json.loads(line)
            future = self._pending.pop(answer.get("i", -1), None)
        except (ValueError, AttributeError):
            return
        if future is not None and not future.done():
            future.set_result(answer)

    def _dead(self, loop: asyncio.AbstractEventLoop, handle: Any, reason: str) -> None:
        for pipe in (handle.proc.stdout, handle.proc.stderr):
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(pipe.fileno())
        with self._lock:
            if self._handle is handle:
                self._handle = None
            pending, self._pending = self._pending, {}
        self.last_error = reason
        threading.Thread(target=handle.close, name="policy-close", daemon=True).start()
        for future in pending.values():
            if not future.done():
                future.set_exception(PolicyUnavailable("worker_dead", reason))

    def _restart_later(self) -> None:
        with self._lock:
            if self._closed or self._starting or self._handle is not None:
                return
            if time.monotonic() - self._last_start < RESTART_BACKOFF_S:
                return
            self._starting, self._last_start = True, time.monotonic()

        def restart() -> None:
            try:
                self.start()
                self.restarts += 1
            except Exception as exc:  # noqa: BLE001 - retried on a later request
                self.last_error = f"restart failed: {exc}"
            finally:
                self._starting = False

        threading.Thread(target=restart, name="policy-restart", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()

    def pid(self) -> int | None:
        handle = self._handle
        return handle.proc.pid if handle is not None else None

    # -- decisions
    def _submit(self, request: RequestView, cluster: ClusterView) -> tuple[int, asyncio.Future]:
        with self._lock:
            handle = self._handle
        if handle is None:
            raise PolicyUnavailable("worker_dead", self.last_error)
        if not self._attached:
            self._attach(handle)
        if self._unanswered >= MAX_UNANSWERED:
            if time.monotonic() - self._last_answer > STUCK_S:
                handle.kill()  # its end of output arrives next: _dead, then a restart
            raise PolicyUnavailable("backlog", f"{self._unanswered} decisions still unanswered")
        query_id = next(self._ids)
        future = self._loop.create_future()
        self._pending[query_id] = future
        try:
            data = memoryview(query_line(query_id, request, cluster))  # one line, one write
            while data:  # a pipe may take a long line (many backends) in parts
                data = data[os.write(handle.proc.stdin.fileno(), data):]
            self._unanswered += 1
        except (OSError, ValueError) as exc:
            self._pending.pop(query_id, None)
            raise PolicyUnavailable("worker_dead", str(exc)) from exc
        return query_id, future

    def _expire(self, query_id: int, future: asyncio.Future, timeout: float) -> None:
        self._pending.pop(query_id, None)
        if not future.done():
            future.set_exception(PolicyUnavailable(
                "timeout", f"no decision within {timeout * 1000:g} ms"))

    async def decide(self, request: RequestView, cluster: ClusterView, timeout: float) -> int:
        """The policy's replica for this request, checked; PolicyUnavailable otherwise. The
        deadline is a timer on the answer's future (no task per decision, as wait_for makes)."""
        try:
            query_id, future = self._submit(request, cluster)
            timer = self._loop.call_later(
                timeout, self._expire, query_id, future, timeout)
            try:
                answer = await future
            finally:
                timer.cancel()
        except PolicyUnavailable as exc:
            if exc.kind != "timeout":
                self._restart_later()
            raise
        if "e" in answer:
            raise PolicyUnavailable("error", str(answer["e"])[:400])
        try:
            return coerce_route(answer.get("k"), len(cluster.replicas), "route()")
        except PolicyError as exc:
            raise PolicyUnavailable("invalid", str(exc)) from exc
