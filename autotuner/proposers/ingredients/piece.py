"""What one heuristic piece is, and the names its slots are filled under.

A piece is policy-file code that fills one slot of a policy: a budget, a queue order or a router.
Keeping the type apart from the catalogue lets the catalogue modules be pure data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SLOTS = ("budget", "order", "route")
# The function each slot's piece defines.
SLOT_FUNCTION = {"budget": "_budget", "order": "_order", "route": "route"}

COMPOSED_TITLE = "Offline proposal composed from known-good heuristic pieces."

# Defaults of the SLO-aware pieces; the proposer overrides them with the campaign's own targets.
DEFAULT_TTFT_S = 2.0
DEFAULT_TPOT_S = 0.1


@dataclass(frozen=True)
class Ingredient:
    """One piece: code defining its slot's function (plus prefixed helpers and state)."""

    name: str
    slot: str  # "budget", "order" or "route"
    summary: str  # one line for the policy file's docstring
    code: str  # top-level statements, no imports, no TUNABLES
    tunables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    imports: tuple[str, ...] = ()  # import statements the code needs, e.g. "import random"
    rank: int = 50  # lower = stronger in the research figures; the proposer's early bias


def tunable_spec(
    kind: str, low: float, high: float, default: float, log: bool = False
) -> dict[str, Any]:
    """A TUNABLES entry, keys in the order a reader expects."""
    spec: dict[str, Any] = {"type": kind, "low": low, "high": high}
    if log:
        spec["log"] = True
    spec["default"] = default
    return spec
