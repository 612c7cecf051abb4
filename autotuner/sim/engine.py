"""The cluster simulator: replicas with continuous batching, chunked prefill, a prefix cache, and
recompute preemption, driven by a policy's ``partition`` and ``route`` decisions.

Time advances from event to event: an arrival, or the end of a replica's iteration. An iteration
with prefill waiting asks the policy for a partition (one decision, one validated record). An
iteration with nothing waiting runs every decode, so a run of them is advanced in closed form up to
the next finish, the next arrival, or the point where the KV cache fills: the hot loop does no
per-token Python work.

KV accounting is token-granular: a replica's cache holds ``kv_capacity_tokens`` (whole blocks of
GPU memory), and paged attention's partial last block (under one block per request) is not
modelled. When decodes outgrow the cache, evictable prefix-cache entries go first, then the most
recently arrived running request is preempted and later recomputed, as vLLM and Sarathi-Serve do.
"""

from __future__ import annotations

import heapq
import math
import os
import sysconfig
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from .api import (
    MAX_WAITING_VIEW,
    ClusterView,
    PolicyError,
    ReplicaLoad,
    ReplicaView,
    RequestView,
    WaitingView,
    coerce_partition,
    coerce_route,
)
from .costmodel import CostModel
from .hardware import get_gpu, get_model
from .measured import StepCostModel, StepProfile
from .rangemax import range_max
from .workload import Workload

_WAITING, _DECODING, _DONE = 1, 2, 3
# Replicas are stepped one by one in Python: a thousand is a large fleet (thousands of GPUs);
# more is a typo that would make every simulation crawl.
MAX_REPLICAS = 1024


@dataclass(frozen=True)
class ClusterSpec:
    """A homogeneous cluster of model replicas.

    model, gpu: catalogue names (``autotuner.sim.hardware``); tp: tensor-parallel degree, GPUs per
    replica; replicas: how many replicas the router spreads requests over;
    gpu_memory_utilization: share of GPU memory the server may use (weights + KV), as vLLM's flag;
    block_size: tokens per KV block (capacity is whole blocks); max_batch_tokens: hard cap on the
    tokens of one iteration, whatever the policy asks (vLLM's max_num_batched_tokens);
    max_num_seqs: most requests a replica runs at once, prefilling or decoding (vLLM's flag of
    that name; 0: no limit). A server that serves one request at a time (llama-cpp-python's) is
    1. profile: a measured step-time model of a live engine (``autotuner profile``) that
    replaces the GPU roofline; model and gpu are then labels only.
    """

    model: str = "llama-3-8b"
    gpu: str = "h100"
    tp: int = 1
    replicas: int = 4
    gpu_memory_utilization: float = 0.9
    block_size: int = 16
    max_batch_tokens: int = 16384
    max_num_seqs: int = 0
    profile: StepProfile | None = None

    def __post_init__(self) -> None:
        # A spec crosses the sandbox boundary as asdict() JSON: rebuild the profile record.
        if isinstance(self.profile, dict):
            object.__setattr__(self, "profile", StepProfile(**self.profile))

    def cost_model(self) -> CostModel | StepCostModel:
        if self.tp < 1 or self.replicas < 1:
            raise ValueError("tp and replicas must be at least 1")
        if self.replicas > MAX_REPLICAS:
            raise ValueError(f"replicas must be at most {MAX_REPLICAS:,}, got {self.replicas:,}")
        if self.max_num_seqs < 0:
            raise ValueError(f"max_num_seqs must be >= 0 (0: no limit), got {self.max_num_seqs}")
        if self.profile is not None:
            return StepCostModel(self.profile)
        return CostModel(get_model(self.model), get_gpu(self.gpu), self.tp)

    @property
    def num_gpus(self) -> int:
        return self.tp * self.replicas


# Frames of these trees are the simulator's or the interpreter's, not the policy's.
_NOT_POLICY = tuple({os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
                     *(sysconfig.get_paths()[k] + os.sep for k in ("stdlib", "platstdlib",
                                                                   "purelib", "platlib"))})


