"""Projecting a policy onto an engine's knobs: what every target shares.

A target can express a few rules (a constant token budget with a per-request prefill cap, a
routing rule with a handful of thresholds or weights). Each rule is written here once, as the
text of a policy file in our own format, with its knobs as module constants; the same text is
executed here (our own code, trusted) to ask the rule what it would have chosen in each state the
probe observed, and is what the projection's policy file contains, so the re-simulated
projection is exactly the rule that was fitted. Knobs are fitted by agreement with the policy's
own decisions (``probe.Observations``): the most common budget, the cap seen where a prompt was
cut short with room left, and, for routing, the grid point whose rule picks the replica the
policy picked most often in the same state.
"""

from __future__ import annotations

import itertools
import re
import statistics
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autotuner.export.probe import Observations

FIT_ROUTES = 2000  # route samples a grid point is scored on (the first ones observed)


@dataclass(frozen=True)
class Alternative:
    """Another deployable form of the same target, re-simulated beside the main projection
    (vLLM's ``--scheduler-cls`` module beside its flags)."""

    label: str
    policy_code: str
    policy_params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Projection:
    """One target's closest configuration and its re-simulatable stand-in.

    files: file name -> text, written under the target's folder. policy_code/policy_params: the
    projection as a policy file of our own format (what is re-simulated). lost: one line per
    decision of the policy the target cannot express. fit: how each knob was chosen."""

    target: str
    label: str  # "vLLM knobs", as the survival line names it
    knobs: Mapping[str, Any]
    files: Mapping[str, str]
    policy_code: str
    policy_params: Mapping[str, Any] = field(default_factory=dict)
    lost: tuple[str, ...] = ()
    fit: tuple[str, ...] = ()
    alternatives: tuple[Alternative, ...] = ()


@dataclass(frozen=True)
class Subject:
    """The policy being exported: its file text, its tuned parameters, where it came from."""

    name: str  # "c0012" or the file's stem
    code: str
    params: Mapping[str, Any]
    origin: str  # "campaign default, candidate c0012" or the file path


# ----------------------------------------------------------------------------- rules as text
def constants(knobs: Mapping[str, Any]) -> str:
    return "".join(f"{k.upper()} = {v!r}\n" for k, v in knobs.items())


def compile_rule(text: str, knobs: Mapping[str, Any], name: str) -> Callable[..., Any]:
    """A rule's function from its text (our own code, never a policy's)."""
    namespace: dict[str, Any] = {}
    exec(compile(constants(knobs) + text, f"<{name}>", "exec"), namespace)  # noqa: S102
    return namespace[name]


FIXED_BUDGET_PARTITION = '''
def partition(replica, params):
    """A constant budget (decodes count against it), then waiting prompts oldest first, each
    chunk at most LONG_PREFILL_TOKEN_THRESHOLD tokens when that is set."""
    room = min(MAX_NUM_BATCHED_TOKENS, replica.max_batch_tokens) - replica.decodes
    kv_room = replica.kv_free_tokens
    chunks = []
    for req in replica.waiting:
        take = min(req.remaining, room, kv_room)
        if LONG_PREFILL_TOKEN_THRESHOLD > 0:
            take = min(take, LONG_PREFILL_TOKEN_THRESHOLD)
        if take <= 0:
            break
        chunks.append((req.id, take))
        room -= take
        kv_room -= take
    return (MAX_NUM_BATCHED_TOKENS, tuple(chunks))
'''

PREFILL_CHUNK_PARTITION = '''
def partition(replica, params):
    """Decodes run beside at most CHUNKED_PREFILL_SIZE prefill tokens (the budget does not count
    them), waiting prompts oldest first."""
    room = min(CHUNKED_PREFILL_SIZE, replica.max_batch_tokens - replica.decodes)
    kv_room = replica.kv_free_tokens
    chunks = []
    for req in replica.waiting:
        take = min(req.remaining, room, kv_room)
        if take <= 0:
            break
        chunks.append((req.id, take))
        room -= take
        kv_room -= take
    return (replica.decodes + CHUNKED_PREFILL_SIZE, tuple(chunks))
'''

SCHEDULER_STEP_PARTITION = '''
def partition(replica, params):
    """What the vLLM --scheduler-cls module does with the policy's answer each step: its budget
    (at most MAX_NUM_BATCHED_TOKENS, the engine's flag) and its largest chunk as the step's
    per-request cap, then vLLM's own first-come-first-served fill."""
    budget, asked = _policy_partition(replica, params)
    cap = 0
    for pair in asked:
        cap = max(cap, pair[1])
    budget = max(1, min(int(budget), MAX_NUM_BATCHED_TOKENS, replica.max_batch_tokens))
    room = budget - replica.decodes
    kv_room = replica.kv_free_tokens
    chunks = []
    for req in replica.waiting:
        take = min(req.remaining, room, kv_room)
        if cap > 0:
            take = min(take, cap)
        if take <= 0:
            break
        chunks.append((req.id, take))
        room -= take
        kv_room -= take
    return (budget, tuple(chunks))
'''

ROUND_ROBIN = '''
def route(request, cluster, params):
    return request.id % len(cluster.replicas)
'''

LEAST_OUTSTANDING = '''
def route(request, cluster, params):
    best = min(cluster.replicas, key=lambda r: (r.outstanding, r.waiting_tokens, r.replica))
    return best.replica
'''


