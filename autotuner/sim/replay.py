"""Recording a policy's decisions, and replaying them: the trust boundary's two halves.

Inside the sandbox, the worker's simulator records every decision as it takes it
(``simulate(log=...)``, a ``DecisionLog``) and the worker streams that log out. Outside, the
trusted side feeds it to ``ReplayPolicy`` in its own simulator, which validates each decision
against its own state and computes every metric itself. The simulator is deterministic and asks
for decisions in a fixed order, so an honest log replays to exactly the same run; a forged or
tampered log either fails validation or simply produces whatever the trusted simulator makes of
it. Nothing else the worker says is believed.

The log is one flat list of integers: a partition as ``budget, k, id_1, tokens_1, ..., id_k,
tokens_k`` (budget >= 0, as ``coerce_partition`` shaped it, before the checks against the
simulator's state, so that an illegal one is in the log for the replay to refuse), a route as
``-1 - replica`` (negative). JSON decodes a flat list of ints ~15x faster than the same log as
nested entries (a list per entry and per chunk): that decoding was a third of the replay's CPU.
"""

from __future__ import annotations

from typing import Any

from .api import MAX_CHUNKS, ClusterView, PolicyError, ReplicaView, RequestView


class KeptLog:
    """A ``DecisionLog`` (``simulate(log=...)``) that keeps every decision in ``ints``. The
    sandbox worker's own sends its ints in batches instead (``sandbox/worker.py``)."""

    def __init__(self) -> None:
        self.ints: list[int] = []
        self.flush_at = 1 << 62

    def flush(self, decisions: int) -> None:
        """Nothing to do: the ints are kept."""


def _chunks(buf: list[int], start: int, end: int) -> tuple[tuple[int, int], ...]:
    """A flat partition's chunks, ``buf[start:end]``, as the (id, tokens) pairs a policy returns."""
    if end == start + 2:  # most partitions: one chunk
        return ((buf[start], buf[start + 1]),)
    return tuple(zip(buf[start:end:2], buf[start + 1:end:2], strict=True))


class ReplayPolicy:
    """Answers each decision from a recorded log, in order, and refuses a log that does not fit.
    The log is a list of plain ints (whoever fills ``buf`` from outside checks that much first:
    the sandbox stream does, ``array("q")`` refusing anything else).

    It answers from the log alone, so it tells the simulator it reads no views (which then
    passes where and when instead of building them); every answer is still judged as a live
    policy's would be. ``pos`` counts the decisions answered, ``more()`` is asked for the rest
    of a log that ends too soon (a stream that is still arriving), and ``ran_out`` says that the
    log ended before the simulation did.
    """

    reads_views = False

    def __init__(self, buf: list[int] | None = None):
        self.buf: list[int] = [] if buf is None else buf
        self.at = 0  # where the next decision starts in buf
        self.pos = 0
        self.ran_out = False

    def more(self, decision: str) -> bool:
        """Append more of the log to ``buf`` (``decision`` waits for it); False when there is
        no more (here: never)."""
        return False

    def partition(self, view: ReplicaView) -> Any:
        buf, at = self.buf, self.at
        if at + 1 < len(buf):  # the common case, checked fast: a whole partition at hand
            budget, k = buf[at], buf[at + 1]
            end = at + 2 + 2 * k
            if budget >= 0 and 0 <= k <= MAX_CHUNKS and end <= len(buf):
                self.at, self.pos = end, self.pos + 1
                return budget, _chunks(buf, at + 2, end)
        return self._take(True, f"partition(replica {view.replica} at t={view.now:.3f}s)")

    def route(self, request: RequestView, cluster: ClusterView | None) -> Any:
        at = self.at
        if at < len(self.buf):
            head = self.buf[at]
            if head < 0:
                self.at, self.pos = at + 1, self.pos + 1
                return -1 - head
        return self._take(False, f"route(request {request.id})")

    def _take(self, partition: bool, decision: str) -> Any:
        """The next decision the slow way: waiting for more of the log, or refusing it."""
        while True:
            buf, at = self.buf, self.at
            if at >= len(buf):
                if self.more(decision):
                    continue
                self.ran_out = True
                raise PolicyError(decision, "the worker's decision log ended early")
            head = buf[at]
            if (head >= 0) != partition:
                raise PolicyError(
                    decision, f"the worker's decision log is out of step at entry {self.pos}")
            if not partition:
                self.at, self.pos = at + 1, self.pos + 1
                return -1 - head
            whole = at + 1 < len(buf) and 0 <= buf[at + 1] <= MAX_CHUNKS
            end = at + 2 + 2 * buf[at + 1] if whole else 0
            if whole and end <= len(buf):
                self.at, self.pos = end, self.pos + 1
                return head, _chunks(buf, at + 2, end)
            if (whole or at + 1 >= len(buf)) and self.more(decision):
                continue  # the rest of this entry is still on its way
            raise PolicyError("partition", f"malformed log entry {self.pos}")

    @property
    def unused(self) -> int:
        """Whole or partial entries left in the log after the last one answered."""
        buf, at, left = self.buf, self.at, 0
        while at < len(buf):
            left += 1
            at += 1 if buf[at] < 0 else 2 + 2 * max(buf[at + 1] if at + 1 < len(buf) else 0, 0)
        return left
