"""Proposers write new policy files: an LLM behind any OpenAI-compatible endpoint, or offline."""

from autotuner.proposers.base import CheckFn, ParentInfo, Proposal, ProposalRequest, Proposer

__all__ = ["CheckFn", "ParentInfo", "Proposal", "ProposalRequest", "Proposer"]
