"""Proposers write new policy files: an LLM behind any OpenAI-compatible endpoint, or offline.

The campaign hands a proposer a ``ProposalRequest`` of typed records (``base``); only
``prompt`` turns them into text, for the LLM. ``LLMConfig.endpoint_configured()`` tells the
campaign whether there is an endpoint to use; when there is none it runs the offline proposer
and says so.
"""

from autotuner.proposers.base import (
    CallRecord,
    CheckFn,
    ClusterInfo,
    Objective,
    ParentInfo,
    Proposal,
    ProposalRequest,
    Proposer,
    WorkloadInfo,
)
from autotuner.proposers.llm import LLMConfig, LLMProposer, Spend

__all__ = [
    "CallRecord",
    "CheckFn",
    "ClusterInfo",
    "LLMConfig",
    "LLMProposer",
    "Objective",
    "ParentInfo",
    "Proposal",
    "ProposalRequest",
    "Proposer",
    "Spend",
    "WorkloadInfo",
]
