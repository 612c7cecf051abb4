"""The LLM proposer: asks any OpenAI-compatible chat endpoint for a new policy file.

``config`` says how to reach the model and what may be spent; ``client`` makes the calls (retries,
budget); ``proposer`` holds the dialogue (ask, parse, check, send the reasons back).
``LLMConfig.endpoint_configured()`` tells the campaign whether there is an endpoint to use.
"""

from autotuner.proposers.llm.client import ChatClient, EndpointError, Spend, retry_after_s
from autotuner.proposers.llm.config import DEFAULT_PRICES, LLMConfig
from autotuner.proposers.llm.proposer import LLMProposer

__all__ = [
    "DEFAULT_PRICES",
    "ChatClient",
    "EndpointError",
    "LLMConfig",
    "LLMProposer",
    "Spend",
    "retry_after_s",
]
