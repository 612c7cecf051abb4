"""What can fail for the user's setup fails here, before anything is written, so that the fixed
command can be run again under the same name; then the setup is described in a few lines."""

from __future__ import annotations

from autotuner import scoring
from autotuner.campaign.errors import CampaignError, one_line
from autotuner.campaign.lifecycle import stored_state
from autotuner.campaign.progress import fmt_duration
from autotuner.campaign.proposers import describe_proposer, make_proposer, preflight_proposer
from autotuner.campaign.state import CampaignState
from autotuner.check import check_policy
from autotuner.config import policy_file
from autotuner.isolation import SandboxUnavailable
from autotuner.scoring import ExecutorUnavailable, Instance, build_workload
from autotuner.scoring.ray_executor import connect_ray
from autotuner.tune import StorageUnavailable, open_rdb_storage, shown_url


def preflight(state: CampaignState) -> None:
    """The policy files (present, readable, accepted by the static check), the traces
    (readable, with requests in every window), the sandbox (here, or on a Ray node that
    answers a probe task), the Optuna RDB storage, and last (it may wait on the network) the
    proposer: a configured LLM endpoint answers one test request."""
    if not state.resume:
        _check_policy_files(state)
    _check_traces(state)
    if state.cfg.executor == "ray":
        _connect_ray(state)
    elif state.simulator is None:
        try:  # looked up on the module: tests stand in for the sandbox there
            state.sandbox_line = scoring.sandbox_description(state.cfg.sandbox.backend)
        except SandboxUnavailable as exc:
            raise CampaignError(f"sandbox: {exc}") from None
    if state.cfg.optuna_storage:
        try:
            open_rdb_storage(state.cfg.optuna_storage)
        except StorageUnavailable as exc:
            raise CampaignError(f"optuna_storage: {exc}") from None
    stored = stored_state(state) if state.resume else {}
    searching = ("baseline", "seeds", "search") + (("done",) if state.extend else ())
    if state.proposer is None and stored.get("phase", "baseline") in searching:
        state.proposer, state.proposer_line = make_proposer(state.cfg, stored.get("spend"))
        answered = preflight_proposer(state.proposer)
        if answered is not None:
            state.proposer_line += f" ({answered})"


def _connect_ray(state: CampaignState) -> None:
    """The cluster answers, and one of its nodes can evaluate (its sandbox is the line the
    setup shows; every node's is logged when it first reports)."""
    try:
        state.executor_line, node = connect_ray(state.cfg.sandbox.backend)
    except ExecutorUnavailable as exc:
        raise CampaignError(f"executor: {exc}") from None
    if state.simulator is None:
        state.sandbox_line = (f"on the Ray nodes; probed {node}", "WEAKER" in node)


def _check_policy_files(state: CampaignState) -> None:
    """The baseline and the seeds: each present, readable and accepted by the static check
    (they run in the sandbox exactly as proposals do)."""
    named = [("objective.baseline", state.cfg.objective.baseline)]
    named += [("search.seeds", seed) for seed in state.cfg.search.seeds]
    for field_name, name in named:
        try:
            path = policy_file(name)
            code = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CampaignError(f"{field_name}: {name}: {one_line(exc)}") from None
        checked = check_policy(code, path.name)
        if not checked.ok:
            reasons = "; ".join(checked.reasons()) or "the static check refused it"
            raise CampaignError(f"{field_name}: {path} is refused by the static check: "
                                f"{one_line(reasons)}")


def _check_traces(state: CampaignState) -> None:
    """Every trace instance builds (readable, valid, requests in its window)."""
    seen: set[Instance] = set()
    for inst in (i for split in state.instances.values() for i in split if i.trace):
        if inst in seen:
            continue
        seen.add(inst)
        try:
            build_workload(inst)
        except Exception as exc:  # noqa: BLE001 - any fault of a trace is the user's input
            detail = one_line(exc) if isinstance(exc, (ValueError, OSError)) else \
                f"{type(exc).__name__}: {one_line(exc)}"
            raise CampaignError(f"workloads.traces: {inst.label}: {detail}") from None


def describe_setup(state: CampaignState) -> None:
    """The cluster, SLO, workloads, budget, sandbox and proposer, one line each."""
    cfg = state.cfg
    c = cfg.cluster
    n = {k: len(v) for k, v in state.instances.items()}
    log = state.progress.log
    log(f"cluster: {c.replicas} x {c.model} on {c.gpu} (tp={c.tp}); SLO per request: "
        f"{cfg.slo.slo().describe()}; capacity: the highest sustainable rate with "
        f"{cfg.slo.share:.0%} of the scored window's requests in SLO")
    log(f"workloads: {', '.join(cfg.workloads.scenarios)}"
        + (f" + {len(cfg.workloads.traces)} trace(s)" if cfg.workloads.traces else "")
        + "; requests per instance (held-out): " + ", ".join(
            f"{s} {cfg.workloads.requests_for(s)} ({cfg.workloads.requests_for(s, 'heldout')})"
            for s in cfg.workloads.scenarios)
        + f"; instances train {n['train']}, validation {n['validation']}, "
        f"held-out {n['heldout']}")
    b = cfg.budget
    log(f"budget: {b.proposals} proposals, {b.trials} Optuna trials per candidate, "
        f"{fmt_duration(b.wall_time_s)} wall time"
        + (f", {b.tokens} tokens" if b.tokens is not None else "")
        + (f", ${b.usd:g}" if b.usd is not None else "")
        + f"; parallelism {cfg.parallelism}")
    if state.executor_line:
        log(f"executor: {state.executor_line}")
    if cfg.optuna_storage:
        log(f"optuna storage: {shown_url(cfg.optuna_storage)}")
    if state.sandbox_line is not None:
        line, weaker = state.sandbox_line
        log(f"sandbox: {line}" + ("  [WEAKER isolation: a plain child process]" if weaker
                                  else ""))
    else:
        log("sandbox: none (a test simulator runs trusted files in process)")
    _setup_proposer(state)


def _setup_proposer(state: CampaignState) -> None:
    """The proposer of a campaign whose preflight made none (a resume past the search, or one
    given by the caller), and its line."""
    assert state.archive is not None
    if state.proposer_line:
        pass  # made by the preflight
    elif state.proposer is None:
        state.proposer, state.proposer_line = make_proposer(state.cfg, state.archive.spend())
    else:
        state.proposer_line = describe_proposer(state.proposer)
    state.progress.log(f"proposer: {state.proposer_line}")
