"""Plain data passed between the campaign loop and a proposer, and the proposer interface.

Kept small on purpose: the LLM proposer and the offline (mutation) proposer both fit it, and the
loop needs to know nothing else about either. Everything here is immutable so a request can be
handed to several threads and a proposal stored in the archive as is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from autotuner.diagnose import Diagnosis

# A static check: takes a policy file's text, returns the reasons it is refused (empty = passes).
CheckFn = Callable[[str], list[str]]


@dataclass(frozen=True)
class ParentInfo:
    """An archive member shown to the proposer: the parent, or an inspiration beside it.

    ``train_score`` is its training objective (relative gain over the tuned baseline, 0.0 =
    equal) and ``workload_gains`` the same per training workload label, so a proposer can see
    where it lags; ``failures`` are evaluation failures with their reasons, which is often the
    most useful thing a model can read.
    """

    candidate_id: str
    code: str
    train_score: float | None = None
    workload_gains: Mapping[str, float] = field(default_factory=dict)
    failures: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)  # tuned values of its TUNABLES
    # where it loses to the tuned baseline per workload (TTFT and inter-token tails, imbalance,
    # preemptions, prefix-cache hits at the same rates); None: not measured (not scored yet)
    diagnosis: Diagnosis | None = None


@dataclass(frozen=True)
class Objective:
    """What a proposal is scored on, as the campaign is configured.

    ``slo`` holds every field of the campaign's SLO config by name (``ttft_s``, ``tpot_s``, ...),
    copied generically, so a new SLO term reaches the proposers and the prompt without a change
    here; a proposer reads the terms it knows and ignores the rest.
    """

    slo: Mapping[str, Any]
    share: float  # a rate counts when at least this share of requests meets the SLO
    ladder: tuple[float, ...]  # load factors x the tuned baseline's capacity per workload
    goodput: str  # "requests" or "tokens" (per second, of the requests meeting the SLO)
    margin: float  # capacity gain (lower confidence bound) the gate asks for on held-out data
    baseline: str  # name of the tuned baseline every score is relative to


@dataclass(frozen=True)
class ClusterInfo:
    """The simulated cluster the policies run on."""

    replicas: int
    model: str
    gpu: str
    tp: int  # tensor parallel degree of one replica
    max_batch_tokens: int  # tokens one iteration may run


@dataclass(frozen=True)
class WorkloadInfo:
    """One training workload and the tuned baseline's capacity under SLO on it (req/s)."""

    label: str
    baseline_capacity: float


@dataclass(frozen=True)
class ProposalRequest:
    """Everything one proposal needs, as data; ``autotuner.proposers.prompt`` phrases it."""

    parent: ParentInfo
    inspirations: tuple[ParentInfo, ...]
    objective: Objective
    workloads: tuple[WorkloadInfo, ...]
    cluster: ClusterInfo
    baseline_params: Mapping[str, Any] | None = None  # the tuned baseline's values; None: unknown
    api_doc: str = ""  # empty: the proposer renders prompts/policy_api.md.j2 itself
    notes: tuple[str, ...] = ()  # free-form hints from the loop (e.g. "explore routing")


@dataclass(frozen=True)
class CallRecord:
    """One model call of a proposal: its size (the server's count and our estimate), time, and
    what became of the reply, so a prompt's cost can be read per call."""

    attempt: int
    prompt_tokens: int  # as the server reported it (0: it reported nothing)
    estimated_prompt_tokens: int  # tokenizer-free estimate of the messages sent
    completion_tokens: int
    seconds: float
    outcome: str  # "ok", or one short line: why the reply was not used
    fixes: tuple[str, ...] = ()  # the tool's own mechanical fixes to this reply (autofix)


@dataclass(frozen=True)
class Proposal:
    """What came back: a policy file that passed the check, or why there is none.

    ``reason`` is "" when ``ok``; otherwise one line the archive records, such as
    "no code in reply", "edit 2 did not apply: search text not found",
    "check rejected after 3 attempts: ...", "budget exhausted ...", "endpoint error: ...".
    ``fatal`` marks failures that the next request will hit too (budget spent, bad key, unknown
    model): the loop should stop asking this proposer rather than burn through its queue.
    """

    code: str | None
    ok: bool
    reason: str
    raw_replies: tuple[str, ...] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    attempts: int = 0
    model: str = ""
    fatal: bool = False
    calls: tuple[CallRecord, ...] = ()
    fixes: tuple[str, ...] = ()  # the tool's mechanical fixes in the file returned (autofix)


@runtime_checkable
class Proposer(Protocol):
    """Writes one new policy file per request. ``check`` must be safe to call from threads."""

    name: str

    def propose(self, request: ProposalRequest, check: CheckFn) -> Proposal: ...
