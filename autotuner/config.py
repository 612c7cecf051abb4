"""Campaign configuration: frozen dataclasses, loaded from TOML, written back as run.

Every field has a default, so ``autotuner run`` works with no file at all: an offline proposer, a
realistic cluster (4 replicas of Llama-3-8B on H100), the built-in workload mix, and a budget that
finishes in minutes on two cores. A campaign file only names what it changes. Unknown keys and
values of the wrong type are refused with one message naming the key, because a typo silently
ignored would run a different experiment than the one the user wrote down.

The config as run is written to ``results/<name>/config.toml``; ``autotuner resume`` reads it back
from there, so a resumed campaign cannot drift from the one it continues.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from autotuner.proposers.llm import LLMConfig
from autotuner.resources import baseline_path
from autotuner.sim.engine import ClusterSpec
from autotuner.sim.metrics import SLO, SLO_KINDS
from autotuner.sim.traces import TraceError, load_trace, window_seconds
from autotuner.sim.workload import MAX_REQUESTS

SCENARIO_NAMES = ("chat", "summarize", "multiturn", "bursty", "mixed")

# Bounds on what a campaign file may ask for. A value outside is refused, never clamped: each is
# a typo or a request the machine cannot honour (10^12 requests is a 7 TiB allocation,
# parallelism 100000 a fork bomb, a negative seed a crash inside a worker much later).
MAX_NAME_CHARS = 100
MAX_SEED = 2**32 - 1  # the range every seeded generator here accepts
MAX_PARALLELISM = 64  # worker processes; more than the cores only queue
MAX_SEEDS_PER_SPLIT = 100  # workload instances per scenario and split
MAX_BLOCK_SIZE = 1024
MAX_BATCH_TOKENS = 1 << 20
MAX_SLO_S = 3600.0
MAX_LADDER_RUNGS, MAX_LOAD_FACTOR = 16, 100.0
MAX_PROPOSALS = 100_000
MAX_TRIALS = 10_000
MAX_WALL_TIME_S = 30 * 86400.0
MAX_SEARCH_WIDTH = 64  # islands, proposals in flight, inspirations, tournament size
MAX_FINALISTS = 100
MAX_BOOTSTRAP = 1_000_000  # resamples times instances is held in memory at once
MAX_TIMEOUT_S = 86400.0
MAX_MEMORY_MB = 1 << 20  # 1 TiB


class ConfigError(ValueError):
    """A campaign file that cannot be used; the message names the key and what is wrong."""


@dataclass(frozen=True)
class ClusterConfig:
    """The simulated cluster every policy is scored on.

    Fields:
        model: model name from the simulator's catalogue (``autotuner.sim.hardware``).
        gpu: GPU type from the catalogue (``h100``, ``a100``, ...).
        tp: tensor-parallel degree: GPUs per replica.
        replicas: model replicas behind the router.
        gpu_memory_utilization: share of GPU memory the server may use for weights and KV cache
            (vLLM's flag of the same name).
        block_size: tokens per KV-cache block.
        max_batch_tokens: hard cap on the tokens of one iteration, whatever a policy asks
            (vLLM's ``max_num_batched_tokens``).
    """

    model: str = "llama-3-8b"
    gpu: str = "h100"
    tp: int = 1
    replicas: int = 4
    gpu_memory_utilization: float = 0.9
    block_size: int = 16
    max_batch_tokens: int = 16384

    def spec(self) -> ClusterSpec:
        return ClusterSpec(
            model=self.model, gpu=self.gpu, tp=self.tp, replicas=self.replicas,
            gpu_memory_utilization=self.gpu_memory_utilization, block_size=self.block_size,
            max_batch_tokens=self.max_batch_tokens,
        )


@dataclass(frozen=True)
class SLOConfig:
    """Per-request latency targets, the share of requests that must meet them, and the rule that
    a rate counts only if the cluster sustains it (``autotuner.sim.metrics.SLO`` says where each
    default comes from).

    Fields:
        kind: ``"deadline"`` (a request meets its SLO only if it finishes, within a TTFT deadline
            growing with its prompt, the mean TPOT and the longest gap between its tokens; a rate
            counts only if sustainable) or ``"legacy"`` (a fixed TTFT target and mean TPOT over
            every request, share alone; kept to compare against).
        ttft_s: the TTFT deadline's base, seconds (MLPerf's server-scenario target).
        ttft_s_per_token: seconds the TTFT deadline grows per prompt token (about 7x the
            uncontended prefill time per token of Llama-3-8B on an H100), so long prompts are
            not hopeless by design.
        tpot_s: mean time per output token after the first, seconds.
        tbt_s: the longest gap allowed between two consecutive tokens of one request (a
            preemption's recompute wait included), seconds.
        share: capacity is the highest sustainable request rate at which at least this share of
            the window's requests meet their SLO (0.9, as Sarathi-Serve, Vidur and DistServe
            report it).
        warmup: share of the arrival span, from the first arrival, whose requests are not scored
            (the window runs from there to the last arrival).
        max_backlog_growth: a rate is sustainable when the waiting backlog (prompt tokens waiting
            for a prefill or recompute) grows over the window by at most this share of the prompt
            tokens that arrived in it; overloaded by x %, it grows by about x %.
        starve_multiple: a request waiting longer than this many times its TTFT deadline, or
            never finishing, is reported as starved; the run is cut off once every request has
            had that long (plus its output at the target TPOT).
    """

    kind: str = SLO.kind
    ttft_s: float = SLO.ttft_s
    ttft_s_per_token: float = SLO.ttft_s_per_token
    tpot_s: float = SLO.tpot_s
    tbt_s: float = SLO.tbt_s
    share: float = 0.9
    warmup: float = SLO.warmup
    max_backlog_growth: float = SLO.max_backlog_growth
    starve_multiple: float = SLO.starve_multiple

    def slo(self) -> SLO:
        return SLO(kind=self.kind, ttft_s=self.ttft_s, ttft_s_per_token=self.ttft_s_per_token,
                   tpot_s=self.tpot_s, tbt_s=self.tbt_s, warmup=self.warmup,
                   max_backlog_growth=self.max_backlog_growth,
                   starve_multiple=self.starve_multiple)


@dataclass(frozen=True)
class WorkloadsConfig:
    """Which workloads the campaign searches, ranks and gates on, and how they are split.

    A workload instance is a scenario (or trace) with a seed; training, validation and held-out
    instances never share a seed, and a trace is split by time window, never shuffled.

    Fields:
        scenarios: built-in scenarios (``autotuner workloads`` lists them) used in every split.
        traces: trace files (Azure CSV or Mooncake JSONL) also used; each is cut into the three
            time windows below. Empty by default, so real traces stay unseen for replay.
        requests: requests per workload instance, for scenarios not in ``scenario_requests``
            and as the cap on a trace window.
        scenario_requests: requests per instance by scenario. A run at capacity should last long
            enough for queues to settle (tens of seconds), so high-rate scenarios get more
            requests: too short a run measures how big a burst the cluster absorbs, not what
            it sustains.
        heldout_requests: requests per held-out (gate) instance by scenario, overriding the
            two fields above for the gate alone. The gate's capacity is the claim, so its runs are
            long enough (arrivals over a minute or more at capacity) to measure what the cluster
            sustains rather than a burst it absorbs and finishes after the last arrival; training
            and validation may use shorter runs as a cheaper stand-in. At 2,000 requests, chat
            capacity reads about 35 % above its steady-state value; at 6,000, within about 5 %.
        train_seeds: seeds of the training instances (search and tuning).
        validation_seeds: seeds of the validation instances (re-ranking the finalists).
        heldout_seeds: seeds of the held-out instances (the gate; several per scenario so the
            gate's bootstrap has pairs to resample).
        train_window: [start, end) of a trace's duration, as fractions, used for training.
        validation_window: the same for validation.
        heldout_window: the same for the gate.
        screen: scenarios of the cascade's cheap first stage (first training seed only): a
            candidate is tuned on the full training set only if it does well enough here.
    """

    scenarios: tuple[str, ...] = SCENARIO_NAMES
    traces: tuple[str, ...] = ()
    requests: int = 1000
    scenario_requests: Mapping[str, int] = field(default_factory=lambda: {
        "chat": 2000, "bursty": 2000, "summarize": 1000, "multiturn": 600, "mixed": 1000})
    heldout_requests: Mapping[str, int] = field(default_factory=lambda: {
        "chat": 6000, "bursty": 6000, "summarize": 3000, "multiturn": 600, "mixed": 2000})
    train_seeds: tuple[int, ...] = (1,)
    validation_seeds: tuple[int, ...] = (101,)
    heldout_seeds: tuple[int, ...] = (1001, 1002, 1003)
    train_window: tuple[float, ...] = (0.0, 0.6)
    validation_window: tuple[float, ...] = (0.6, 0.8)
    heldout_window: tuple[float, ...] = (0.8, 1.0)
    screen: tuple[str, ...] = ("mixed",)

    def requests_for(self, scenario: str | None, split: str = "train") -> int:
        if not scenario:
            return self.requests
        if split == "heldout" and scenario in self.heldout_requests:
            return int(self.heldout_requests[scenario])
        return int(self.scenario_requests.get(scenario, self.requests))


@dataclass(frozen=True)
class ObjectiveConfig:
    """What the search maximises: a cheap, smooth stand-in for capacity under SLO.

    For each training instance, the tuned baseline's capacity C is found once; a policy is then
    run at the rates ``factor * C`` for each ladder factor, and its goodput summed over the
    ladder is divided by the tuned baseline's on the same instances (paired). The objective is
    the geometric mean over instances of that ratio, minus one: 0.0 is the baseline, 0.10 is
    10 % better. Goodput counts requests meeting the same per-request SLO as the gate, and a
    rung whose backlog grows past the sustainability limit earns nothing (fading out by five
    times the limit), so the search ranks policies as the gate's capacity does
    (``scripts/ladder_ranking.py`` measures how often). The gate and reports state capacity
    itself.

    Fields:
        baseline: the policy every score is relative to (a file in ``baselines/`` or a path).
            It is tuned first, with the same trial budget a candidate gets.
        ladder: load factors relative to the tuned baseline's capacity on each instance. The top
            rung is where a policy with much more capacity shows it (routing gains on multiturn
            and mixed traffic reach 1.5-2.8x); rungs a policy cannot sustain earn it nothing.
        goodput: ``"requests"`` (requests/s meeting the SLO) or ``"tokens"`` (output tokens/s
            of those requests).
    """

    baseline: str = "fixed_chunk"
    ladder: tuple[float, ...] = (1.0, 1.5, 2.0)
    goodput: str = "requests"


@dataclass(frozen=True)
class OfflineConfig:
    """The built-in offline proposer (program mutation and recombination).

    Fields:
        seed: seeds its random choices; None derives it from the campaign seed.
    """

    seed: int | None = None


@dataclass(frozen=True)
class ProposerConfig:
    """Who writes the proposals.

    Fields:
        kind: ``"auto"`` uses the LLM when an endpoint is configured (a model and a base URL or
            API key, here or in ``$OPENAI_MODEL``/``$OPENAI_BASE_URL``/``$OPENAI_API_KEY``) and
            the offline proposer otherwise; ``"llm"`` insists on the LLM; ``"offline"`` never
            calls one.
        llm: the ``[proposer.llm]`` table: endpoint, model, timeouts, retries, prices (see
            ``autotuner.proposers.llm.LLMConfig``; every key is documented in
            ``campaign.example.toml``). Token and dollar budgets belong in ``[budget]``.
        offline: the ``[proposer.offline]`` table.
    """

    kind: str = "auto"
    llm: LLMConfig = field(default_factory=LLMConfig)
    offline: OfflineConfig = field(default_factory=OfflineConfig)


@dataclass(frozen=True)
class BudgetConfig:
    """When the campaign stops searching. The first limit reached ends the search phase; the
    finalists are then validated and gated.

    Fields:
        proposals: proposals asked of the proposer (failed ones count: they cost too).
        trials: Optuna trials per candidate; the baseline gets exactly the same number.
        wall_time_s: wall-clock seconds for the whole campaign; the search stops early enough to
            leave ``finalize_reserve_s`` for validation and the gate.
        finalize_reserve_s: seconds kept back from ``wall_time_s`` for validation and the gate,
            at least; more when the speed measured so far says they need more.
        min_proposals: the wall-time budget does not end the search before this many proposals
            were made and evaluated (on a machine much slower than expected, a campaign that
            proposed nothing would be wasted); the other budgets still apply.
        tokens: LLM tokens (prompt + completion) the campaign may spend; None = no cap.
        usd: dollars the campaign may spend on the LLM; None = no cap.
    """

    proposals: int = 30
    trials: int = 8
    wall_time_s: float = 800.0
    finalize_reserve_s: float = 90.0
    min_proposals: int = 3
    tokens: int | None = None
    usd: float | None = None


@dataclass(frozen=True)
class SearchConfig:
    """How parents are chosen and candidates filtered.

    Fields:
        islands: independent sub-populations; a parent is drawn from one island (in turn) and
            its child joins that island, so one lineage cannot take over the whole search.
        seeds: reference policies (from ``baselines/``) that start islands beside the baseline.
            They are tuned and scored like proposals, but are never promoted themselves.
        in_flight: proposals requested at once (an LLM answers slowly; evaluation overlaps).
        migration_every: every this many proposals, each island's best is offered to the next
            island as an inspiration and as a possible parent.
        tournament: parents are the best of this many members drawn at random from the island.
        inspirations: other strong archive members shown to the proposer beside the parent.
        screen_threshold: minimum objective on the cascade's cheap stage (relative to the tuned
            baseline, e.g. -0.02 = at most 2 % worse) for a candidate to be tuned.
        finalists: candidates re-ranked on the validation workloads and offered to the gate.
    """

    islands: int = 3
    seeds: tuple[str, ...] = ("least_outstanding",)
    in_flight: int = 2
    migration_every: int = 6
    tournament: int = 3
    inspirations: int = 2
    screen_threshold: float = -0.02
    finalists: int = 3


@dataclass(frozen=True)
class GateConfig:
    """Promotion: the candidate judged at its own claimed capacity, then paired capacity
    comparisons on the held-out instances (``autotuner.gate`` says why each condition exists).

    Fields:
        margin: the one-sided lower confidence bound of the geometric-mean capacity ratio over
            the tuned baseline (and over the promoted policy, if any), minus one, must reach
            this.
        confidence: level of that one-sided bound (0.95: the 5th percentile of the bootstrap).
        bootstrap: bootstrap resamples of the per-instance capacity ratios.
        max_wait_multiple: at its claimed capacity, no request of the candidate may wait for
            its first token longer than this many times its own TTFT deadline (an unfinished
            request counts with its wait until the cut-off). The metrics call such a request
            starved (``slo.starve_multiple``, 10 by default). The fixed-chunk baseline (chunk
            2048) at its own capacity waits at most 5.8 x on the default held-out workloads;
            newest-first scheduling at its claim, 11 to 18 x.
        inversion_tolerance: at its claimed capacity, the share of the candidate's requests
            overtaken while overdue (a later arrival on the same replica served first although
            this request's deadline had passed) may exceed the tuned baseline's share at its
            capacity by at most this, on every held-out instance. First-come-first-served and
            earliest-deadline-first orders make none; newest-first, deferral and shortest-first
            without aging make them as soon as they starve someone.
        tail_tolerance: at its claimed capacity, the candidate's p99 of TTFT over deadline may
            exceed the tuned baseline's p99 at the baseline's capacity by at most this share,
            on every held-out instance (0.0: no worse).
        regression_tolerance: no workload family's geometric-mean capacity ratio over the tuned
            baseline may fall below ``1 - regression_tolerance`` (0.0: every workload >= 0 %).
        reference_margin: the same lower bound against the best tuned reference policy (of
            ``references``) must reach this: a promotion beats what is already known.
        references: reference policies from ``baselines/`` (or paths) the candidate must beat,
            each tuned like the baseline (same trials, same training objective); the one with
            the highest held-out capacity is the bar. Empty: no reference comparison (said in
            the gate's output).
        min_baseline_capacity: a workload on which the tuned baseline's capacity is below this
            (requests/s) is refused when the campaign starts (and by ``autotuner gate``): no
            ratio to a capacity of (nearly) zero means anything.
        capacity_rel_tol: bisection stops when the capacity bracket is this tight (relative).
    """

    margin: float = 0.05
    confidence: float = 0.95
    bootstrap: int = 10000
    max_wait_multiple: float = 10.0
    inversion_tolerance: float = 0.0
    tail_tolerance: float = 0.0
    regression_tolerance: float = 0.0
    reference_margin: float = 0.05
    references: tuple[str, ...] = ("least_outstanding", "power_of_two", "prefix_aware",
                                   "sarathi_shrinking")
    min_baseline_capacity: float = 0.1
    capacity_rel_tol: float = 0.02


@dataclass(frozen=True)
class SandboxConfig:
    """Where untrusted policy code runs.

    Fields:
        backend: ``"auto"`` (strongest available: bubblewrap, Docker, then a plain child process
            with rlimits, which is weaker and said so), or one of ``"bwrap"``, ``"docker"``,
            ``"process"``.
        timeout_s: wall-clock seconds one evaluation may take before it fails.
        memory_mb: memory limit of one evaluation's worker.
    """

    backend: str = "auto"
    timeout_s: float = 300.0
    memory_mb: int = 2048


@dataclass(frozen=True)
class CampaignConfig:
    """One campaign. Sections are TOML tables of the same names.

    Fields:
        name: the campaign's name; its folder is ``<results_dir>/<name>``.
        results_dir: where campaign folders live.
        seed: seeds everything random in the campaign (proposer, Optuna, bootstrap, parent
            choice); the workloads are seeded by the ``[workloads]`` seeds.
        parallelism: evaluations run at once (worker processes); 2 suits a 2-core machine.
    """

    name: str = "default"
    results_dir: str = "results"
    seed: int = 0
    parallelism: int = 2
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    slo: SLOConfig = field(default_factory=SLOConfig)
    workloads: WorkloadsConfig = field(default_factory=WorkloadsConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    proposer: ProposerConfig = field(default_factory=ProposerConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)

    @property
    def campaign_dir(self) -> Path:
        return Path(self.results_dir) / self.name

    def validate(self) -> CampaignConfig:
        """Semantic checks beyond types; returns self so it chains."""
        _validate(self)
        return self


# ------------------------------------------------------------------------------- validation
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


def policy_file(name: str) -> Path:
    """A policy named in a campaign file: a path ending in ``.py``, else a shipped baseline."""
    return Path(name) if Path(name).suffix == ".py" else baseline_path(name)


def _require_policy(name: str, key: str) -> None:
    try:
        path = policy_file(name)
    except FileNotFoundError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    _require(path.is_file(), key, f"no such policy file {name!r}")


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


def _validate(cfg: CampaignConfig) -> None:
    name = cfg.name
    _require(len(name) <= MAX_NAME_CHARS, "name", f"must be at most {MAX_NAME_CHARS} characters")
    _require(bool(name) and all(c.isalnum() or c in "-_." for c in name) and name[0] != ".",
             "name", f"must be letters, digits, '-', '_' or '.', got {name!r}")
    _bounded(cfg.seed, 0, MAX_SEED, "seed")
    _bounded(cfg.parallelism, 1, MAX_PARALLELISM, "parallelism")
    c = cfg.cluster
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
    s = cfg.slo
    _require(s.kind in SLO_KINDS, "slo.kind", f"must be one of {', '.join(SLO_KINDS)}")
    for key in ("ttft_s", "tpot_s", "tbt_s", "starve_multiple"):
        _require(getattr(s, key) > 0, f"slo.{key}", "must be > 0")
    _require(s.ttft_s_per_token >= 0, "slo.ttft_s_per_token", "must be >= 0")
    for key in ("ttft_s", "tpot_s", "tbt_s"):
        _require(getattr(s, key) <= MAX_SLO_S, f"slo.{key}", f"must be at most {MAX_SLO_S:g} s")
    _require(0 < s.share < 1, "slo.share", "must be between 0 and 1")
    _require(0 <= s.warmup < 1, "slo.warmup", "must be in [0, 1)")
    _require(s.max_backlog_growth >= 0, "slo.max_backlog_growth", "must be >= 0")
    w = cfg.workloads
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
    for key in ("train_seeds", "validation_seeds", "heldout_seeds"):
        _validate_seeds(getattr(w, key), f"workloads.{key}")
    splits = [set(w.train_seeds), set(w.validation_seeds), set(w.heldout_seeds)]
    _require(not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2]),
             "workloads", "train, validation and held-out seeds must differ")
    for key in ("train_window", "validation_window", "heldout_window"):
        win = getattr(w, key)
        _require(len(win) == 2 and 0 <= win[0] < win[1] <= 1, f"workloads.{key}",
                 "must be [start, end] fractions with 0 <= start < end <= 1")
    _validate_traces(w, c.spec())
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
    b = cfg.budget
    _bounded(b.proposals, 0, MAX_PROPOSALS, "budget.proposals")
    _bounded(b.trials, 1, MAX_TRIALS, "budget.trials")
    _require(b.wall_time_s > 0, "budget.wall_time_s", "must be > 0")
    _bounded(b.wall_time_s, 0, MAX_WALL_TIME_S, "budget.wall_time_s")
    _bounded(b.finalize_reserve_s, 0, MAX_WALL_TIME_S, "budget.finalize_reserve_s")
    _bounded(b.min_proposals, 0, MAX_PROPOSALS, "budget.min_proposals")
    _require(b.tokens is None or b.tokens >= 0, "budget.tokens", "must be >= 0")
    _require(b.usd is None or b.usd >= 0, "budget.usd", "must be >= 0")
    se = cfg.search
    _bounded(se.islands, 1, MAX_SEARCH_WIDTH, "search.islands")
    _bounded(se.in_flight, 1, MAX_SEARCH_WIDTH, "search.in_flight")
    _bounded(se.migration_every, 1, MAX_PROPOSALS, "search.migration_every")
    _bounded(se.tournament, 1, MAX_SEARCH_WIDTH, "search.tournament")
    _bounded(se.inspirations, 0, MAX_SEARCH_WIDTH, "search.inspirations")
    _bounded(se.finalists, 1, MAX_FINALISTS, "search.finalists")
    _bounded(se.screen_threshold, -1.0, MAX_LOAD_FACTOR, "search.screen_threshold")
    _require(len(set(se.seeds)) == len(se.seeds), "search.seeds", "lists a policy twice")
    for seed_policy in se.seeds:
        _require_policy(seed_policy, "search.seeds")
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
    _require(cfg.sandbox.backend in ("auto", "bwrap", "docker", "process"),
             "sandbox.backend", "must be 'auto', 'bwrap', 'docker' or 'process'")
    _require(cfg.sandbox.timeout_s > 0, "sandbox.timeout_s", "must be > 0")
    _bounded(cfg.sandbox.timeout_s, 0, MAX_TIMEOUT_S, "sandbox.timeout_s")
    _bounded(cfg.sandbox.memory_mb, 64, MAX_MEMORY_MB, "sandbox.memory_mb")


# ------------------------------------------------------------------------------- loading
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " (or left out)"
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}s"
    if origin in (dict, Mapping, collections.abc.Mapping):
        return f"a table of {_type_name(typing.get_args(tp)[1])}s"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; lists become tuples (the dataclasses are
    frozen and hashable). Ints are accepted where floats are expected, never the reverse."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if origin in (dict, Mapping, collections.abc.Mapping):
        if not isinstance(value, Mapping):
            raise bad
        key_tp, value_tp = typing.get_args(tp)
        return {_coerce(k, key_tp, key): _coerce(v, value_tp, f"{key}.{k}")
                for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item,) = typing.get_args(tp)[:1]
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        if not -(2**63) <= value < 2**63:  # TOML integers are 64-bit; so is every store here
            raise ConfigError(f"{key}: {value} does not fit in 64 bits")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):
            raise ConfigError(f"{key}: must be finite, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise bad  # pragma: no cover - an annotation this loader does not know


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if cls is LLMConfig:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{prefix}: expected a table")
        try:
            return LLMConfig.from_mapping(raw)
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{prefix}: {exc}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in known:
            where = f"[{prefix}]" if prefix else "the top level"
            raise ConfigError(f"unknown key {full!r} (known in {where}: {', '.join(known)})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            values[key] = _build(tp, value, full)
        else:
            values[key] = _coerce(value, tp, full)
    return cls(**values)


def config_from_mapping(raw: Mapping[str, Any]) -> CampaignConfig:
    """Build and validate a config from a parsed TOML document."""
    return _build(CampaignConfig, raw, "").validate()


def load_config(path: str | Path | None = None, **overrides: Any) -> CampaignConfig:
    """Read a campaign file (None: all defaults), then apply dotted-key ``overrides``
    (``{"budget.proposals": 4}``), then validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such campaign file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = raw
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = list(value) if isinstance(value, tuple) else value
    try:
        return config_from_mapping(raw)
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from None
        raise


# ------------------------------------------------------------------------------- writing
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass config as nested plain dicts and lists (None values kept)."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        elif isinstance(value, Mapping):
            out[f.name] = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


_INLINE_TABLES = ("prices", "extra_body", "scenario_requests", "heldout_requests")


def dumps(cfg: CampaignConfig) -> str:
    """TOML text that ``load_config`` reads back to an equal config. Unset optional values are
    written as comments, since TOML has no null."""
    lines: list[str] = ["# The campaign config as run (autotuner resume reads it back).", ""]

    def table(name: str, data: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in data.items()
                   if not isinstance(v, Mapping) or k in _INLINE_TABLES}
        subs = {k: v for k, v in data.items() if k not in scalars}
        if name:
            lines.append(f"[{name}]")
        for key, value in scalars.items():
            if value is None:
                lines.append(f"# {key} = (not set)")
            else:
                lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        lines.append("")
        for key, value in subs.items():
            table(f"{name}.{key}" if name else key, value)

    table("", to_dict(cfg))
    return "\n".join(lines).rstrip() + "\n"


def write_config(cfg: CampaignConfig, path: str | Path) -> Path:
    """Write atomically (temp file + rename), so a crash never leaves half a config behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps(cfg), encoding="utf-8")
    tmp.replace(path)
    return path


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its description, parsed from the class docstring's ``Fields:`` section
    (the example file and ``--help`` use it, so the docs live in one place)."""
    doc = cls.__doc__ or ""
    if "Fields:" not in doc:
        return {}
    body = doc.split("Fields:", 1)[1]
    out: dict[str, str] = {}
    current = None
    for line in body.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        head, sep, rest = stripped.partition(":")
        indent = len(line) - len(line.lstrip())
        if sep and head.isidentifier() and indent <= 8:
            current = head
            out[current] = rest.strip()
        elif current:
            out[current] += " " + stripped
    return out
