"""The forker: the one long-lived thread that forks every worker of this process.

Workers die with this process and never before. A worker's parent-death signal (bwrap's
``--die-with-parent``, the process backend's PR_SET_PDEATHSIG) is sent when the *thread* that
forked it ends, so every worker is forked by a thread that ends only with the process, and the
worker exits when its stdin, which only this process holds open, ends.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .handle import WorkerHandle

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
