"""Which proposer writes the campaign's proposals, and the line that says so: the configured LLM
endpoint, else the built-in offline proposer. The campaign's budget and seed reach the LLM's
client here, once."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from autotuner.campaign.errors import CampaignError, one_line
from autotuner.config import CampaignConfig
from autotuner.proposers.base import CheckFn, Proposer
from autotuner.proposers.llm import EndpointError, LLMProposer, Spend
from autotuner.proposers.offline import OfflineProposer

LLM_PREFLIGHT_TIMEOUT_S = 20.0  # the setup's test request to a configured LLM endpoint
DRY_RUN_REQUESTS = 40  # a proposal's first run: enough requests to reach route and partition


def make_proposer(cfg: CampaignConfig, spent: Mapping[str, float] | None = None
                  ) -> tuple[Proposer, str]:
    """The configured proposer and one line saying which it is (and why). ``spent``: what a
    resumed campaign already spent on the LLM (it counts against the budget)."""
    seed = cfg.seed if cfg.proposer.llm.seed is None else cfg.proposer.llm.seed
    llm = dataclasses.replace(cfg.proposer.llm, token_budget=cfg.budget.tokens,
                              usd_budget=cfg.budget.usd, seed=seed)
    kind = cfg.proposer.kind
    if kind == "llm" or (kind == "auto" and llm.endpoint_configured()):
        spend = Spend(int((spent or {}).get("prompt_tokens", 0)),
                      int((spent or {}).get("completion_tokens", 0)),
                      float((spent or {}).get("cost_usd", 0.0)))
        try:
            proposer = LLMProposer(llm, spent=spend, dry_run=sandbox_dry_run(cfg))
        except ValueError as exc:
            raise CampaignError(f"LLM proposer: {exc}") from None
        return proposer, describe_proposer(proposer)
    why = ("no LLM endpoint configured" if kind == "auto" else "proposer.kind = \"offline\"")
    return offline_proposer(cfg), f"offline proposer ({why})"


def sandbox_dry_run(cfg: CampaignConfig) -> CheckFn:
    """A proposal's first run, on a few dozen requests of each scenario, in the sandbox and
    replayed like every evaluation, before the proposal is accepted: a file that raises or makes
    an illegal decision goes back to the model with the reason (line, expression, rule) while
    its repair loop can still fix it, for the cost of one small run instead of a screen that
    fails on every workload. Returns the reasons (empty: it ran)."""
    from autotuner.scoring import Instance, build_workload, horizon_for, sandboxed_evaluation

    def dry_run(code: str) -> list[str]:
        # Every scenario, not only the first: a budget that ignores max_batch_tokens passed 40
        # chat requests and failed on multiturn's long prompts, after the repair loop was over.
        # Each run is a fraction of a second; a model call is minutes.
        slo = cfg.slo.slo()
        for scenario in cfg.workloads.scenarios:  # none (traces only): the screen is the first
            wl = build_workload(Instance(scenario, cfg.seed, DRY_RUN_REQUESTS))
            ev = sandboxed_evaluation(code, {}, cfg.cluster.spec(), wl, slo,
                                      horizon_for(wl, slo), cfg.sandbox,
                                      f"proposal (dry run, {scenario})", warm=True)
            if not ev.ok:
                return list(ev.reasons) or [ev.verdict]
        return []

    return dry_run


def offline_proposer(cfg: CampaignConfig) -> OfflineProposer:
    """The built-in proposer, seeded by ``proposer.offline.seed`` or else the campaign's."""
    seed = cfg.proposer.offline.seed if cfg.proposer.offline.seed is not None else cfg.seed
    return OfflineProposer(seed=seed)


def describe_proposer(proposer: Proposer) -> str:
    """One line naming a proposer (an LLM by its model and endpoint)."""
    if isinstance(proposer, LLMProposer):
        return f"LLM proposer: model {proposer.model} at {proposer.endpoint}"
    return f"{getattr(proposer, 'name', 'custom')} proposer"


def preflight_proposer(proposer: Proposer) -> str | None:
    """A configured LLM endpoint answers one test request (what it said, for the setup's
    line); any other proposer has nothing to test (None)."""
    if not isinstance(proposer, LLMProposer):
        return None
    try:
        return proposer.preflight(LLM_PREFLIGHT_TIMEOUT_S)
    except EndpointError as exc:
        raise CampaignError(f"LLM endpoint: {one_line(exc)}") from None
