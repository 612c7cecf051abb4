"""Reviewing a campaign: ``status``, ``diff``, ``show`` and ``replay`` (the commands are in
``autotuner.commands``; this package builds what they print).

Everything here reads the archive without changing it, so it is safe to run while a campaign is
running (SQLite WAL lets readers in beside the writer). ``replay`` re-runs a policy with its tuned
parameters through the same sandbox and trusted scorer the campaign uses, beside the tuned
baseline on the same requests; given a promotion record (``promotions/<id>.json``) it repeats the
gate's whole measurement and says whether the claim holds (``reproduce``).
"""

from autotuner.review.common import (
    FAIRNESS_COLUMNS,
    SATURATION_FACTOR,
    ReviewError,
    fairness_lines,
    fairness_row,
    named_requests,
    open_campaign,
    resolve,
)
from autotuner.review.diff import candidate_diff, colorize, diff_text
from autotuner.review.replay import (
    ReplayOptions,
    ReplayTarget,
    replay,
    replay_failed,
    replay_text,
    slo_override,
)
from autotuner.review.reproduce import (
    Reproduction,
    reproduce,
    reproduction_data,
    reproduction_text,
)
from autotuner.review.show import gate_conditions_text, show_text
from autotuner.review.status import attempt_outcomes, status_data, status_rows, status_text

__all__ = [
    "FAIRNESS_COLUMNS", "SATURATION_FACTOR", "ReplayOptions", "ReplayTarget", "Reproduction",
    "ReviewError", "attempt_outcomes", "candidate_diff", "colorize", "diff_text",
    "fairness_lines", "fairness_row", "gate_conditions_text", "named_requests",
    "open_campaign", "replay", "replay_failed", "replay_text", "reproduce", "reproduction_data",
    "reproduction_text", "resolve", "show_text", "slo_override", "status_data", "status_rows",
    "status_text",
]
