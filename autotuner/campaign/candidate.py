"""One candidate through the pipeline: screened on the cheap workload, then tuned by Optuna on
the training set, each step's outcome archived before the next (a resume continues a candidate
left half-screened or half-tuned). Seeds and proposals go the same way."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import optuna

from autotuner import archive as A
from autotuner.archive import Candidate
from autotuner.campaign.progress import fmt_gain
from autotuner.campaign.state import CampaignState
from autotuner.policy import PolicyFileError, Tunable, read_policy_source
from autotuner.scoring import Instance, Job, ladder_scores, objective_on, staged_ladder
from autotuner.tune import starting_points, tune


def process(state: CampaignState, cand: Candidate) -> None:
    """Screen, then tune, one candidate."""
    assert state.archive is not None
    t0 = time.perf_counter()
    try:
        tunables = read_policy_source(cand.code or "", f"{cand.id}.py").tunables
    except PolicyFileError as exc:
        state.archive.update(cand.id, status=A.FAILED, failure=str(exc))
        return
    if cand.status == A.PENDING:
        screened = _screen(state, cand, tunables, t0)
        if screened is None:
            return
        cand = screened
    if cand.status == A.TUNING:
        _tune(state, cand, tunables, t0)


def training_order(state: CampaignState) -> list[Instance]:
    """The training instances in the order a staged trial runs them: those of the cheap
    screening stage first (their results are cached from screening), then the rest."""
    screen, train = state.instances["screen"], state.instances["train"]
    return [i for i in screen if i in train] + [i for i in train if i not in screen]


def screening_order(state: CampaignState) -> list[Instance]:
    """What early rejection runs at the starting parameters: the screening stage, then the
    training instances not already in it."""
    screen = state.instances["screen"]
    return screen + [i for i in state.instances["train"] if i not in screen]


def _screen(state: CampaignState, cand: Candidate, tunables: tuple[Tunable, ...],
            t0: float) -> Candidate | None:
    """The candidate at its starting parameters on the screening workload and, with early
    rejection, on the training instances in stages: it goes on to tuning (returned, status
    TUNING) or stops here, failed, screened out or rejected early (None). The threshold is the
    same at every stage; only the last stage (every training instance) is a full score, and it
    never rejects: tuning may still lift a candidate that starts below the baseline."""
    assert state.archive is not None and state.baseline is not None
    cfg = state.cfg
    parent = state.archive.find(cand.parent_id) if cand.parent_id else None
    params0 = starting_points(tunables, parent.params if parent else None)[0]
    state.tick(f"screening {cand.id}")
    screen = state.instances["screen"]
    staged = screening_order(state) if cfg.search.early_rejection else screen
    score = staged_ladder(
        lambda jobs: _evaluate(state, jobs, cand.id), cand.code or "", params0, staged,
        state.baseline.caps["train"], state.baseline.reference["train"], cfg,
        reject_below=cfg.search.screen_threshold, first=len(screen), name=f"{cand.id}.py")
    if score.error:
        cand = state.archive.update(cand.id, status=A.FAILED, failure=score.error,
                                    eval_seconds=time.perf_counter() - t0)
        state.event(cand, f"failed: {score.error}")
        return None
    state.archive.set_scores(cand.id, "screen", {
        k: (v, score.detail[k]) for k, v in score.per_instance.items()})
    ran = len(score.per_instance)
    if ran <= len(screen) and score.objective < cfg.search.screen_threshold:
        cand = state.archive.update(
            cand.id, status=A.SCREENED_OUT, screen_score=score.objective,
            failure=f"screen score {score.objective:+.1%} below threshold "
                    f"{cfg.search.screen_threshold:+.1%}",
            eval_seconds=time.perf_counter() - t0)
        state.event(cand, f"screened out ({fmt_gain(score.objective)} on "
                          f"{', '.join(i.label for i in screen)})")
        return None
    if score.rejected_early:
        cand = state.archive.update(
            cand.id, status=A.SCREENED_OUT, screen_score=score.objective,
            failure=f"rejected early: partial score {score.objective:+.1%} on {ran} of "
                    f"{len(staged)} instances at its starting parameters, below threshold "
                    f"{cfg.search.screen_threshold:+.1%} (not tuned)",
            eval_seconds=time.perf_counter() - t0)
        state.event(cand, f"rejected early ({fmt_gain(score.objective)} on "
                          f"{', '.join(score.per_instance)}; partial score, not tuned)")
        return None
    # the screen score keeps its meaning (the cheap stage's); the other instances' are stored
    return state.archive.update(cand.id, status=A.TUNING, screen_score=objective_on(
        score.per_instance, [i.label for i in screen]))


def _evaluate(state: CampaignState, jobs: list[Job], candidate_id: str
              ) -> list[dict[str, Any]]:
    assert state.evaluator is not None
    return state.evaluator.evaluate(jobs, candidate_id)


def _tune(state: CampaignState, cand: Candidate, tunables: tuple[Tunable, ...],
          t0: float) -> None:
    """Optuna's trials on the training set (resumable: the study is in the journal), then the
    best parameters' scores archived. With ``search.prune_trials``, a trial runs over the
    training instances in stages and is pruned once it trails the best complete trial so far
    on the same instances by more than the margin (see ``_trial_objective``)."""
    assert state.archive is not None and state.baseline is not None
    cfg = state.cfg
    caps, ref = state.baseline.caps["train"], state.baseline.reference["train"]
    code, name = cand.code or "", f"{cand.id}.py"
    parent = state.archive.find(cand.parent_id) if cand.parent_id else None
    objective = _trial_objective(state, cand, code, name)
    trials = cfg.budget.trials
    state.tick(f"tuning {cand.id}")
    best: list[float] = []

    def on_trial(n: int, value: float | None, error: str | None) -> None:
        if value is not None:
            best[:] = [max(best + [value])]
        state.tick(f"tuning {cand.id}: trial {n}/{trials if tunables else 1}"
                   + (f", best {fmt_gain(best[0])}" if best else ""))

    result = tune(
        storage=state.storage, study_name=cand.id, tunables=tunables, n_trials=trials,
        objective=objective, seed=cfg.seed, start=[parent.params if parent else None],
        on_trial=on_trial,
        should_stop=state.search_over if cand.origin == "proposal" else None,
    )
    seconds = cand.eval_seconds + time.perf_counter() - t0
    if result.value is None:
        reason = result.failures[0] if result.failures else "no trial finished"
        cand = state.archive.update(cand.id, status=A.FAILED, failure=reason,
                                    eval_seconds=seconds)
        state.event(cand, f"failed: {reason}")
        return
    res = state.ladder(code, result.params, "train", caps, cand.id, name)
    score = ladder_scores(res, state.instances["train"], ref, cfg)
    state.archive.set_scores(cand.id, "train", {
        k: (v, score.detail[k]) for k, v in score.per_instance.items()})
    cand = state.archive.update(cand.id, status=A.TUNED, params=result.params,
                                train_score=result.value, eval_seconds=seconds,
                                failure="; ".join(result.failures[:3]))
    pruned = f", {result.pruned} pruned part-way" if result.pruned else ""
    state.event(cand, f"tuned: {fmt_gain(result.value)} on training "
                      f"({result.trials} trials{pruned}, {seconds:.0f} s) {result.params}")
    state.save_elapsed()


def _trial_objective(state: CampaignState, cand: Candidate, code: str, name: str
                     ) -> Callable[[dict[str, Any]], tuple[float | None, str | None]]:
    """One trial's objective on the training set. Without a best complete trial yet (the
    first trial of this session) or without ``prune_trials``, the full ladder; otherwise the
    staged ladder, raising ``optuna.TrialPruned`` when the trial's objective on the instances
    run so far is more than the margin below the best complete trial's on the same ones. A
    pruned trial's value is never reported, so it cannot become the candidate's score."""
    assert state.baseline is not None
    cfg = state.cfg
    caps, ref = state.baseline.caps["train"], state.baseline.reference["train"]
    staged = training_order(state)
    margin = cfg.search.prune_margin if cfg.search.prune_trials else None
    leader: dict[str, Any] = {"value": None, "per_instance": {}}

    def bar(end: int) -> float:
        return objective_on(leader["per_instance"], [i.label for i in staged[:end]]) - margin

    def objective(params: dict[str, Any]) -> tuple[float | None, str | None]:
        if margin is None or leader["value"] is None:
            res = state.ladder(code, params, "train", caps, cand.id, name)
            score = ladder_scores(res, state.instances["train"], ref, cfg)
        else:
            score = staged_ladder(lambda jobs: _evaluate(state, jobs, cand.id), code, params,
                                  staged, caps, ref, cfg, reject_below=bar, name=name)
            if score.rejected_early:
                raise optuna.TrialPruned(
                    f"{score.objective:+.1%} on {len(score.per_instance)} of {len(staged)} "
                    f"training instances, more than {margin:.0%} below the best trial's "
                    f"{bar(len(score.per_instance)) + margin:+.1%} there")
        if score.error:
            return None, score.error
        if leader["value"] is None or score.objective > leader["value"]:
            leader.update(value=score.objective, per_instance=dict(score.per_instance))
        return score.objective, None

    return objective

