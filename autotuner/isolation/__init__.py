"""Isolation backends for the sandbox worker: bwrap, docker, process (strongest first).

``get_backend(name)`` returns one by name (``None``/``"auto"``: ``detect_backend()``, which runs a
trivial isolated command under each and keeps the strongest that works). ``Backend.start`` runs
``sandbox/worker.py`` under it and returns a ``WorkerHandle``; ``autotuner.evaluate`` is the one
caller that speaks the worker's protocol.

Read in this order: ``limits`` (what a worker may use and see), ``handle`` (one worker: request
in, capped output out, teardown), ``forker`` (the thread every worker is forked from), ``host``
(what workers leave on the host and its removal), ``base`` (the backend class: start, spares,
self-test), ``registry`` (lookup and detection), then one module per backend.
"""

from .base import Backend
from .handle import WorkerHandle
from .limits import Limits, SandboxBroken, SandboxUnavailable, WorkerFault
from .registry import (
    BACKEND_ORDER,
    available_backends,
    backend_status,
    detect_backend,
    get_backend,
    release_spares,
)

__all__ = [
    "BACKEND_ORDER",
    "Backend",
    "Limits",
    "SandboxBroken",
    "SandboxUnavailable",
    "WorkerFault",
    "WorkerHandle",
    "available_backends",
    "backend_status",
    "detect_backend",
    "get_backend",
    "release_spares",
]
