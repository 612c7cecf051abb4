"""The campaign's expected failures: each reaches the user as one line, never a traceback."""

from __future__ import annotations


class CampaignError(RuntimeError):
    """An expected failure with a message for the user (exists, locked, missing)."""


class WorkloadRefused(CampaignError):
    """The tuned baseline cannot serve as a yardstick on a workload (it fails there, or has
    (nearly) no capacity): the campaign stops before searching, and a new one leaves no folder."""


def one_line(text: object) -> str:
    """A message as one line (an exception's text can span several)."""
    return " ".join(str(text).split())
