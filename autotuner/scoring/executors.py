"""Where a batch of jobs runs: ``Executor`` is the one interface, with two implementations,
``evaluator.LocalPool`` (a process pool on this machine, the default) and
``ray_executor.RayTasks`` (Ray tasks on a cluster, ``autotuner run --executor ray``).

Either way the caller (``Evaluator``) owns the evaluation cache and the archive: an executor only
turns jobs into results and hands each back on the calling thread as it finishes, so results are
stored once, by key, on the driver, whichever worker (or retried task) produced them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from autotuner.config import EXECUTORS
from autotuner.scoring.jobs import Job

__all__ = ["EXECUTORS", "Executor", "ExecutorUnavailable", "Store", "longest_first"]
Store = Callable[[int, dict[str, Any]], None]  # (index into jobs, its result)


class ExecutorUnavailable(RuntimeError):
    """The chosen executor cannot run here (no ``ray`` package, no reachable cluster, workers
    that cannot import autotuner). One line, for the user."""


class Executor(ABC):
    """Runs a batch of jobs and hands each result to ``store`` on the calling thread."""

    description = ""  # one line for the campaign's log

    def start(self) -> None:
        """Start workers now (before any threads exist in this process), where that matters."""
        return None

    @abstractmethod
    def run(self, jobs: Sequence[Job], indices: Sequence[int], store: Store) -> None:
        """Run ``jobs[i]`` for each ``i`` in ``indices``; ``store(i, result)`` as each ends.
        Infrastructure failures raise (``SandboxBroken``); a policy's failure is a result."""

    @abstractmethod
    def close(self, cancel: bool = False) -> None:
        """Stop the workers; ``cancel``: drop queued jobs instead of finishing them."""


def longest_first(jobs: Sequence[Job], indices: Sequence[int]) -> list[int]:
    """Capacity jobs, then the highest rates, first: the batch's tail is then short."""
    return sorted(indices, key=lambda i: (jobs[i].kind != "capacity", -(jobs[i].rate or 0.0)))
