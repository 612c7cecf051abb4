"""Evaluations as Ray tasks (``autotuner run --executor ray``): the proposer, the archive and
the gate stay on the driver; each job becomes one task on the cluster.

A task is named by its job's key (``Job.key()``: the policy's hash, its parameters, the instance,
the rate, the cluster, the SLO), and a job's result depends only on those inputs, so a task that
Ray retries after its worker died, or one that runs twice, is harmless: the driver stores each
key's result once. The task runs ``execute_job`` in the sandbox of the node it lands on and reports
that node's backend back, so the campaign's log says which isolation each node used. ``ray`` is
imported only here, and this module only when the executor is chosen.

The cluster is ``RAY_ADDRESS`` when set (a driver submitted with ``ray job submit`` finds it set),
else the one ``ray start`` began on this machine. Every node needs autotuner importable (installed,
or shipped by ``ray job submit --working-dir``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from autotuner.isolation import SandboxBroken
from autotuner.scoring.evaluator import (
    Simulator,
    execute_in_worker,
    execute_job,
    sandbox_description,
)
from autotuner.scoring.executors import Executor, ExecutorUnavailable, Store, longest_first
from autotuner.scoring.jobs import Job

RAY_TASK_RETRIES = 3  # a task whose worker died (killed, out of memory) runs again, up to this
PROBE_TIMEOUT_S = 120.0  # the probe task may queue behind another driver's tasks
CONNECT_TIMEOUT_S = 5.0


def node_line(backend: str) -> str:
    """This node's name and its sandbox as detected here (the first task on each node says it
    to the driver's log; the preflight's probe task checks that a node can evaluate at all)."""
    line, weaker = sandbox_description(backend)
    return f"{socket.gethostname()}: {line}" + ("  [WEAKER isolation]" if weaker else "")


def ray_task(job: Job, sessions: bool, simulator: Simulator | None
             ) -> tuple[dict[str, Any], str]:
    """The body of one Ray task: the job's result and the line naming the node it ran on."""
    if simulator is not None:  # tests: a trusted simulator shipped with the task
        return execute_job(job, simulator), f"{socket.gethostname()}: a test simulator"
    return execute_in_worker(job, sessions), node_line(job.sandbox.backend)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ExecutorUnavailable(
            "--executor ray needs the ray package: pip install 'autotuner[ray]'") from None
    return ray


def connect_ray(sandbox_backend: str) -> tuple[str, str]:
    """Connect to the Ray cluster and run one probe task there, so that a cluster that cannot
    evaluate fails the preflight instead of the baseline. Returns (the cluster's line, the
    probed node's sandbox line)."""
    ray = import_ray()
    address = os.environ.get("RAY_ADDRESS") or "auto"
    if not ray.is_initialized():
        _refuse_unreachable(address)
        try:
            with _quiet_stderr():
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False,
                         configure_logging=True)
        except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, ValueError...
            text = " ".join(str(exc).split())[:300]
            raise ExecutorUnavailable(
                f"no Ray cluster reachable at {address} ({type(exc).__name__}: {text}); start "
                "one with `ray start --head` or set RAY_ADDRESS") from None
    try:
        probe = ray.remote(num_cpus=1, max_retries=RAY_TASK_RETRIES)(node_line)
        node = ray.get(probe.remote(sandbox_backend), timeout=PROBE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - whatever the workers raised, in one line
        raise ExecutorUnavailable(
            f"the Ray cluster at {address} cannot run an evaluation ({_worker_failure(exc)}); "
            "every node needs autotuner and its dependencies importable (installed, or "
            "shipped by `ray job submit --working-dir .`)") from None
    resources = ray.cluster_resources()
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    cluster = (f"Ray cluster at {address}: {nodes} node(s), {resources.get('CPU', 0):g} CPUs "
               "(one evaluation per CPU)")
    return cluster, node


def _worker_failure(exc: BaseException) -> str:
    """What went wrong on a worker, short: the missing module when that is it (the usual
    case: the cluster's Python cannot import autotuner), else the cause's last words."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(getattr(exc, "cause", None) or exc))
    missing = re.findall(r"No module named '[^']+'", text)
    if missing:
        return missing[-1]
    return f"{type(exc).__name__}: {' '.join(text.split())[-300:]}"


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Ray's C++ client writes its connection retries straight to file descriptor 2; while it
    connects, those go nowhere, so that a failure is the campaign's one line."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _refuse_unreachable(address: str) -> None:
    """A ``host:port`` that does not accept a connection fails in seconds here; ``ray.init``
    would retry it for minutes. (``auto`` is checked by Ray itself, at once.)"""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ExecutorUnavailable(
            f"no Ray cluster reachable at {address} ({exc.strerror or exc}); start one with "
            "`ray start --head` or set RAY_ADDRESS") from None


class RayTasks(Executor):
    """Each job a Ray task (one CPU), all of a batch submitted at once; results stored as they
    come back, in completion order. ``on_node`` hears each node's sandbox line the first time a
    task reports from it."""

    def __init__(self, sessions: bool, simulator: Simulator | None = None,
                 on_node: Callable[[str], None] | None = None):
        self.ray = import_ray()
        self.sessions = sessions
        self.simulator = simulator
        self.on_node = on_node
        self.nodes: set[str] = set()
        self.description = "Ray tasks"
        self._task = self.ray.remote(num_cpus=1, max_retries=RAY_TASK_RETRIES)(ray_task)
        self._pending: list[Any] = []

    def run(self, jobs: Sequence[Job], indices: Sequence[int], store: Store) -> None:
        ray = self.ray
        refs = {self._task.options(name=f"evaluate-{jobs[i].key()[:16]}")
                .remote(jobs[i], self.sessions, self.simulator): i
                for i in longest_first(jobs, indices)}
        self._pending = list(refs)
        try:
            while self._pending:
                finished, self._pending = ray.wait(self._pending, num_returns=1)
                for ref in finished:
                    result, node = self._get(ref)
                    self._note(node)
                    store(refs[ref], result)
        except BaseException:
            self.close(cancel=True)
            raise

    def _get(self, ref: Any) -> tuple[dict[str, Any], str]:
        exceptions = self.ray.exceptions
        try:
            return self.ray.get(ref)
        except exceptions.RayTaskError as exc:
            # the job itself raised on the node: raise its own error (SandboxBroken, ...)
            raise exc.as_instanceof_cause() from None
        except (exceptions.WorkerCrashedError, exceptions.NodeDiedError,
                exceptions.ObjectLostError) as exc:
            raise SandboxBroken(
                f"a Ray evaluation failed {RAY_TASK_RETRIES + 1} times ({type(exc).__name__}); "
                "the evaluations not recorded run again on `autotuner resume`") from None

    def _note(self, node: str) -> None:
        if node not in self.nodes:
            self.nodes.add(node)
            if self.on_node is not None:
                self.on_node(node)

    def close(self, cancel: bool = False) -> None:
        if cancel:
            for ref in self._pending:
                try:
                    self.ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001, S110 - already finished or gone
                    pass
        self._pending = []
