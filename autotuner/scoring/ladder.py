"""The search's objective: a cheap, smooth stand-in for capacity, paired against the baseline.

For each instance, a policy's goodput summed over a ladder of rates (factors of the tuned
baseline's capacity on that instance) is divided by the tuned baseline's, paired on the same
instance; the objective is the geometric mean of those ratios over instances, minus one. It uses
the gate's yardstick: goodput counts requests meeting the same per-request SLO over the same
window, and a rung whose backlog grows earns nothing (``goodput_of``), so deferring work past the
sustainable rate, which raises goodput at an overloaded rung, does not raise the objective.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autotuner.config import CampaignConfig
from autotuner.scoring.jobs import Instance, Job

# A rung's goodput is credited in full up to the backlog limit, and not at all from this multiple
# of it (linearly in between): a cliff at the limit would make the objective jump on noise (the
# gate applies the limit itself), and a starvation policy's overloaded rungs grow their backlog
# far past it (chat, deferring the longest 7 % at 1.2x the baseline's capacity: ~15 %).
FADE_MULTIPLE = 5.0


def sustained_share(result: Mapping[str, Any]) -> float:
    """How much of a run's goodput the objective credits (see ``FADE_MULTIPLE``). Legacy runs
    and results from before the sustainability test are credited in full."""
    if result.get("slo_kind") == "legacy" or "backlog_growth" not in result:
        return 1.0
    growth, limit = result["backlog_growth"], result.get("backlog_limit") or 0.0
    if growth is None:  # a failed run (infinite growth, stored as null)
        return 0.0
    if growth <= limit:
        return 1.0
    if limit <= 0:
        return 0.0
    return min(1.0, max(0.0, (FADE_MULTIPLE - growth / limit) / (FADE_MULTIPLE - 1.0)))


def goodput_of(result: Mapping[str, Any], kind: str) -> float:
    """A ladder rung's credit: goodput (requests/s or tokens/s meeting the SLO, over the window)
    times ``sustained_share``."""
    good = float(result["goodput_rps" if kind == "requests" else "goodput_tok_s"])
    return good * sustained_share(result)


def ladder_jobs(code: str, params: Mapping[str, Any], instances: Sequence[Instance],
                capacities: Mapping[str, float], cfg: CampaignConfig, name: str = "<policy>"
                ) -> list[Job]:
    """One ``run`` job per instance and ladder rung, at ``factor * capacity[instance]``."""
    return [
        Job(code, dict(params), inst, "run", capacities[inst.label] * f, cfg.cluster, cfg.slo,
            cfg.sandbox, name=name)
        for inst in instances for f in cfg.objective.ladder
    ]


def capacity_jobs(code: str, params: Mapping[str, Any], instances: Sequence[Instance],
                  cfg: CampaignConfig, hints: Mapping[str, float] | None = None,
                  name: str = "<policy>", lengths: Mapping[str, int] | None = None,
                  checked: bool = True) -> list[Job]:
    """One capacity search per instance. ``hints``: first brackets by label; ``lengths``: the
    run length (multiple of the instance's requests) each search starts on, e.g. the one the
    baseline's capacity was found on, so a policy compared with it is judged on runs at least
    as long (``run_lengths``). ``checked``: each capacity checked on longer runs up to
    ``gate.capacity_max_multiple`` (a claim); unchecked where it only places the ladder's rungs
    on the instance's own runs."""
    return [
        Job(code, dict(params), inst, "capacity", (hints or {}).get(inst.label), cfg.cluster,
            cfg.slo, cfg.sandbox, rel_tol=cfg.gate.capacity_rel_tol, name=name,
            max_multiple=cfg.gate.capacity_max_multiple if checked else 1,
            first_multiple=(lengths or {}).get(inst.label, 1))
        for inst in instances
    ]


def run_lengths(results: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """label -> the run length (multiple of its instance's requests) a capacity was found on."""
    return {label: int(res.get("requests_multiple") or 1) for label, res in results.items()}


MIN_RATIO = 0.01


@dataclass(frozen=True)
class LadderScore:
    """The objective on a set of instances, with its evidence."""

    objective: float  # geometric mean over instances of (ladder goodput / reference), minus 1
    per_instance: dict[str, float]
    detail: dict[str, dict[str, Any]]
    error: str | None = None
    rejected_early: bool = False  # staged_ladder stopped before the last instance


def ladder_scores(results: Sequence[Mapping[str, Any]], instances: Sequence[Instance],
                  reference: Mapping[str, Sequence[float]], cfg: CampaignConfig) -> LadderScore:
    """Score ladder results (as ``ladder_jobs`` ordered them) against reference goodputs per
    instance and rung. An error anywhere fails the whole score with that reason.

    Instances are combined as the gate combines capacity ratios, by a geometric mean (a ratio
    below ``MIN_RATIO`` counts as that, so one lost instance weighs heavily but finitely): one
    workload with a large ratio cannot carry the mean."""
    rungs = len(cfg.objective.ladder)
    per: dict[str, float] = {}
    detail: dict[str, dict[str, Any]] = {}
    for n, inst in enumerate(instances):
        chunk = results[n * rungs:(n + 1) * rungs]
        for r in chunk:
            if r.get("error"):
                return LadderScore(-1.0, per, detail, f"{inst.label}: {r['error']}")
        good = [goodput_of(r, cfg.objective.goodput) for r in chunk]
        ref = list(reference[inst.label])
        total_ref = sum(ref)
        per[inst.label] = (sum(good) / total_ref - 1.0) if total_ref > 0 else 0.0
        detail[inst.label] = {
            "goodput": good, "reference": ref,
            "attainment": [r["attainment"] for r in chunk],
            "rates": [r["rate"] for r in chunk],
        }
    return LadderScore(objective_on(per, list(per)), per, detail)


def stage_ends(count: int, first: int = 1) -> list[int]:
    """Successive halving's stages over ``count`` instances: the first ``first``, then twice as
    many each stage, then all (``[1, 2, 4, 5]`` for 5): a candidate rejected after the first
    stage costs a fifth of a full ladder, one rejected after the second two fifths."""
    ends, end = [], max(1, first)
    while end < count:
        ends.append(end)
        end *= 2
    return ends + [count]


def staged_ladder(run: Callable[[list[Job]], Sequence[Mapping[str, Any]]], code: str,
                  params: Mapping[str, Any], instances: Sequence[Instance],
                  capacities: Mapping[str, float], reference: Mapping[str, Sequence[float]],
                  cfg: CampaignConfig, *, reject_below: float | Callable[[int], float],
                  first: int = 1, name: str = "<policy>") -> LadderScore:
    """``ladder_scores`` with cheap early rejection: the ladder runs stage by stage over the
    instances (``stage_ends``), and a candidate whose objective on the instances so far is below
    ``reject_below`` (say -0.2: clearly worse than the baseline; or a function of how many
    instances have run, giving a rival's objective on those same instances less a margin) is not
    run on the rest. Its score is the partial objective with ``rejected_early`` set; a candidate
    that is never below it gets exactly ``ladder_scores`` of the full ladder. ``run`` evaluates
    jobs (an ``Evaluator``'s ``evaluate``): every stage's results are cached jobs, so running the
    full ladder later repeats nothing. The early stages decide on fewer workloads, so a threshold
    well below what is hoped for is what keeps a good candidate that starts badly from being
    lost. The last stage never rejects: a complete score is always the full judgement."""
    bar = reject_below if callable(reject_below) else (lambda end: float(reject_below))
    results: list[Mapping[str, Any]] = []
    start = 0
    score = LadderScore(0.0, {}, {})
    for end in stage_ends(len(instances), first):
        results += run(ladder_jobs(code, params, instances[start:end], capacities, cfg, name))
        score = ladder_scores(results, instances[:end], reference, cfg)
        if score.error:
            return score
        if end < len(instances) and score.objective < bar(end):
            return LadderScore(score.objective, score.per_instance, score.detail,
                               rejected_early=True)
        start = end
    return score


def objective_on(per_instance: Mapping[str, float], labels: Sequence[str]) -> float:
    """The objective (``ladder_scores``' geometric mean, minus one) of known per-instance
    scores, restricted to ``labels``: a rival's score on the instances a staged run has reached
    so far, to compare like with like."""
    ratios = np.maximum(1.0 + np.array([per_instance[k] for k in labels]), MIN_RATIO)
    return float(np.exp(np.log(ratios).mean()) - 1.0) if len(labels) else 0.0
