"""What a policy decides, observed: the evidence every target's projection is fitted to.

A policy is a black box of Python; an engine takes a handful of knobs. To choose the knobs that
come closest, the policy runs once on one held-out instance of each workload family, at the
tuned baseline's capacity there (a load where decisions matter), and each decision the trusted
replay accepts is read beside the view it answered: every partition as a few numbers (its
budget, its prefill tokens, whether it took waiting requests oldest first, where it cut a prompt
short while room was left), and the first route calls whole (request and cluster view, and the
replica chosen; ``MAX_ROUTES`` shared between the runs), so that each target's routing rule can
be asked what it would have chosen in the very same state.

The policy runs in the sandbox (``autotuner.evaluate`` with its ``observe`` hook); only tests
pass ``trusted=True`` for the shipped files, as ``scoring.in_process`` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autotuner.sim.api import (
    ClusterView,
    PolicyError,
    ReplicaView,
    RequestView,
    coerce_partition,
    coerce_route,
)

MAX_ROUTES = 4000  # route decisions kept whole: enough to rank a rule, bounded in memory


class ProbeError(RuntimeError):
    """The policy could not be observed (it failed on the probe workload); one line says why."""


@dataclass(frozen=True)
class PartitionSample:
    """One partition decision, reduced to what an engine's knobs can be compared with.

    cut_with_room: tokens given to a prompt cut short while budget and KV room were left (a
    per-request cap, as vLLM's long_prefill_token_threshold is); 0 when no such cut."""

    budget: int
    decodes: int
    prefill: int
    waiting: int
    oldest_first: bool
    cut_with_room: int
    deferred: bool  # prefill waiting, room left, and nothing taken


@dataclass(frozen=True)
class RouteSample:
    request: RequestView
    cluster: ClusterView
    chosen: int


@dataclass(frozen=True)
class Observations:
    """The probe's record: partition samples (all), route samples (the first of each run)."""

    where: str  # "multiturn@1001 at 1.98 req/s, ..."
    partitions: tuple[PartitionSample, ...]
    routes: tuple[RouteSample, ...]
    defines: frozenset[str] = field(default_factory=frozenset)


def _partition_sample(view: ReplicaView, answer: Any) -> PartitionSample | None:
    try:
        budget, chunks = coerce_partition(answer, "probe")
    except PolicyError:
        return None  # the simulator refuses it itself, with the reason
    prefill = sum(t for _, t in chunks)
    ids = [rid for rid, _ in chunks]
    oldest = [w.id for w in view.waiting[:len(ids)]]
    room = min(budget, view.max_batch_tokens) - view.decodes - prefill
    kv_room = view.kv_free_tokens - prefill
    remaining = {w.id: w.remaining for w in view.waiting}
    cut = [t for rid, t in chunks if t < remaining.get(rid, 0)]
    cut_with_room = max(cut) if cut and room > 0 and kv_room > 0 else 0
    deferred = not chunks and view.waiting_count > 0 and room > 0 and view.kv_free_tokens > 0
    return PartitionSample(budget, view.decodes, prefill, view.waiting_count, ids == oldest,
                           cut_with_room, deferred)


class ObservingPolicy:
    """Wraps the policy the simulator asks; records each answer, returns it unchanged."""

    def __init__(self, policy: Any, max_routes: int = MAX_ROUTES):
        self.policy = policy
        self.max_routes = max_routes
        self.partitions: list[PartitionSample] = []
        self.routes: list[RouteSample] = []

    def partition(self, view: ReplicaView) -> Any:
        answer = self.policy.partition(view)
        sample = _partition_sample(view, answer)
        if sample is not None:
            self.partitions.append(sample)
        return answer

    def route(self, request: RequestView, cluster: ClusterView) -> Any:
        answer = self.policy.route(request, cluster)
        if len(self.routes) < self.max_routes:
            try:
                chosen = coerce_route(answer, len(cluster.replicas), "probe")
            except PolicyError:
                return answer
            self.routes.append(RouteSample(request, cluster, chosen))
        return answer


def observe_policy(code: str, params: Mapping[str, Any], cfg: Any,
                   runs: Sequence[tuple[Any, float]], name: str, trusted: bool = False
                   ) -> Observations:
    """The policy observed decision by decision, one run per (instance, rate in req/s) of
    ``runs``. ``cfg``: the campaign's config (cluster, SLO, sandbox)."""
    from autotuner.policy import read_policy_source

    source = read_policy_source(code, name)
    partitions: list[PartitionSample] = []
    routes: list[RouteSample] = []
    for instance, rate in runs:
        seen = _observe_run(code, params, cfg, instance, rate, name, trusted,
                            max(1, MAX_ROUTES // len(runs)))
        partitions += seen.partitions
        routes += seen.routes
    where = ", ".join(f"{inst.label} at {rate:.3g} req/s" for inst, rate in runs)
    return Observations(where, tuple(partitions), tuple(routes), frozenset(source.defines))


def _observe_run(code: str, params: Mapping[str, Any], cfg: Any, instance: Any, rate: float,
                 name: str, trusted: bool, max_routes: int) -> ObservingPolicy:
    from autotuner.policy import read_policy_source
    from autotuner.scoring import build_workload, horizon_for

    wl = build_workload(instance).with_rate(rate)
    slo = cfg.slo.slo()
    cluster = cfg.cluster.spec()
    holder: list[ObservingPolicy] = []

    def wrap(policy: Any) -> ObservingPolicy:
        holder.append(ObservingPolicy(policy, max_routes))
        return holder[-1]

    if trusted:
        from autotuner.policy import load_policy
        from autotuner.sim.engine import simulate

        result = simulate(cluster, wl, wrap(load_policy(read_policy_source(code, name), params)),
                          horizon=horizon_for(wl, slo))
        error = result.error
    else:
        from autotuner.evaluate import evaluate
        from autotuner.scoring.evaluator import sandbox_backend, sandbox_limits

        ev = evaluate(code, name=name, params=params, cluster=cluster, workload=wl, slo=slo,
                      horizon=horizon_for(wl, slo), sandbox=sandbox_backend(cfg.sandbox.backend),
                      limits=sandbox_limits(cfg.sandbox), observe=wrap)
        error = None if ev.ok else "; ".join(ev.reasons) or ev.verdict
    if error or not holder:
        raise ProbeError(f"{name} fails on the probe workload {instance.label}: {error}")
    return holder[-1]