# ----------------------------------------------------------------------------- fitting
def agreement(rule: Callable[..., Any], obs: Observations) -> float:
    """Share of the observed route decisions the rule makes the same way in the same state."""
    samples = obs.routes[:FIT_ROUTES]
    if not samples:
        return 1.0
    same = sum(1 for s in samples if rule(s.request, s.cluster, {}) == s.chosen)
    return same / len(samples)


def best_rule(text: str, name: str, grid: Mapping[str, Sequence[Any]], obs: Observations
              ) -> tuple[dict[str, Any], float]:
    """The grid point (knob values) whose rule agrees most with the policy; the first listed
    wins ties, so each grid lists the engine's documented default first."""
    best: tuple[dict[str, Any], float] | None = None
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        knobs = dict(zip(keys, values, strict=True))
        score = agreement(compile_rule(text, knobs, name), obs)
        if best is None or score > best[1] + 1e-12:
            best = (knobs, score)
    assert best is not None
    return best


def routing_lines(obs: Observations, label: str, share: float) -> list[str]:
    """The line for routing decisions the chosen rule does not reproduce."""
    if "route" not in obs.defines:
        return []
    if share >= 0.999:
        return []
    return [f"route(): {label} picks the policy's replica for {share:.0%} of "
            f"{min(len(obs.routes), FIT_ROUTES)} observed arrivals; the rest follow the "
            "policy's own rule, which this target cannot express"]


@dataclass(frozen=True)
class BudgetFit:
    """The constant budget and per-request cap closest to the policy's partitions, and the
    partition decisions a constant budget cannot express."""

    budget: int
    largest: int  # the largest budget observed (what a per-step budget may reach)
    prefill_room: int  # the budget net of decodes, median over iterations that took prefill
    cap: int  # 0: no per-request cap observed
    lost: tuple[str, ...]
    fit: tuple[str, ...]


def fit_budget(obs: Observations, knob: str = "max_num_batched_tokens") -> BudgetFit:
    parts = obs.partitions
    if not parts:
        return BudgetFit(512, 512, 512, 0, (), ("no partition decision was observed",))
    budgets = Counter(p.budget for p in parts)
    budget, count = budgets.most_common(1)[0]
    took = [p for p in parts if p.prefill > 0]
    room = int(statistics.median(p.budget - p.decodes for p in took)) if took else budget
    cuts = [p.cut_with_room for p in took if p.cut_with_room > 0]
    cap = int(statistics.median(cuts)) if took and len(cuts) >= 0.05 * len(took) else 0
    fit = [f"{knob}={budget}: the policy's most common iteration budget ({count / len(parts):.0%}"
           f" of {len(parts)} partition decisions)"]
    if cap:
        fit.append(f"per-request prefill cap {cap}: the median chunk of a prompt cut short while "
                   f"room was left ({len(cuts)} such chunks)")
    lost: list[str] = []
    if "partition" not in obs.defines:
        return BudgetFit(budget, max(budgets), room, cap, (), tuple(fit))
    if len(budgets) > 1:
        qs = sorted(p.budget for p in parts)
        lo, hi = qs[len(qs) // 10], qs[(9 * len(qs)) // 10]
        lost.append(f"partition(): the budget varies per iteration ({lo}..{hi} tokens, p10..p90;"
                    f" {1 - count / len(parts):.0%} of iterations differ from {budget}); the "
                    f"target holds one {knob}")
    reorder = sum(1 for p in took if not p.oldest_first)
    if reorder:
        lost.append(f"partition(): {reorder / max(1, len(took)):.0%} of iterations take waiting "
                    "prompts out of arrival order; the target schedules them first come, first "
                    "served")
    deferred = sum(1 for p in parts if p.deferred)
    if deferred:
        lost.append(f"partition(): {deferred / len(parts):.0%} of iterations leave waiting "
                    "prompts unscheduled with budget and KV room left; the target schedules "
                    "whatever fits")
    if cuts and not cap:
        lost.append(f"partition(): {len(cuts)} chunks cut a prompt short with room left, too "
                    "few and too irregular for a fixed per-request cap")
    return BudgetFit(budget, max(budgets), max(32, room), cap, tuple(lost), tuple(fit))


def with_own(subject: Subject, replaced: Sequence[str], knobs: Mapping[str, Any],
             *functions: str) -> str:
    """The policy's own file with the decision points ``replaced`` renamed ``_policy_<name>``
    (still callable) and ``functions`` appended with ``knobs`` as constants."""
    code = subject.code
    for name in replaced:
        code = re.sub(rf"^def {name}\(", f"def _policy_{name}(", code, flags=re.M)
    return code.rstrip("\n") + "\n\n\n" + constants(knobs) + "\n" + "\n".join(
        f.strip("\n") + "\n\n" for f in functions).rstrip("\n") + "\n"


def projection_file(title: str, subject: Subject, knobs: Mapping[str, Any],
                    partition: str, route: str) -> str:
    """A policy file of our own format: the fitted rules with their knobs as constants."""
    doc = (f'"""{title}: the closest rules the target expresses, fitted to {subject.name} '
           f"({subject.origin}).\n\nWritten by `autotuner export`; re-simulated beside the tuned "
           'baseline to measure how much of the gain survives.\n"""\n\n')
    return doc + "TUNABLES = {}\n\n" + constants(knobs) + "\n" + partition + "\n" + route.lstrip(
        "\n")
