"""What a campaign config may ask for: bounds, cross-field rules, and one-line errors.

A value outside its bounds is refused, never clamped: each is a typo or a request the machine
cannot honour (10^12 requests is a 7 TiB allocation, parallelism 100000 a fork bomb, a negative
seed a crash inside a worker much later). A key that would have no effect is refused too, since a
setting silently ignored runs a different experiment than the one the user wrote down. Each
message names the key (``budget.trials: must be between 1 and 10,000, got 0``), and the checks
run section by section in file order, so the first problem in the file is the one reported.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from autotuner.config.records import (
    SCENARIO_NAMES,
    CampaignConfig,
    ClusterConfig,
    SLOConfig,
    WorkloadsConfig,
)
from autotuner.isolation.registry import BACKEND_ORDER
from autotuner.resources import baseline_path
from autotuner.sim.engine import ClusterSpec
from autotuner.sim.metrics import SLO_KINDS
from autotuner.sim.traces import TraceError, load_trace, window_seconds
from autotuner.sim.workload import MAX_REQUESTS

MAX_NAME_CHARS = 100
MAX_SEED = 2**32 - 1  # the range every seeded generator here accepts
EXECUTORS = ("local", "ray")  # where evaluations run: autotuner.scoring.executors
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")  # what Optuna's RDBStorage (SQLAlchemy) takes
MAX_PARALLELISM = 64  # worker processes; more than the cores only queue
MAX_SEEDS_PER_SPLIT = 100  # workload instances per scenario and split
MAX_BLOCK_SIZE = 1024
MAX_BATCH_TOKENS = 1 << 20
MAX_SLO_S = 3600.0
MAX_LADDER_RUNGS, MAX_LOAD_FACTOR = 16, 100.0
MAX_PROPOSALS = 100_000
MAX_TRIALS = 10_000
MAX_EVALUATIONS = 100_000_000
MAX_WALL_TIME_S = 30 * 86400.0
MAX_SEARCH_WIDTH = 64  # islands, proposals in flight, inspirations, tournament size
MAX_FINALISTS = 100
MAX_BOOTSTRAP = 1_000_000  # resamples times instances is held in memory at once
MAX_TIMEOUT_S = 86400.0
MAX_MEMORY_MB = 1 << 20  # 1 TiB

SANDBOX_BACKENDS = ("auto", *BACKEND_ORDER)

# The deadline definition's own settings: the legacy yardstick reads none of them.
DEADLINE_ONLY_SLO_KEYS = ("ttft_s_per_token", "tbt_s", "warmup", "max_backlog_growth")


class ConfigError(ValueError):
    """A campaign file that cannot be used; the message names the key and what is wrong."""


def validate(cfg: CampaignConfig) -> CampaignConfig:
    """Semantic checks beyond types (``files`` checked those while reading); returns ``cfg``."""
    _validate_top_level(cfg)
    _validate_cluster(cfg.cluster)
    _validate_slo(cfg.slo)
    _validate_workloads(cfg.workloads, cfg.cluster.spec())
    _validate_objective_and_proposer(cfg)
    _validate_budget(cfg)
    _validate_search(cfg)
    _validate_gate(cfg)
    _validate_sandbox(cfg)
    return cfg


def policy_file(name: str) -> Path:
    """A policy named in a campaign file: a path ending in ``.py``, else a shipped baseline."""
    return Path(name) if Path(name).suffix == ".py" else baseline_path(name)


# ------------------------------------------------------------------------------- the rules
def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _bounded(value: float, low: float, high: float, key: str) -> None:
    def text(x: float) -> str:
        if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
            x = int(x)
        return f"{x:,}" if isinstance(x, int) else f"{x:g}"

    _require(low <= value <= high, key,
             f"must be between {text(low)} and {text(high)}, got {text(value)}")


def _require_policy(name: str, key: str) -> None:
    try:
        path = policy_file(name)
    except FileNotFoundError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    _require(path.is_file(), key, f"no such policy file {name!r}")


def _validate_top_level(cfg: CampaignConfig) -> None:
    name = cfg.name
    _require(len(name) <= MAX_NAME_CHARS, "name", f"must be at most {MAX_NAME_CHARS} characters")
    _require(bool(name) and all(c.isalnum() or c in "-_." for c in name) and name[0] != ".",
             "name", f"must be letters, digits, '-', '_' or '.', got {name!r}")
    _bounded(cfg.seed, 0, MAX_SEED, "seed")
    _bounded(cfg.parallelism, 1, MAX_PARALLELISM, "parallelism")
    _require(cfg.executor in EXECUTORS, "executor",
             f"must be {' or '.join(repr(e) for e in EXECUTORS)}, got {cfg.executor!r}")
    url = cfg.optuna_storage
    _require(not url or url.split("://", 1)[0].split("+", 1)[0] in RDB_SCHEMES,
             "optuna_storage", "must be empty (the campaign's journal file) or an RDB URL "
             f"starting {', '.join(s + '://' for s in RDB_SCHEMES)}, got {url!r}")


def _validate_cluster(c: ClusterConfig) -> None:
    for key in ("tp", "replicas", "block_size", "max_batch_tokens"):
        _require(getattr(c, key) >= 1, f"cluster.{key}", "must be at least 1")
    _bounded(c.block_size, 1, MAX_BLOCK_SIZE, "cluster.block_size")
    _bounded(c.max_batch_tokens, 1, MAX_BATCH_TOKENS, "cluster.max_batch_tokens")
    _require(0 < c.gpu_memory_utilization <= 1, "cluster.gpu_memory_utilization",
             "must be in (0, 1]")
    try:
        c.spec().cost_model().kv_capacity_tokens(c.gpu_memory_utilization, c.block_size)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"cluster: {exc.args[0] if exc.args else exc}") from None


def _validate_slo(s: SLOConfig) -> None:
    _require(s.kind in SLO_KINDS, "slo.kind", f"must be one of {', '.join(SLO_KINDS)}")
    for key in ("ttft_s", "tpot_s", "tbt_s", "starve_multiple"):
        _require(getattr(s, key) > 0, f"slo.{key}", "must be > 0")
    _require(s.ttft_s_per_token >= 0, "slo.ttft_s_per_token", "must be >= 0")
    for key in ("ttft_s", "tpot_s", "tbt_s"):
        _require(getattr(s, key) <= MAX_SLO_S, f"slo.{key}", f"must be at most {MAX_SLO_S:g} s")
    _require(0 < s.share < 1, "slo.share", "must be between 0 and 1")
    _require(0 <= s.warmup < 1, "slo.warmup", "must be in [0, 1)")
    _require(s.max_backlog_growth >= 0, "slo.max_backlog_growth", "must be >= 0")
    if s.kind == "legacy":
        defaults = SLOConfig()
        for key in DEADLINE_ONLY_SLO_KEYS:
            _require(getattr(s, key) == getattr(defaults, key), f"slo.{key}",
                     "has no effect with slo.kind = 'legacy' (a fixed TTFT target and mean TPOT "
                     "over every request); remove it or use kind = 'deadline'")


def _validate_workloads(w: WorkloadsConfig, cluster: ClusterSpec) -> None:
    for scen in w.scenarios + w.screen:
        _require(scen in SCENARIO_NAMES, "workloads.scenarios",
                 f"unknown scenario {scen!r} (known: {', '.join(SCENARIO_NAMES)})")
    _require(len(set(w.scenarios)) == len(w.scenarios), "workloads.scenarios",
             "lists a scenario twice")
    _require(bool(w.scenarios or w.traces), "workloads.scenarios", "no scenarios and no traces")
    _require(set(w.screen) <= set(w.scenarios), "workloads.screen",
             "must be a subset of workloads.scenarios")
    _bounded(w.requests, 10, MAX_REQUESTS, "workloads.requests")
    for scen, n in w.heldout_requests.items():
        _require(scen in SCENARIO_NAMES, "workloads.heldout_requests",
                 f"unknown scenario {scen!r}")
        _bounded(n, 10, MAX_REQUESTS, f"workloads.heldout_requests.{scen}")
    for scen, n in w.scenario_requests.items():
        _require(scen in SCENARIO_NAMES, "workloads.scenario_requests",
                 f"unknown scenario {scen!r} (known: {', '.join(SCENARIO_NAMES)})")
        _bounded(n, 10, MAX_REQUESTS, f"workloads.scenario_requests.{scen}")
    _require_requests_used(w)
    for key in ("train_seeds", "validation_seeds", "heldout_seeds"):
        _validate_seeds(getattr(w, key), f"workloads.{key}")
    splits = [set(w.train_seeds), set(w.validation_seeds), set(w.heldout_seeds)]
    _require(not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2]),
             "workloads", "train, validation and held-out seeds must differ")
    for key in ("train_window", "validation_window", "heldout_window"):
        win = getattr(w, key)
        _require(len(win) == 2 and 0 <= win[0] < win[1] <= 1, f"workloads.{key}",
                 "must be [start, end] fractions with 0 <= start < end <= 1")
    _validate_traces(w, cluster)


def _require_requests_used(w: WorkloadsConfig) -> None:
    """``requests`` sizes the traces and the scenarios without a count of their own; changed
    while every scenario has one (the default ``scenario_requests`` names all five), it would
    change nothing."""
    if w.requests == WorkloadsConfig.requests or w.traces:
        return
    _require(any(s not in w.scenario_requests for s in w.scenarios), "workloads.requests",
             "has no effect: every scenario has its own count in workloads.scenario_requests "
             "(set scenario_requests = {} for one count everywhere, or change the counts there)")


def _validate_seeds(seeds: tuple[int, ...], key: str) -> None:
    _require(len(seeds) >= 1, key, "needs at least one seed")
    _require(len(seeds) <= MAX_SEEDS_PER_SPLIT, key,
             f"has {len(seeds)} seeds, more than {MAX_SEEDS_PER_SPLIT}")
    _require(len(set(seeds)) == len(seeds), key, "lists a seed twice")
    for seed in seeds:
        _bounded(seed, 0, MAX_SEED, key)


def _validate_traces(w: WorkloadsConfig, cluster: ClusterSpec) -> None:
    """Every trace loads, each split's window of it holds requests at distinct times, and every
    request fits one replica's KV cache: checked here, in the parent, because a trace that fails
    inside a worker fails the campaign after minutes of baseline work."""
    _require(len(set(w.traces)) == len(w.traces), "workloads.traces", "lists a trace twice")
    kv_tokens = cluster.cost_model().kv_capacity_tokens(cluster.gpu_memory_utilization,
                                                        cluster.block_size)
    for trace in w.traces:
        _require(Path(trace).is_file(), "workloads.traces", f"no such trace file {trace!r}")
        whole = _load_trace_window(trace, None, "workloads.traces", w.requests)
        for split in ("train", "validation", "heldout"):
            window = getattr(w, f"{split}_window")
            span = window_seconds(float(whole.arrival[-1]), window)
            _load_trace_window(trace, span, f"workloads.{split}_window", w.requests)
        need = whole.prompt + whole.output
        longest = int(need.max())
        _require(longest <= kv_tokens, "workloads.traces",
                 f"{trace}: {int((need > kv_tokens).sum()):,} request(s) need more KV cache "
                 f"than a replica holds (the longest, {longest:,} tokens of prompt and output, "
                 f"against {kv_tokens:,} for {cluster.model} on {cluster.tp} x {cluster.gpu}), "
                 "so they could never be served; use a larger tp or GPU, or drop those rows")


def _load_trace_window(trace: str, span: tuple[float, float] | None, key: str,
                       limit: int) -> Any:
    start, end = span if span is not None else (None, None)
    try:
        return load_trace(trace, start=start, end=end, limit=None if span is None else limit)
    except TraceError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def _validate_objective_and_proposer(cfg: CampaignConfig) -> None:
    o = cfg.objective
    _require(len(o.ladder) >= 1 and all(f > 0 and math.isfinite(f) for f in o.ladder),
             "objective.ladder", "must be one or more load factors, each positive")
    _require(len(o.ladder) <= MAX_LADDER_RUNGS, "objective.ladder",
             f"has {len(o.ladder)} rungs, more than {MAX_LADDER_RUNGS}")
    for factor in o.ladder:
        _bounded(factor, 0, MAX_LOAD_FACTOR, "objective.ladder")
    _require_policy(o.baseline, "objective.baseline")
    _require(o.goodput in ("requests", "tokens"), "objective.goodput",
             "must be 'requests' or 'tokens'")
    _require(cfg.proposer.kind in ("auto", "offline", "llm"), "proposer.kind",
             "must be 'auto', 'offline' or 'llm'")
    if cfg.proposer.offline.seed is not None:
        _bounded(cfg.proposer.offline.seed, 0, MAX_SEED, "proposer.offline.seed")


def _validate_budget(cfg: CampaignConfig) -> None:
    b = cfg.budget
    _bounded(b.proposals, 0, MAX_PROPOSALS, "budget.proposals")
    _bounded(b.trials, 1, MAX_TRIALS, "budget.trials")
    _require(b.wall_time_s > 0, "budget.wall_time_s", "must be > 0")
    _bounded(b.wall_time_s, 0, MAX_WALL_TIME_S, "budget.wall_time_s")
    _bounded(b.finalize_reserve_s, 0, MAX_WALL_TIME_S, "budget.finalize_reserve_s")
    _bounded(b.min_proposals, 0, MAX_PROPOSALS, "budget.min_proposals")
    if b.evaluations is not None:
        _bounded(b.evaluations, 1, MAX_EVALUATIONS, "budget.evaluations")
    _require(b.tokens is None or b.tokens >= 0, "budget.tokens", "must be >= 0")
    _require(b.usd is None or b.usd >= 0, "budget.usd", "must be >= 0")


def _validate_search(cfg: CampaignConfig) -> None:
    se = cfg.search
    _bounded(se.islands, 1, MAX_SEARCH_WIDTH, "search.islands")
    _bounded(se.in_flight, 1, MAX_SEARCH_WIDTH, "search.in_flight")
    _bounded(se.migration_every, 1, MAX_PROPOSALS, "search.migration_every")
    _bounded(se.tournament, 1, MAX_SEARCH_WIDTH, "search.tournament")
    _bounded(se.inspirations, 0, MAX_SEARCH_WIDTH, "search.inspirations")
    _bounded(se.finalists, 1, MAX_FINALISTS, "search.finalists")
    _bounded(se.screen_threshold, -1.0, MAX_LOAD_FACTOR, "search.screen_threshold")
    _bounded(se.prune_margin, 0.0, MAX_LOAD_FACTOR, "search.prune_margin")
    _require(len(set(se.seeds)) == len(se.seeds), "search.seeds", "lists a policy twice")
    for seed_policy in se.seeds:
        _require_policy(seed_policy, "search.seeds")


def _validate_gate(cfg: CampaignConfig) -> None:
    g = cfg.gate
    _require(0 <= g.margin < 10, "gate.margin", "must be >= 0")
    _require(0.5 <= g.confidence < 1, "gate.confidence", "must be in [0.5, 1)")
    _bounded(g.bootstrap, 100, MAX_BOOTSTRAP, "gate.bootstrap")
    _require(g.max_wait_multiple >= 1, "gate.max_wait_multiple", "must be at least 1")
    _require(0 <= g.tail_tolerance <= 10, "gate.tail_tolerance", "must be in [0, 10]")
    _require(0 <= g.inversion_tolerance <= 1, "gate.inversion_tolerance", "must be in [0, 1]")
    _require(0 <= g.regression_tolerance < 1, "gate.regression_tolerance", "must be in [0, 1)")
    _require(0 <= g.reference_margin < 10, "gate.reference_margin", "must be >= 0")
    _require(g.min_baseline_capacity > 0, "gate.min_baseline_capacity", "must be > 0")
    for ref in g.references:
        _require(policy_file(ref).is_file(), "gate.references",
                 f"no reference policy {ref!r} (a name in baselines/ or a .py path)")
    _require(0 < g.capacity_rel_tol < 0.5, "gate.capacity_rel_tol", "must be in (0, 0.5)")
    _require(g.capacity_max_multiple in (1, 2, 4, 8, 16), "gate.capacity_max_multiple",
             "must be 1, 2, 4, 8 or 16 (the run doubles per check)")


def _validate_sandbox(cfg: CampaignConfig) -> None:
    _require(cfg.sandbox.backend in SANDBOX_BACKENDS, "sandbox.backend",
             "must be " + ", ".join(repr(b) for b in SANDBOX_BACKENDS[:-1])
             + f" or {SANDBOX_BACKENDS[-1]!r}")
    _require(cfg.sandbox.timeout_s > 0, "sandbox.timeout_s", "must be > 0")
    _bounded(cfg.sandbox.timeout_s, 0, MAX_TIMEOUT_S, "sandbox.timeout_s")
    _bounded(cfg.sandbox.memory_mb, 64, MAX_MEMORY_MB, "sandbox.memory_mb")
