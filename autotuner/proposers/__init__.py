"""Proposers write new policy files: an LLM behind any OpenAI-compatible endpoint, or offline.

``LLMConfig.endpoint_configured()`` tells the campaign whether there is an endpoint to use; when
there is none it runs the offline proposer and says so.
"""

from autotuner.proposers.base import CheckFn, ParentInfo, Proposal, ProposalRequest, Proposer
from autotuner.proposers.llm import LLMConfig, LLMProposer, Spend

__all__ = [
    "CheckFn",
    "LLMConfig",
    "LLMProposer",
    "ParentInfo",
    "Proposal",
    "ProposalRequest",
    "Proposer",
    "Spend",
]
