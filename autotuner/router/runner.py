"""Building a router from a policy file and running it: in the foreground (the command) or on a
thread of its own (tests and the overhead benchmark, which need it beside their own clients)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from .policy_worker import PolicyWorker
from .proxy import Router, RouterConfig, serve


def uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (an optional dependency of the router's extra;
    scripts/bench_router.py measures the difference with --router-arg=--no-uvloop), else None
    for asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


class PolicyRefused(ValueError):
    """The static check or the parameters refused the policy file: one line, nothing started."""


def build_router(policy_path: str | Path, config: RouterConfig,
                 params: Mapping[str, Any] | None = None, sandbox: str | None = None) -> Router:
    """Check the policy as a campaign does, then start its worker (loaded, ready to answer)."""
    from autotuner.check import check_policy
    from autotuner.policy import PolicyFileError

    path = Path(policy_path)
    code = path.read_text(encoding="utf-8")
    checked = check_policy(code, path.name)
    if not checked.ok or checked.source is None:
        reasons = checked.reasons() or ["the static check refused the file"]
        raise PolicyRefused(f"{path}: {reasons[0]}")
    try:
        resolved = checked.source.resolve_params(params)
    except PolicyFileError as exc:
        raise PolicyRefused(f"{path}: {exc}") from exc
    worker = PolicyWorker(code, path.name, resolved, sandbox)
    worker.start()
    return Router(config, worker)


class RouterThread:
    """A router serving on 127.0.0.1 from its own thread and event loop; ``close()`` stops it
    and its policy worker."""

    def __init__(self, router: Router, host: str = "127.0.0.1", port: int = 0,
                 loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None):
        self.router = router
        self.loop = (loop_factory or asyncio.new_event_loop)()
        bound: Future = Future()
        self._task: asyncio.Task | None = None

        def main() -> None:
            asyncio.set_event_loop(self.loop)
            ready = self.loop.create_future()
            ready.add_done_callback(lambda f: bound.set_result(f.result()))
            self._task = self.loop.create_task(serve(router, host, port, ready))
            try:
                self.loop.run_until_complete(self._task)
            except (asyncio.CancelledError, Exception) as exc:  # noqa: BLE001 - reported below
                if not bound.done():
                    bound.set_exception(exc)

        self.thread = threading.Thread(target=main, name="router", daemon=True)
        self.thread.start()
        self.host, self.port = bound.result(30)[:2]
        self.url = f"http://{self.host}:{self.port}"

    def close(self) -> None:
        if self._task is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._task.cancel)
            self.thread.join(10)
        self.router.policy.close()

    def __enter__(self) -> RouterThread:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
