"""The worker handle: one request in, capped line-wise output out, a bounded wait for the exit,
and a clean teardown.

A backend starts ``sandbox/worker.py`` in an isolated process and hands back a ``WorkerHandle``:
the trusted side writes one request on its stdin and reads its stdout line by line while the
worker is still running (so the trusted replay overlaps the worker's simulation on another core).
Everything the handle reads is capped in bytes and bounded by one wall-clock deadline; any breach,
crash or signal becomes a ``WorkerFault`` with a reason a person (or a proposer) can act on, and
``close()`` always leaves no process, container or scratch directory behind.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .limits import Limits, WorkerFault

# The longest line the protocol can need: the worker flushes its decision log in batches well
# below this (sandbox/worker.py). Past it the trusted side stops buffering and gives up.
MAX_LINE_BYTES = 32 << 20


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

    supports_sessions = False  # whether send_more works (a session: several runs per worker)

    def send_more(self, request: bytes, ahead: bool = False) -> None:
        """A session's next run request. Sent after the previous run's end line was read, the
        wall-time limit and the output cap count afresh from here, per run; sent ``ahead``
        (while the previous run is still being read, so that the worker starts it the moment
        the previous one ends) they do from ``begin_run()``, when its output is first wanted."""
        if not self.sent:
            raise RuntimeError("send the session request first")
        if not ahead:
            self.begin_run()
        self._send_more(request)

    def begin_run(self) -> None:
        """A session's next run is read from here: its wall-time limit and output cap start."""
        self.deadline = time.monotonic() + self.limits.wall_s
        self.out_bytes = 0

    def _send_more(self, request: bytes) -> None:
        raise NotImplementedError

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

    supports_sessions = True

    def _send_more(self, request: bytes) -> None:
        # The worker's reader thread drains stdin as lines arrive, so a blocking write of one
        # small run request cannot deadlock with our reading of its stdout.
        if self._writer is not None:
            self._writer.join()
        self._write(request)

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
