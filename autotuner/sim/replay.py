"""Recording a policy's decisions, and replaying them: the trust boundary's two halves.

Inside the sandbox, ``RecordingPolicy`` wraps the untrusted policy and logs every decision as
plain JSON-able data. Outside, the trusted side feeds that log to ``ReplayPolicy`` in its own
simulator, which validates each decision against its own state and computes every metric itself.
The simulator is deterministic and asks for decisions in a fixed order, so an honest log replays
to exactly the same run; a forged or tampered log either fails validation or simply produces
whatever the trusted simulator makes of it. Nothing else the worker says is believed.
"""

from __future__ import annotations

from typing import Any

from .api import (
    ClusterView,
    PolicyError,
    ReplicaView,
    RequestView,
    coerce_partition,
    coerce_route,
)

# One log entry: ["p", budget, [[id, tokens], ...]] or ["r", replica]


class RecordingPolicy:
    """Wraps a policy; ``log`` grows by one plain entry per decision (as returned, unjudged)."""

    def __init__(self, policy: Any, max_entries: int = 5_000_000):
        self.policy = policy
        self.log: list[list[Any]] = []
        self.max_entries = max_entries

    def recorded(self) -> int:
        """Decisions recorded so far in this run."""
        return len(self.log)

    def partition(self, view: ReplicaView) -> Any:
        raw = self.policy.partition(view)
        # Checked under a blank name and named only when refused (as the simulator does).
        try:
            if self.recorded() >= self.max_entries:
                raise PolicyError("", f"more than {self.max_entries} decisions in one run")
            budget, chunks = coerce_partition(raw, "")
        except PolicyError as exc:
            raise PolicyError(f"partition(replica {view.replica} at t={view.now:.3f}s)",
                              exc.rule) from None
        self.log.append(["p", budget, list(map(list, chunks))])  # [[id, tokens], ...]
        return raw

    def route(self, request: RequestView, cluster: ClusterView) -> Any:
        raw = self.policy.route(request, cluster)
        # Judged here by the rule the simulator applies (and applies again to the log), so what
        # is logged is a plain int and a refusal names what the policy really returned.
        try:
            if self.recorded() >= self.max_entries:
                raise PolicyError("", f"more than {self.max_entries} decisions in one run")
            replica = coerce_route(raw, len(cluster.replicas), "")
        except PolicyError as exc:
            raise PolicyError(f"route(request {request.id} at t={request.arrival:.3f}s)",
                              exc.rule) from None
        self.log.append(["r", replica])
        return raw


class ReplayPolicy:
    """Answers each decision from a recorded log, in order, and refuses a log that does not fit.

    It answers from the log alone, so it tells the simulator it reads no views (which then
    passes where and when instead of building them); every answer is still judged as a live
    policy's would be.
    """

    reads_views = False

    def __init__(self, log: list[Any]):
        if not isinstance(log, list):
            raise ValueError("decision log must be a list")
        self.log = log
        self.pos = 0

    def _next(self, kind: str, decision: str) -> list[Any]:
        if self.pos >= len(self.log):
            raise PolicyError(decision, "the worker's decision log ended early")
        entry = self.log[self.pos]
        self.pos += 1
        if not isinstance(entry, list) or not entry or entry[0] != kind:
            raise PolicyError(
                decision, f"the worker's decision log is out of step at entry {self.pos - 1}"
            )
        return entry

    def partition(self, view: ReplicaView) -> Any:
        pos = self.pos
        if pos < len(self.log):  # the common case, checked fast: a well-formed entry at hand
            entry = self.log[pos]
            if type(entry) is list and len(entry) == 3 and entry[0] == "p":
                self.pos = pos + 1
                return (entry[1], entry[2])
        entry = self._next("p", f"partition(replica {view.replica} at t={view.now:.3f}s)")
        if len(entry) != 3:
            raise PolicyError("partition", f"malformed log entry {self.pos - 1}")
        return (entry[1], entry[2])

    def route(self, request: RequestView, cluster: ClusterView | None) -> Any:
        pos = self.pos
        if pos < len(self.log):
            entry = self.log[pos]
            if type(entry) is list and len(entry) == 2 and entry[0] == "r":
                self.pos = pos + 1
                return entry[1]
        entry = self._next("r", f"route(request {request.id})")
        if len(entry) != 2:
            raise PolicyError("route", f"malformed log entry {self.pos - 1}")
        return entry[1]

    @property
    def unused(self) -> int:
        return len(self.log) - self.pos
