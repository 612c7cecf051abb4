"""Isolation backends for the sandbox worker: bwrap, docker, process (strongest first).

``get_backend(name)`` returns one by name (``None``/``"auto"``: ``detect_backend()``, which runs a
trivial isolated command under each and keeps the strongest that works). ``Backend.start`` runs
``sandbox/worker.py`` under it and returns a ``WorkerHandle``; ``autotuner.evaluate`` is the one
caller that speaks the worker's protocol.
"""

from .base import (
    BACKEND_ORDER,
    Backend,
    Limits,
    SandboxBroken,
    SandboxUnavailable,
    WorkerFault,
    WorkerHandle,
    available_backends,
    backend_status,
    detect_backend,
    get_backend,
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
]
