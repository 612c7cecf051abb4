"""The offline proposer: program mutation and recombination on policy files, no LLM, no network.

``proposer`` is where to start reading (it says what each operation does); the other modules
are its parts.
"""

from autotuner.proposers.offline.proposer import (
    MAX_ATTEMPTS,
    OPERATION_WEIGHTS,
    OPERATIONS,
    OfflineProposer,
)

__all__ = ["MAX_ATTEMPTS", "OPERATIONS", "OPERATION_WEIGHTS", "OfflineProposer"]
