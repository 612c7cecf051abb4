"""The backends by name: lookup, detection of the strongest that works here (each backend's
self-test, run once per process), and the one-line warning when a weaker one is used."""

from __future__ import annotations

import atexit
import os
import sys
import threading

from .base import Backend
from .limits import SandboxUnavailable

BACKEND_ORDER = ("bwrap", "docker", "process")


def _make(name: str) -> Backend:
    # Imported when first asked for, in the process that asks: docker.py takes its owner tag at
    # import.
    if name == "bwrap":
        from .bwrap import BwrapBackend

        return BwrapBackend()
    if name == "docker":
        from .docker import DockerBackend

        return DockerBackend()
    if name == "process":
        from .process import ProcessBackend

        return ProcessBackend()
    raise SandboxUnavailable(
        f"no sandbox backend named {name!r} (known: {', '.join(BACKEND_ORDER)}, auto)"
    )


_CACHE: dict[tuple[int, str], Backend] = {}
_DETECTED: dict[int, Backend] = {}
_WARNED: set[int] = set()
_LOCK = threading.Lock()


def _cached(name: str) -> Backend:
    key = (os.getpid(), name)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _make(name)
        return _CACHE[key]


def backend_status(name: str) -> tuple[bool, str]:
    """(available, reason if not) for a backend by name; runs its self-test once per process."""
    return _cached(name).available()


def detect_backend() -> Backend:
    """The strongest backend that passes its self-test here; cached for this process."""
    pid = os.getpid()
    if pid in _DETECTED:
        return _DETECTED[pid]
    reasons = []
    for name in BACKEND_ORDER:
        backend = _cached(name)
        ok, why = backend.available()
        if ok:
            _DETECTED[pid] = backend
            return backend
        reasons.append(f"{name}: {why}")
    raise SandboxUnavailable("no sandbox backend works here (" + "; ".join(reasons) + ")")


def get_backend(name: str | None = None, *, warn: bool = True) -> Backend:
    """A backend by name (``None`` or ``"auto"``: detect). Unavailable by name is an error.

    When the chosen backend is weaker (``process``), a one-line warning goes to stderr, once
    per process.
    """
    if name in (None, "", "auto"):
        backend = detect_backend()
    else:
        backend = _cached(name)
        ok, why = backend.available()
        if not ok:
            raise SandboxUnavailable(f"sandbox backend {name!r} is not available here: {why}")
    if warn and backend.weaker and os.getpid() not in _WARNED:
        _WARNED.add(os.getpid())
        print(f"autotuner: warning: using the {backend.name!r} sandbox, which is weaker: "
              f"{backend.strength}", file=sys.stderr)
    return backend


def release_spares() -> None:
    """Stop every spare worker this process keeps (tests call it before counting children)."""
    for (pid, _), backend in list(_CACHE.items()):
        if pid == os.getpid():
            backend.release_spare()


atexit.register(release_spares)


def available_backends() -> list[tuple[str, bool, str]]:
    """Every known backend with (available, reason): what tests parametrize over."""
    return [(name, *backend_status(name)) for name in BACKEND_ORDER]
