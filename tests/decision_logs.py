"""Decision logs for tests: a policy's log as the sandbox worker's simulator records it, and that
flat list of ints cut into its decisions, so that tests can drop, reorder or forge whole ones."""

from __future__ import annotations

from typing import Any

from autotuner.sim.engine import simulate
from autotuner.sim.replay import KeptLog


def record(cluster: Any, wl: Any, policy: Any) -> list[int]:
    """The log of ``policy``'s run, which must be legal."""
    kept = KeptLog()
    result = simulate(cluster, wl, policy, log=kept)
    assert result.error is None, result.error
    return kept.ints


def decisions(flat: list[int]) -> list[list[int]]:
    """A well-formed flat log cut into its decisions (``joined(decisions(f)) == f``)."""
    out, at = [], 0
    while at < len(flat):
        end = at + 1 if flat[at] < 0 else at + 2 + 2 * flat[at + 1]
        out.append(flat[at:end])
        at = end
    return out


def joined(entries: list[list[int]]) -> list[int]:
    """Decisions (``decisions``) as one flat log again."""
    return [i for entry in entries for i in entry]