def raised(exc: BaseException) -> str:
    """What a policy's exception is called in a PolicyError: its type, its text, and the line
    of the policy's code it came from ("KeyError: 'now'" alone sent a small model looking at
    the wrong line). The line is the deepest frame outside the simulator and the
    interpreter's libraries, so an error inside statistics.mean names the policy's call."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(_NOT_POLICY):
            line = tb.tb_lineno
        tb = tb.tb_next
    where = f" (at line {line})" if line is not None else ""
    return f"raised {type(exc).__name__}: {exc}{where}"


class Policy(Protocol):
    """What the simulator drives. ``autotuner.policy.load_policy`` builds one from a file.

    A policy whose class sets ``reads_views = False`` (a replay of recorded decisions, which
    answers from its log) is asked the same questions in the same order and judged alike, but
    gets a ``Moment`` instead of a ReplicaView and None instead of the ClusterView: building
    views it never reads was a large share of a replay's time.
    """

    def partition(self, replica: ReplicaView) -> Any: ...

    def route(self, request: RequestView, cluster: ClusterView) -> Any: ...


class DecisionLog(Protocol):
    """Where a simulation records its decisions as it takes them, for the trusted replay
    (``autotuner.sim.replay``, which also defines the flat form): ``ints`` grows by one entry per
    decision (a partition as shaped by ``coerce_partition``, before the checks against this
    simulator's state, so that an illegal one is in the log for the replay to refuse; a route
    as checked), and ``flush(decisions)`` is called, with the decisions taken so far, whenever
    ``ints`` holds ``flush_at`` integers or more (it may replace ``ints``)."""

    ints: list[int]
    flush_at: int

    def flush(self, decisions: int) -> None: ...


class Moment(NamedTuple):
    """Where and when a partition is asked for: what a policy that reads no views gets."""

    replica: int  # the replica about to run an iteration
    now: float  # seconds


def _partition_decision(replica: int, now: float) -> str:
    """How a refusal names a partition decision (formatted only when one is refused)."""
    return f"partition(replica {replica} at t={now:.3f}s)"


def _route_decision(request: int, now: float) -> str:
    return f"route(request {request} at t={now:.3f}s)"


@dataclass
class SimResult:
    """Per-request timestamps (NaN where it never happened) and run counters."""

    first_token: np.ndarray
    finish: np.ndarray
    start: np.ndarray  # first time a prefill chunk of it was scheduled (queueing delay ends)
    replica: np.ndarray  # int, -1 if never routed
    preemptions: np.ndarray
    cached_tokens: np.ndarray  # prompt tokens served by the prefix cache, summed over its starts
    end_time: float
    iterations: int
    decode_stretches: int
    policy_calls: int
    busy_time: np.ndarray  # seconds each replica spent running iterations
    # (iteration seconds, decode tokens emitted): one sample per iteration with decodes; a
    # fast-forwarded stretch is one sample at its mean iteration time (durations within it grow
    # linearly), so TBT means are exact and percentiles lose only the spread inside a stretch.
    tbt_samples: tuple[np.ndarray, np.ndarray]
    # Per request, the longest gap between two of its consecutive tokens (seconds; 0 with fewer
    # than two tokens): the longest iteration it decoded through, or the wait from its last token
    # before a preemption to the next one after its recompute. Exact across fast-forwarded
    # stretches, whose longest iteration is their last.
    max_gap: np.ndarray
    # Preemptions of requests that had a first token, in order: (request, time of its last token
    # before, time of its next token after; NaN if it never came). They are waiting time too.
    preempted: tuple[np.ndarray, np.ndarray, np.ndarray]
    refused: np.ndarray  # bool: refused on arrival (a prompt over the replica's KV capacity)
    error: str | None = None
    counters: dict[str, int] = field(default_factory=dict)
    horizon: float = math.inf  # the simulated time the run was cut off at (inf: ran to drain)


class _Replica:
    __slots__ = (
        "idx",
        "wtok",
        "event_seq",
        "waiting",
        "heap",
        "n",
        "ctx_off",
        "steps",
        "kv_used",
        "kv_cap",
        "cache",
        "lru",
        "cache_tokens",
        "pinned_tokens",
        "busy",
        "pending",
        "last_iter",
        "busy_time",
        "running",
        "gaps",
    )

    def __init__(self, idx: int, kv_cap: int):
        self.idx = idx
        self.waiting: list[int] = []  # request ids with prefill left, oldest first
        self.wtok = 0  # their prefill tokens left, in total
        self.event_seq = 0  # the sequence number of this replica's one live event
        self.heap: list[tuple[int, int, int]] = []  # (finishing decode step, request id, epoch)
        self.running: set[int] = set()  # decoding request ids
        self.n = 0  # decoding requests
        self.ctx_off = 0  # sum of (context at join - step at join): context sum = ctx_off + n*steps
        self.steps = 0  # decode iterations run so far
        self.kv_used = 0  # KV tokens owned by requests (not counting shared prefix-cache blocks)
        self.kv_cap = kv_cap
        self.cache: dict[int, int] = {}  # prefix block id -> references by requests
        self.lru: OrderedDict[int, None] = OrderedDict()  # unreferenced blocks, oldest first
        self.cache_tokens = 0  # tokens held by cached blocks, referenced or not
        self.pinned_tokens = 0  # tokens of referenced cached blocks
        self.busy = False
        self.pending: tuple | None = None
        self.last_iter = 0.0
        self.busy_time = 0.0
        self.gaps: list[float] = []  # longest iteration of each completion that had decodes


class _Failure(Exception):
    pass


def simulate(
    cluster: ClusterSpec,
    workload: Workload,
    policy: Policy,
    *,
    horizon: float | None = None,
    cost_model: CostModel | StepCostModel | None = None,
    fast_forward: bool = True,
    log: DecisionLog | None = None,
) -> SimResult:
    """Run ``workload`` on ``cluster`` under ``policy``. Deterministic: same inputs, same result.

    horizon: stop at this simulated time (seconds); requests not finished by then count as
    missed. None runs until all work drains. fast_forward=False steps decode-only iterations one
    at a time: the slow reference that tests and the benchmark compare the closed form against.
    An illegal decision stops the run: the result carries ``error`` (the decision and the rule).
    log: where the run records its decisions for a trusted replay (``DecisionLog``).
    """
    if horizon is not None and not horizon > 0:
        raise ValueError(f"the horizon must be a positive number of seconds, got {horizon!r}")
    sim = _Simulation(cluster, workload, policy, cost_model or cluster.cost_model())
    sim.log = log
    sim.max_stretch = math.inf if fast_forward else 1
    sim.horizon = math.inf if horizon is None else float(horizon)
    return sim.run(sim.horizon)


class _Simulation:
    def __init__(
        self, cluster: ClusterSpec, wl: Workload, policy: Policy, cost: CostModel | StepCostModel
    ):
        self.cluster = cluster
        self.max_seqs = cluster.max_num_seqs  # 0: no limit
        self.max_batch = cluster.max_batch_tokens
        self.wl = wl
        self.policy = policy
        self.views = getattr(policy, "reads_views", True) is not False
        self.log: DecisionLog | None = None
        self.cost = cost
        n = len(wl)
        self.arrival = wl.arrival.tolist()
        self.prompt = wl.prompt.tolist()
        self.output = wl.output.tolist()
        self.prefix = wl.prefix
        self.pbt = wl.prefix_block_tokens
        kv_cap = cost.kv_capacity_tokens(cluster.gpu_memory_utilization, cluster.block_size)
        self.reps = [_Replica(i, kv_cap) for i in range(cluster.replicas)]
        # per-request mutable state, as flat lists (cheaper than objects in the hot loop)
        self.phase = [0] * n
        self.where = [-1] * n
        self.target = self.prompt.copy()  # tokens the prefill must cover
        self.prefilled = [0] * n
        self.hit = [0] * n  # tokens of prefilled served by the cache at this start
        self.generated = [0] * n
        self.own_base = [0] * n  # own KV tokens = own_base + steps, while decoding
        self.ctx_base = [0] * n  # context = ctx_base + steps, while decoding
        self.pins: list[list[int] | None] = [None] * n  # cached block ids this request references
        self.shared = [0] * n  # tokens of those blocks
        self.first_token = [math.nan] * n
        self.finish = [math.nan] * n
        self.start = [math.nan] * n
        self.preempt = [0] * n
        self.cached_total = [0] * n
        self.view_cache: list[WaitingView | None] = [None] * n
        self.coeffs: dict[int, tuple[float, float]] = {}
        self.events: list[tuple[float, int, int]] = []
        self.seq = 0
        self.iterations = 0
        self.stretches = 0
        self.policy_calls = 0
        self.tbt_d: list[float] = []
        self.tbt_n: list[int] = []
        self.counters = {"preemptions": 0, "evicted_blocks": 0, "stalls": 0, "refused_too_long": 0}
        self.max_stretch: float = math.inf
        self.horizon = math.inf
        # Decode spells, for the per-request longest gap: where request i's current spell began
        # in its replica's ``gaps``, and each closed spell as (request, replica, first, end).
        self.spell_lo = [0] * n
        self.spells: list[tuple[int, int, int, int]] = []
        # Preemptions after a first token: request, last token time, next token time (NaN).
        self.pre_req: list[int] = []
        self.pre_at: list[float] = []
        self.pre_back: list[float] = []
        self.open_pre = [-1] * n  # index into pre_* of request i's unresolved preemption
        self.refused = [False] * n

    # ------------------------------------------------------------------ main loop
    def run(self, horizon: float) -> SimResult:
        error = None
        now = 0.0
        try:
            now = self._loop(horizon)
        except PolicyError as exc:
            error = str(exc)
        except _Failure as exc:
            error = str(exc)
        return self._result(now, error)

    def _loop(self, horizon: float) -> float:
        arrival = self.arrival
        events = self.events
        reps = self.reps
        arrive, complete, plan, pop = self._arrive, self._complete, self._plan, heapq.heappop
        inf = math.inf
        nreq = len(arrival)
        nxt = 0
        now = 0.0
        while True:
            t_arr = arrival[nxt] if nxt < nreq else inf
            t_evt = events[0][0] if events else inf
            if t_arr <= t_evt:
                if t_arr == inf or t_arr > horizon:
                    break
                now = t_arr
                arrive(nxt, now)
                nxt += 1
            else:
                if t_evt > horizon:
                    break
                now, seq, r = pop(events)
                rep = reps[r]
                if seq != rep.event_seq:
                    continue  # superseded: its stretch was cut short by an arrival
                if rep.pending is not None:
                    complete(rep, now)
                plan(rep, now)
        return now

    def _push(self, t: float, rep: _Replica) -> None:
        """rep's one live event: at time t (any earlier one of it is superseded)."""
        seq = self.seq = self.seq + 1
        rep.event_seq = seq
        heapq.heappush(self.events, (t, seq, rep.idx))

    def _stretch_progress(self, rep: _Replica, now: float) -> tuple[int, int]:
        """For a replica in a decode stretch at time ``now``: (iterations finished strictly
        before now, iterations until the first boundary at or after now)."""
        _, k, _, _, _, t0, ctx0, a, b = rep.pending
        reach = self._iterations_until(a, b, ctx0, rep.n, now - t0)
        return reach - 1, min(reach, k)

    # ------------------------------------------------------------------ arrivals and routing
    def _arrive(self, i: int, now: float) -> None:
        ids = self.prefix[i] if self.prefix is not None else ()
        view = RequestView(i, now, self.prompt[i], len(ids))
        cluster = ClusterView(now, self._loads(i, ids, now)) if self.views else None
        self.policy_calls += 1
        try:
            raw = self.policy.route(view, cluster)
        except PolicyError:
            raise
        except Exception as exc:  # the policy's own bug: a result, not a crash
            raise PolicyError(_route_decision(i, now), raised(exc)) from None
        try:
            r = coerce_route(raw, len(self.reps), "")
        except PolicyError as exc:
            raise PolicyError(_route_decision(i, now), exc.rule) from None
        log = self.log
        if log is not None:  # DecisionLog's flat form
            log.ints.append(-1 - r)
            if len(log.ints) >= log.flush_at:
                log.flush(self.policy_calls)
        rep = self.reps[r]
        self.where[i] = r
        self._enqueue(rep, i, front=False)
        if not rep.busy:
            rep.busy = True
            self._push(now, rep)
        elif rep.pending is not None and rep.pending[0] == 0 and rep.pending[1] > 1:
            self._cut_stretch(rep, now)

    def _loads(self, i: int, ids: tuple[int, ...], now: float) -> tuple[ReplicaLoad, ...]:
        """Every replica's load as request i, carrying prefix blocks ``ids``, arrives."""
        loads = []
        prompt = self.prompt[i]
        for rep in self.reps:
            waiting = len(rep.waiting)
            n = rep.n
            kv_used = rep.kv_used
            pending = rep.pending
            if pending is not None and pending[0] == 0 and pending[1] > 1:
                kv_used += n * self._stretch_progress(rep, now)[0]
            loads.append(
                ReplicaLoad(
                    rep.idx,
                    n,
                    waiting,
                    rep.wtok,
                    n + waiting,
                    rep.kv_cap - kv_used - rep.pinned_tokens,
                    rep.kv_cap,
                    self._hit_tokens(rep, ids, prompt) if ids else 0,
                )
            )
        return tuple(loads)

    def _cut_stretch(self, rep: _Replica, now: float) -> None:
        """End rep's decode stretch at the first iteration boundary at or after ``now``, so the
        request that just arrived is considered there, exactly as stepping would."""
        _, k, _, d_first, _, t0, ctx0, a, b = rep.pending
        m = self._stretch_progress(rep, now)[1]
        if m >= k:
            return
        dur = m * d_first + b * rep.n * m * (m - 1) * 0.5
        rep.pending = (0, m, dur, d_first, a + b * (ctx0 + (m - 1) * rep.n), t0, ctx0, a, b)
        self._push(t0 + dur, rep)

    def _hit_tokens(self, rep: _Replica, ids: tuple[int, ...], prompt: int) -> int:
        cache = rep.cache
        h = 0
        for b in ids:
            if b not in cache:
                break
            h += 1
        return min(h * self.pbt, prompt - 1)

    def _enqueue(self, rep: _Replica, i: int, front: bool) -> None:
        """Queue request i for prefill on rep, pinning whatever prefix of it rep has cached."""
        if self.target[i] + 1 > rep.kv_cap:
            # It can never fit, as a server refuses a prompt over its KV capacity: it is never
            # served, so it counts as a missed SLO.
            self.phase[i] = _DONE
            self.refused[i] = True
            self.counters["refused_too_long"] += 1
            return
        self.phase[i] = _WAITING
        self.prefilled[i] = 0
        self.hit[i] = 0
        self.view_cache[i] = None
        if self.prefix is not None and rep.cache:
            ids = self.prefix[i]
            tokens = self._hit_tokens(rep, ids, self.target[i])
            if tokens > 0:
                blocks = -(-tokens // self.pbt)
                pins = list(ids[:blocks])
                for b in pins:
                    refs = rep.cache[b]
                    if refs == 0:
                        del rep.lru[b]
                        rep.pinned_tokens += self.pbt
                    rep.cache[b] = refs + 1
                self.pins[i] = pins
                self.shared[i] = blocks * self.pbt
                self.prefilled[i] = self.hit[i] = tokens
                self.cached_total[i] += tokens
        rep.wtok += self.target[i] - self.prefilled[i]
        if front:
            rep.waiting.insert(0, i)
        else:
            rep.waiting.append(i)

    # ------------------------------------------------------------------ planning an iteration
    def _decode_coeffs(self, n: int) -> tuple[float, float]:
        c = self.coeffs.get(n)
        if c is None:
            c = self.coeffs[n] = self.cost.decode_coeffs(n)
        return c

    def _free(self, rep: _Replica) -> int:
        """KV tokens that can be allocated now (unreferenced cache blocks can be evicted)."""
        return rep.kv_cap - rep.kv_used - rep.pinned_tokens

    def _plan(self, rep: _Replica, now: float) -> None:
        rep.pending = None
        # Decodes need one KV token each this iteration; make room or preempt.
        while rep.n and rep.kv_cap - rep.kv_used - rep.pinned_tokens < rep.n:  # _free(rep)
            self._preempt_newest(rep, now)
        if not rep.n and rep.waiting:
            self._unblock_oldest(rep)
        if rep.waiting and (not self.max_seqs or self._schedulable(rep)):
            self._plan_partition(rep, now)
        elif rep.n:
            self._plan_stretch(rep, now)
        else:
            rep.busy = False

    def _plan_partition(self, rep: _Replica, now: float) -> None:
        n = rep.n
        ctx = rep.ctx_off + n * rep.steps
        free = rep.kv_cap - rep.kv_used - rep.pinned_tokens - n
        if self.views:
            view: Any = ReplicaView(
                rep.idx,
                now,
                n,
                ctx,
                self._waiting_views(rep, self._schedulable(rep) if self.max_seqs else rep.waiting),
                len(rep.waiting),
                rep.wtok,
                free,
                rep.kv_cap,
                self.max_batch,
                rep.last_iter,
            )
        else:
            view = Moment(rep.idx, now)
        self.policy_calls += 1
        try:
            raw = self.policy.partition(view)
        except PolicyError:
            raise
        except Exception as exc:
            raise PolicyError(_partition_decision(rep.idx, now), raised(exc)) from None
        try:
            # Checked under a blank name, named only when refused: formatting the name of every
            # decision was a measurable share of a replay.
            chunks, total, pairs = self._check_partition(rep, raw, n, free)
        except PolicyError as exc:
            raise PolicyError(_partition_decision(rep.idx, now), exc.rule) from None
        if not chunks and not n:
            # Nothing to run: idle until the next arrival routed here wakes the replica.
            self.counters["stalls"] += 1
            rep.busy = False
            return
        start = self.start
        for rid, _ in chunks:
            if math.isnan(start[rid]):
                start[rid] = now
        dur = self.cost.iteration_time(total, pairs, n, ctx)
        if rep.cache_tokens + rep.kv_used + total > rep.kv_cap:  # _evict's own test, first
            self._evict(rep, total)
        rep.kv_used += total
        rep.pending = (1, chunks, dur)
        self._push(now + dur, rep)

    def _schedulable(self, rep: _Replica) -> list[int]:
        """Under max_num_seqs: the waiting requests whose prefill has started, then as many
        unstarted ones, oldest first, as the limit leaves room for."""
        started = [i for i in rep.waiting if self.prefilled[i] > self.hit[i]]
        room = self.max_seqs - rep.n - len(started)
        if room <= 0:
            return started
        fresh = [i for i in rep.waiting if self.prefilled[i] <= self.hit[i]][:room]
        return started + fresh if started else fresh

    def _check_partition(
        self, rep: _Replica, raw: Any, n: int, free: int
    ) -> tuple[Any, int, float]:
        """A partition() answer judged against this replica's state, as (chunks, their tokens,
        their attention pairs); a PolicyError with a blank decision name when refused."""
        budget, chunks = coerce_partition(raw, "")
        log = self.log
        if log is not None:  # as shaped, before the checks below: the replay judges it too
            ints = log.ints
            ints.append(budget)
            ints.append(len(chunks))
            for pair in chunks:
                ints += pair
            if len(ints) >= log.flush_at:
                log.flush(self.policy_calls)
        total, pairs = self._validate_chunks(rep, chunks)
        if total and total > budget - n:
            raise PolicyError(
                "", f"chunk tokens {total} exceed the budget {budget} minus {n} decodes"
            )
        max_batch = self.max_batch
        if total + n > max_batch:
            raise PolicyError(
                "", f"{n} decodes + {total} chunk tokens exceed max_batch_tokens {max_batch}"
            )
        if total > free:
            raise PolicyError("", f"chunk tokens {total} exceed the free KV cache ({free} tokens)")
        return chunks, total, pairs

    def _validate_chunks(self, rep: _Replica, chunks: Any) -> tuple[int, float]:
        """Each chunk's request and size checked; (total tokens, attention pairs)."""
        prefilled = self.prefilled
        if self.max_seqs:
            hit = self.hit
            # Only ids of requests the run has: a forged id past them is refused below as not
            # waiting (it raised IndexError here, out of the trusted replay).
            nreq = len(prefilled)
            fresh = sum(1 for rid, _ in chunks if 0 <= rid < nreq and prefilled[rid] <= hit[rid])
            started = sum(1 for i in rep.waiting if prefilled[i] > hit[i])
            if fresh and rep.n + started + fresh > self.max_seqs:
                raise PolicyError(
                    "",
                    f"starting {fresh} more requests would run {rep.n + started + fresh}, "
                    f"over max_num_seqs={self.max_seqs}",
                )
        seen = set()
        total = 0
        pairs = 0.0
        where, phase, target = self.where, self.phase, self.target
        nreq = len(phase)
        idx = rep.idx
        for rid, tokens in chunks:
            if not 0 <= rid < nreq or where[rid] != idx or phase[rid] != _WAITING:
                raise PolicyError("", f"request {rid} is not waiting on this replica")
            if rid in seen:
                raise PolicyError("", f"request {rid} appears in two chunks")
            seen.add(rid)
            done = prefilled[rid]
            left = target[rid] - done
            if not 1 <= tokens <= left:
                raise PolicyError(
                    "", f"chunk of {tokens} tokens for request {rid} (1..{left} allowed)"
                )
            total += tokens
            pairs += tokens * (done + (tokens + 1) * 0.5)
        return total, pairs

    def _waiting_views(self, rep: _Replica, ids: list[int]) -> tuple[WaitingView, ...]:
        views = self.view_cache
        prefilled, target, hit, preempt = self.prefilled, self.target, self.hit, self.preempt
        out = []
        for i in ids[:MAX_WAITING_VIEW] if len(ids) > MAX_WAITING_VIEW else ids:
            v = views[i]
            if v is None:  # changed since its last view (most are: a chunk ran for it)
                p = prefilled[i]
                v = views[i] = WaitingView(
                    i,
                    self.arrival[i],
                    target[i],
                    p,
                    target[i] - p,
                    hit[i],
                    p > hit[i] or preempt[i] > 0,
                    preempt[i],
                )
            out.append(v)
        return tuple(out)

    def _plan_stretch(self, rep: _Replica, now: float) -> None:
        n = rep.n
        a, b = self._decode_coeffs(n)
        ctx0 = rep.ctx_off + n * rep.steps
        heap = rep.heap
        while heap[0][2] != self.preempt[heap[0][1]]:
            heapq.heappop(heap)  # preempted since it was pushed
        k = heap[0][0] - rep.steps  # iterations until the next request finishes
        k = min(k, self._free(rep) // n)  # until the KV cache is full
        k = max(min(k, self.max_stretch), 1)
        first = a + b * ctx0
        dur = k * first + b * n * k * (k - 1) * 0.5
        rep.pending = (0, k, dur, first, a + b * (ctx0 + (k - 1) * n), now, ctx0, a, b)
        self._push(now + dur, rep)

    @staticmethod
    def _iterations_until(a: float, b: float, ctx0: int, n: int, dt: float) -> int:
        """Fewest decode iterations whose total time reaches dt (at least 1)."""
        if dt <= 0:
            return 1
        first = a + b * ctx0
        half = 0.5 * b * n
        if half <= 0:
            return max(1, math.ceil(dt / first))
        lin = first - half
        k = math.ceil((-lin + math.sqrt(lin * lin + 4 * half * dt)) / (2 * half))
        k = max(k, 1)
        # guard against rounding at the boundary
        while k > 1 and (k - 1) * first + half * (k - 1) * (k - 2) >= dt:
            k -= 1
        while k * first + half * k * (k - 1) < dt:
            k += 1
        return k

    # ------------------------------------------------------------------ finishing an iteration
    def _complete(self, rep: _Replica, now: float) -> None:
        pending = rep.pending
        rep.pending = None
        n = rep.n
        stretch = pending[0] == 0
        if stretch:  # a stretch of k decode-only iterations
            _, k, dur, d_first, d_last = pending[:5]
            self.stretches += 1
            self.iterations += k
            steps = rep.steps = rep.steps + k
            rep.kv_used += n * k
            rep.last_iter = d_last
            self.tbt_d.append(0.5 * (d_first + d_last))
            self.tbt_n.append(n * k)
            rep.gaps.append(d_last if d_last > d_first else d_first)
        else:
            _, chunks, dur = pending
            self.iterations += 1
            rep.last_iter = dur
            if n:
                steps = rep.steps = rep.steps + 1
                rep.kv_used += n
                self.tbt_d.append(dur)
                self.tbt_n.append(n)
                rep.gaps.append(dur)
            else:
                steps = rep.steps
        rep.busy_time += dur
        if rep.cache_tokens + rep.kv_used > rep.kv_cap:
            self._evict(rep, 0)
        heap = rep.heap
        if heap and heap[0][0] <= steps:
            preempt = self.preempt
            while heap and heap[0][0] <= steps:
                _, i, epoch = heapq.heappop(heap)
                if epoch == preempt[i]:  # else it was preempted since: a stale entry
                    self._retire(rep, i, now)
        if not stretch:
            prefilled, target, view_cache = self.prefilled, self.target, self.view_cache
            for rid, tokens in chunks:
                rep.wtok -= tokens
                done = prefilled[rid] = prefilled[rid] + tokens
                view_cache[rid] = None
                if done == target[rid]:
                    self._join_decode(rep, rid, now)

    def _join_decode(self, rep: _Replica, i: int, now: float) -> None:
        rep.waiting.remove(i)
        if math.isnan(self.first_token[i]):
            self.first_token[i] = now
        elif self.open_pre[i] >= 0:
            self.pre_back[self.open_pre[i]] = now  # its next token, after the recompute
            self.open_pre[i] = -1
        self.generated[i] += 1  # the prefill's last position yields a token
        self._insert_prefix(rep, i)
        left = self.output[i] - self.generated[i]
        ctx = self.target[i]
        own = ctx - self.shared[i]
        if left <= 0:
            rep.kv_used -= own
            self._unpin(rep, i)
            self.phase[i] = _DONE
            self.finish[i] = now
            return
        self.phase[i] = _DECODING
        self.spell_lo[i] = len(rep.gaps)
        steps = rep.steps
        self.ctx_base[i] = ctx - steps
        self.own_base[i] = own - steps
        rep.ctx_off += ctx - steps
        rep.n += 1
        rep.running.add(i)
        heapq.heappush(rep.heap, (steps + left, i, self.preempt[i]))

    def _leave_decode(self, rep: _Replica, i: int) -> None:
        self.spells.append((i, rep.idx, self.spell_lo[i], len(rep.gaps)))
        rep.n -= 1
        rep.running.discard(i)
        rep.ctx_off -= self.ctx_base[i]
        rep.kv_used -= self.own_base[i] + rep.steps
        self._unpin(rep, i)

    def _retire(self, rep: _Replica, i: int, now: float) -> None:
        self._leave_decode(rep, i)
        self.generated[i] = self.output[i]
        self.phase[i] = _DONE
        self.finish[i] = now

    def _preempt_newest(self, rep: _Replica, now: float) -> None:
        """Free the KV of the most recently arrived decoding request; it is recomputed later."""
        i = max(rep.running)
        joined_at = self.target[i] - self.ctx_base[i]
        self.generated[i] += rep.steps - joined_at
        self._leave_decode(rep, i)
        self.preempt[i] += 1
        self.counters["preemptions"] += 1
        self.open_pre[i] = len(self.pre_req)
        self.pre_req.append(i)
        self.pre_at.append(now)
        self.pre_back.append(math.nan)
        # recompute: the prefill now covers the prompt and every token generated so far
        self.target[i] = self.prompt[i] + self.generated[i]
        self._enqueue(rep, i, front=True)

    def _unblock_oldest(self, rep: _Replica) -> None:
        """With nothing decoding, partial prefills could hold all the KV and wait on each other
        forever. Release the newest ones until the oldest waiting request can finish its prefill.
        """
        head = rep.waiting[0]
        need = self.target[head] - self.prefilled[head]
        for j in reversed(rep.waiting[1:]):
            if self._free(rep) >= need:
                return
            own = self.prefilled[j] - self.hit[j]
            if own > 0:
                rep.kv_used -= own
                rep.wtok += own
                self._unpin(rep, j)
                self.preempt[j] += 1
                self.counters["preemptions"] += 1
                self.prefilled[j] = self.hit[j] = 0
                self.view_cache[j] = None

    # ------------------------------------------------------------------ prefix cache
    def _insert_prefix(self, rep: _Replica, i: int) -> None:
        """After a prefill, its full prefix blocks become shared cache entries it references."""
        if self.prefix is None:
            return
        ids = self.prefix[i]
        full = min(len(ids), self.prompt[i] // self.pbt)
        pins = self.pins[i] or []
        cache = rep.cache
        added = 0
        for b in ids[len(pins) : full]:
            if b in cache:
                continue  # another request cached an identical block meanwhile; keep our copy
            cache[b] = 1
            pins.append(b)
            added += self.pbt
        if added:
            self.pins[i] = pins
            self.shared[i] += added
            rep.cache_tokens += added
            rep.pinned_tokens += added
            rep.kv_used -= added

    def _unpin(self, rep: _Replica, i: int) -> None:
        pins = self.pins[i]
        if not pins:
            return
        cache, lru = rep.cache, rep.lru
        for b in pins:
            refs = cache[b] - 1
            cache[b] = refs
            if refs == 0:
                lru[b] = None
                rep.pinned_tokens -= self.pbt
        self.pins[i] = None
        self.shared[i] = 0

    def _evict(self, rep: _Replica, need: int) -> None:
        """Drop unreferenced cached blocks, oldest first, until ``need`` more tokens fit."""
        lru, cache = rep.lru, rep.cache
        while rep.cache_tokens + rep.kv_used + need > rep.kv_cap and lru:
            b, _ = lru.popitem(last=False)
            del cache[b]
            rep.cache_tokens -= self.pbt
            self.counters["evicted_blocks"] += 1

    # ------------------------------------------------------------------ result
    def _max_gaps(self) -> np.ndarray:
        """Per request, the longest iteration of any decode spell (open spells end at the cut-off)
        and the longest preemption gap: one vectorised range-max query per spell."""
        spells = list(self.spells)
        for rep in self.reps:
            spells += [(i, rep.idx, self.spell_lo[i], len(rep.gaps)) for i in rep.running]
        out = np.zeros(len(self.arrival))
        if spells:
            req, rid, lo, hi = (np.array(col, dtype=np.int64) for col in zip(*spells, strict=True))
            for rep in self.reps:
                pick = rid == rep.idx
                if pick.any() and rep.gaps:
                    longest = range_max(np.array(rep.gaps), lo[pick], hi[pick], empty=0.0)
                    np.maximum.at(out, req[pick], longest)
        back = np.array(self.pre_back, dtype=np.float64)
        done = ~np.isnan(back)
        if done.any():
            req = np.array(self.pre_req, dtype=np.int64)[done]
            np.maximum.at(out, req, back[done] - np.array(self.pre_at)[done])
        return out

    def _result(self, now: float, error: str | None) -> SimResult:
        return SimResult(
            first_token=np.array(self.first_token, dtype=np.float64),
            finish=np.array(self.finish, dtype=np.float64),
            start=np.array(self.start, dtype=np.float64),
            replica=np.array(self.where, dtype=np.int64),
            preemptions=np.array(self.preempt, dtype=np.int64),
            cached_tokens=np.array(self.cached_total, dtype=np.int64),
            end_time=now,
            iterations=self.iterations,
            decode_stretches=self.stretches,
            policy_calls=self.policy_calls,
            busy_time=np.array([r.busy_time for r in self.reps]),
            tbt_samples=(np.array(self.tbt_d), np.array(self.tbt_n, dtype=np.int64)),
            max_gap=self._max_gaps(),
            preempted=(np.array(self.pre_req, dtype=np.int64),
                       np.array(self.pre_at, dtype=np.float64),
                       np.array(self.pre_back, dtype=np.float64)),
            refused=np.array(self.refused, dtype=bool),
            error=error,
            counters=dict(self.counters),
            horizon=self.horizon,
        )
