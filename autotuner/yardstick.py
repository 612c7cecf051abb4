"""The yardstick policies: the tuned baseline every score is relative to, and the tuned reference
policies (``gate.references``) a promotion must also beat.

Each is tuned the way a candidate is: Optuna on the training instances, the same trial budget,
the ladder objective against the tuned baseline's goodput. The campaign, ``autotuner gate`` and
the report all tune through here, so "tuned like the baseline" means one thing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotuner import archive as A
from autotuner.config import CampaignConfig, policy_file
from autotuner.gate import PolicyRef, refusal_line, zero_capacity
from autotuner.policy import read_policy_source
from autotuner.scoring import (
    Evaluator,
    Instance,
    capacity_jobs,
    goodput_of,
    ladder_jobs,
    ladder_scores,
)
from autotuner.tune import TuneResult, tune

OnResult = Callable[[int, dict[str, Any]], None]


class YardstickError(RuntimeError):
    """The baseline (or a workload) cannot serve as a yardstick; one line says why."""


@dataclass(frozen=True)
class TunedPolicy:
    """A yardstick policy with its tuned parameters and training objective (0.0 = baseline)."""

    name: str  # file name, e.g. "prefix_aware.py"
    code: str
    params: Mapping[str, Any]
    value: float | None
    by: str  # who tuned it: "the campaign (seed)", "this campaign", "autotuner gate", ...

    def ref(self) -> PolicyRef:
        return PolicyRef(self.name, self.code, dict(self.params))

    @property
    def stem(self) -> str:
        return Path(self.name).stem


@dataclass(frozen=True)
class BaselineTuning:
    """The tuned baseline and the training yardsticks derived from it."""

    policy: TunedPolicy
    caps_default: dict[str, float]  # training capacity at the file's default parameters
    caps: dict[str, float]  # training capacity at the tuned parameters
    goodput: dict[str, list[float]]  # training ladder goodput per instance (tuned)
    trials: int


def reference_names(cfg: CampaignConfig) -> list[str]:
    """``gate.references`` without the baseline itself."""
    base = Path(cfg.objective.baseline).stem
    return [n for n in cfg.gate.references if Path(n).stem != base]


def read_named_policy(name: str) -> tuple[str, str]:
    """(file name, code) of a policy named in the config."""
    path = policy_file(name)
    try:
        return path.name, path.read_text(encoding="utf-8")
    except OSError as exc:
        raise YardstickError(f"{name}: cannot read the policy file {path}: {exc}") from None


def ladder_goodput(results: Sequence[Mapping[str, Any]], instances: Sequence[Instance],
                   cfg: CampaignConfig) -> dict[str, list[float]]:
    """Goodput per instance and ladder rung, from ``ladder_jobs`` results in their order."""
    rungs = len(cfg.objective.ladder)
    return {inst.label: [goodput_of(r, cfg.objective.goodput)
                         for r in results[n * rungs:(n + 1) * rungs]]
            for n, inst in enumerate(instances)}


def capacities(evaluator: Evaluator, cfg: CampaignConfig, policy: PolicyRef,
               instances: Sequence[Instance], candidate_id: str,
               hints: Mapping[str, float] | None = None, who: str = "baseline",
               checked: bool = False) -> dict[str, float]:
    """Capacity per instance; a failure or a (near) zero capacity raises with one line.
    Unchecked (the instances' own runs) where it places the ladder's rungs, which run there;
    ``checked`` on the held-out split, the gate's own jobs (so the gate finds them cached)."""
    results = evaluator.evaluate(capacity_jobs(policy.code, policy.params, instances, cfg, hints,
                                               name=policy.name, checked=checked), candidate_id)
    caps: dict[str, float] = {}
    for inst, res in zip(instances, results, strict=True):
        if res.get("error"):
            raise YardstickError(f"the {who} fails on {inst.label}: {res['error']}")
        caps[inst.label] = float(res.get("capacity") or 0.0)
    if zero := zero_capacity(caps, cfg.gate.min_baseline_capacity):
        raise YardstickError(refusal_line(zero[0], caps[zero[0]], who, cfg))
    return caps


def family_hints(caps: Mapping[str, float], measured: Sequence[Instance],
                 instances: Sequence[Instance]) -> dict[str, float]:
    """Where each of ``instances``' capacity searches starts: the capacity ``caps`` found on an
    instance of the same family (``measured``; their geometric mean if several). On the grid
    the search finds the same rate from any start; from the instance's own rate it climbs five
    doublings on chat before it brackets anything."""
    by_family: dict[str, list[float]] = {}
    for inst in measured:
        if caps.get(inst.label, 0.0) > 0:
            by_family.setdefault(inst.family, []).append(caps[inst.label])
    return {inst.label: math.exp(sum(map(math.log, found)) / len(found))
            for inst in instances if (found := by_family.get(inst.family))}


def tune_against_baseline(
    evaluator: Evaluator, cfg: CampaignConfig, code: str, name: str,
    train: Sequence[Instance], caps: Mapping[str, float], goodput: Mapping[str, Sequence[float]],
    *, storage: Any, study_name: str, candidate_id: str,
    start: Sequence[Mapping[str, Any] | None] = (),
    on_trial: Callable[[int, float | None, str | None], None] | None = None,
    on_result: OnResult | None = None, should_stop: Callable[[], bool] | None = None,
) -> TuneResult:
    """Optuna over the file's tunables; the objective is the ladder goodput on the training
    instances (at the tuned baseline's capacities) relative to ``goodput``."""
    source = read_policy_source(code, name)

    def objective(params: dict[str, Any]) -> tuple[float | None, str | None]:
        res = evaluator.evaluate(ladder_jobs(code, params, train, caps, cfg, name=name),
                                 candidate_id, on_result)
        score = ladder_scores(res, train, goodput, cfg)
        return (None, score.error) if score.error else (score.objective, None)

    return tune(storage=storage, study_name=study_name, tunables=source.tunables,
                n_trials=cfg.budget.trials, objective=objective, seed=cfg.seed, start=start,
                on_trial=on_trial, should_stop=should_stop)


def tune_baseline(evaluator: Evaluator, cfg: CampaignConfig, name: str, code: str,
                  train: Sequence[Instance], storage: Any,
                  tick: Callable[[str], None] = lambda _: None,
                  on_result: OnResult | None = None) -> BaselineTuning:
    """Capacity at the defaults, tuning against the defaults' ladder goodput, then capacity and
    ladder goodput at the tuned parameters (the yardstick every candidate is scored on)."""
    source = read_policy_source(code, name)
    defaults = source.defaults()
    tick(f"baseline: capacity at default parameters {defaults}")
    caps0 = capacities(evaluator, cfg, PolicyRef(name, code, defaults), train, "baseline",
                       who="baseline (at its default parameters)")
    good0 = ladder_goodput(evaluator.evaluate(
        ladder_jobs(code, defaults, train, caps0, cfg, name=name), "baseline", on_result),
        train, cfg)
    tick(f"baseline: tuning {', '.join(t.name for t in source.tunables) or '-'} "
         f"({cfg.budget.trials} trials)")
    result = tune_against_baseline(
        evaluator, cfg, code, name, train, caps0, good0, storage=storage,
        study_name="baseline", candidate_id="baseline", on_result=on_result,
        on_trial=lambda n, v, e: tick(f"baseline: trial {n}/{cfg.budget.trials}"))
    if result.value is None:
        raise YardstickError("every tuning trial of the baseline failed: "
                             + (result.failures[0] if result.failures else "?"))
    tick("baseline: capacity at tuned parameters")
    caps = capacities(evaluator, cfg, PolicyRef(name, code, result.params), train, "baseline",
                      caps0, who="tuned baseline")
    good = ladder_goodput(evaluator.evaluate(
        ladder_jobs(code, result.params, train, caps, cfg, name=name), "baseline", on_result),
        train, cfg)
    return BaselineTuning(TunedPolicy(name, code, dict(result.params), 0.0, "tuning"), caps0,
                          caps, good, result.trials)


def tune_reference(evaluator: Evaluator, cfg: CampaignConfig, name: str, code: str,
                   train: Sequence[Instance], caps: Mapping[str, float],
                   goodput: Mapping[str, Sequence[float]], baseline_params: Mapping[str, Any],
                   storage: Any, by: str) -> TunedPolicy:
    """Tune a reference exactly as the campaign tunes a seed (without its screening): the
    file's defaults and the tuned baseline's values (where it declares the same tunables)
    are the first trials."""
    stem = Path(name).stem
    result = tune_against_baseline(
        evaluator, cfg, code, name, train, caps, goodput, storage=storage,
        study_name=f"reference-{stem}", candidate_id=f"reference-{stem}",
        start=[dict(baseline_params)])
    return TunedPolicy(name, code, dict(result.params), result.value, by)


def from_campaign(archive: Any, name: str, code: str) -> TunedPolicy | None:
    """A reference the campaign already tuned: as a seed (an island's founder), or for its
    gate (kept in the archive's meta); None if neither, or if the file changed since."""
    stem = Path(name).stem
    seed = archive.find(f"seed-{stem}")
    if seed is not None and seed.code == code and seed.train_score is not None and \
            seed.status in (A.TUNED, A.FINALIST, A.GATE_FAILED):
        return TunedPolicy(name, code, dict(seed.params), seed.train_score,
                           "the campaign (seed)")
    stored = (archive.get_meta("references", {}) or {}).get(stem)
    if stored and stored.get("code") == code:
        return TunedPolicy(**stored)
    return None


def tuned_references(evaluator: Evaluator, cfg: CampaignConfig, train: Sequence[Instance],
                     baseline: TunedPolicy, caps: Mapping[str, float],
                     goodput: Mapping[str, Sequence[float]], storage: Any, by: str,
                     archive: Any = None, log: Callable[[str], None] = lambda _: None,
                     on_tuned: Callable[[TunedPolicy], None] = lambda _: None
                     ) -> list[TunedPolicy]:
    """``gate.references``, each tuned like the baseline; what ``archive`` (a campaign's)
    already holds is reused rather than tuned again."""
    out = []
    for ref in reference_names(cfg):
        name, code = read_named_policy(ref)
        tuned = from_campaign(archive, name, code) if archive is not None else None
        if tuned is None:
            log(f"tuning reference {Path(name).stem} ({cfg.budget.trials} trials, as the "
                "baseline)")
            tuned = tune_reference(evaluator, cfg, name, code, train, caps, goodput,
                                   baseline.params, storage, by)
            on_tuned(tuned)
        out.append(tuned)
    return out
