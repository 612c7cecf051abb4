"""The campaign's settings as frozen records, one per TOML table, each field documented.

Every field has a default, so ``autotuner run`` works with no file at all: an offline proposer, a
realistic cluster (4 replicas of Llama-3-8B on H100), the built-in workload mix, and a budget that
finishes in minutes on two cores. The records are frozen and hashable, so a config can key a cache
and cannot change under a running campaign; a field's docstring entry is the only place its
meaning is written (``campaign.example.toml`` repeats it for readers of the file, and a test keeps
the two in step).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from autotuner.proposers.llm import LLMConfig
from autotuner.sim.engine import ClusterSpec
from autotuner.sim.metrics import SLO

SCENARIO_NAMES = ("chat", "summarize", "multiturn", "bursty", "mixed")


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
            every request, share alone; kept to compare against). Legacy reads none of
            ``ttft_s_per_token``, ``tbt_s``, ``warmup``, ``max_backlog_growth``: setting one with
            it is refused.
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
            and as the cap on a trace window. Changing it while every scenario has a count of its
            own (as by default) and there are no traces would change nothing, so it is refused.
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
            at least; more when the campaign's own measured evaluation costs say the finalists
            it would pick now need more (``campaign.reserve``: their validation runs and
            held-out capacity searches, at the speed of the latest evaluations).
        min_proposals: the wall-time budget does not end the search before this many proposals
            were made and evaluated (on a machine much slower than expected, a campaign that
            proposed nothing would be wasted); the other budgets still apply.
        evaluations: evaluations the baseline, seeds and search may run together (each ladder
            run one, each capacity search one; results taken from the archive's cache count
            nothing); None = no cap. Unlike wall time it does not depend on the machine: a
            campaign with this budget asks for the same proposals on a slow machine as on a fast
            one. Once reached, no proposal is asked for; those already proposed are evaluated in
            full, and the finalists are then validated and gated, whose evaluations are not
            counted against it.
        tokens: LLM tokens (prompt + completion) the campaign may spend; None = no cap.
        usd: dollars the campaign may spend on the LLM; None = no cap.
    """

    proposals: int = 30
    trials: int = 8
    wall_time_s: float = 800.0
    finalize_reserve_s: float = 30.0
    min_proposals: int = 3
    evaluations: int | None = None
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
        early_rejection: successive halving in screening, so a poor candidate costs a
            fraction of a good one: a candidate that passed the cheap stage is run on the other
            training instances at its starting parameters in stages (2, 4, ... then all of
            them), and one whose objective on the instances so far falls below
            ``screen_threshold`` stops there, recorded as rejected early with that partial score.
            One that reaches the last stage is tuned whatever its full score (that full run is
            its first trial, not repeated), so a candidate above the threshold throughout is
            scored exactly as without it. False: the cheap stage alone screens.
        prune_trials: successive halving in tuning too: each trial after a candidate's first
            runs over the training instances in the same stages and is stopped (Optuna's pruned
            state) once it trails the candidate's best complete trial on the same instances by
            more than ``prune_margin``. A partial score never becomes a candidate's training
            score, so no finalist is chosen or gated on one; but a trial that would have been
            the best can be stopped, which changes tuned results: off by default (on the bench's
            small campaign it stopped the chunk size that made a candidate +87 %, leaving +13 %).
        prune_margin: with ``prune_trials``, how far below the best complete trial, on the same
            instances, a trial may fall before it is stopped (0.10: 10 points of objective).
        finalists: candidates re-ranked on the validation workloads and offered to the gate.
    """

    islands: int = 3
    seeds: tuple[str, ...] = ("least_outstanding",)
    in_flight: int = 2
    migration_every: int = 6
    tournament: int = 3
    inspirations: int = 2
    screen_threshold: float = -0.02
    early_rejection: bool = True
    prune_trials: bool = False
    prune_margin: float = 0.10
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
        capacity_max_multiple: a capacity found on an instance is checked on a run twice as
            long (same scenario and seed); a rate the longer run does not hold is searched
            again on it, up to this multiple of the instance's requests (1: no check; trace
            windows are never extended). Near capacity a queue's excursions can outlast a run:
            under bursty arrivals a 6,000-request run reads about 6 % above what 40,000 sustain
            (``autotuner.sim.metrics.search_capacity_settled``).
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
    capacity_max_multiple: int = 4


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
            With the Ray executor the cluster's CPUs decide instead.
        executor: where evaluations run: ``"local"`` (a process pool here) or ``"ray"`` (Ray
            tasks on the cluster at ``RAY_ADDRESS``, else the one ``ray start`` began here).
        optuna_storage: where Optuna's studies live: empty for the campaign folder's
            ``optuna.journal``, or an RDB URL (``sqlite:///path.db``,
            ``postgresql://user@host/db``) that several drivers or a dashboard share. Keep
            passwords out of it (libpq reads ``PGPASSWORD`` or ``~/.pgpass``): the config as
            run is written to the campaign folder.
    """

    name: str = "default"
    results_dir: str = "results"
    seed: int = 0
    parallelism: int = 2
    executor: str = "local"
    optuna_storage: str = ""
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
