"""One candidate through the pipeline: screened on the cheap workload, then tuned by Optuna on
the training set, each step's outcome archived before the next (a resume continues a candidate
left half-screened or half-tuned). Seeds and proposals go the same way."""

from __future__ import annotations

import time
from typing import Any

from autotuner import archive as A
from autotuner.archive import Candidate
from autotuner.campaign.progress import fmt_gain
from autotuner.campaign.state import CampaignState
from autotuner.policy import PolicyFileError, Tunable, read_policy_source
from autotuner.scoring import ladder_scores
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


def _screen(state: CampaignState, cand: Candidate, tunables: tuple[Tunable, ...],
            t0: float) -> Candidate | None:
    """The candidate at its starting parameters on the screening workload: it goes on to tuning
    (returned, status TUNING) or stops here, failed or screened out (None)."""
    assert state.archive is not None and state.baseline is not None
    cfg = state.cfg
    parent = state.archive.find(cand.parent_id) if cand.parent_id else None
    params0 = starting_points(tunables, parent.params if parent else None)[0]
    state.tick(f"screening {cand.id}")
    screen = state.instances["screen"]
    res = state.ladder(cand.code or "", params0, "screen", state.baseline.caps["train"], cand.id,
                       f"{cand.id}.py", screen)
    score = ladder_scores(res, screen, state.baseline.reference["train"], cfg)
    if score.error:
        cand = state.archive.update(cand.id, status=A.FAILED, failure=score.error,
                                    eval_seconds=time.perf_counter() - t0)
        state.event(cand, f"failed: {score.error}")
        return None
    state.archive.set_scores(cand.id, "screen", {
        k: (v, score.detail[k]) for k, v in score.per_instance.items()})
    if score.objective < cfg.search.screen_threshold:
        cand = state.archive.update(
            cand.id, status=A.SCREENED_OUT, screen_score=score.objective,
            failure=f"screen score {score.objective:+.1%} below threshold "
                    f"{cfg.search.screen_threshold:+.1%}",
            eval_seconds=time.perf_counter() - t0)
        state.event(cand, f"screened out ({fmt_gain(score.objective)} on "
                          f"{', '.join(i.label for i in screen)})")
        return None
    return state.archive.update(cand.id, status=A.TUNING, screen_score=score.objective)


def _tune(state: CampaignState, cand: Candidate, tunables: tuple[Tunable, ...],
          t0: float) -> None:
    """Optuna's trials on the training set (resumable: the study is in the journal), then the
    best parameters' scores archived."""
    assert state.archive is not None and state.baseline is not None
    cfg = state.cfg
    caps, ref = state.baseline.caps["train"], state.baseline.reference["train"]
    code, name = cand.code or "", f"{cand.id}.py"
    parent = state.archive.find(cand.parent_id) if cand.parent_id else None

    def objective(params: dict[str, Any]) -> tuple[float | None, str | None]:
        res = state.ladder(code, params, "train", caps, cand.id, name)
        score = ladder_scores(res, state.instances["train"], ref, cfg)
        return (None, score.error) if score.error else (score.objective, None)

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
    state.event(cand, f"tuned: {fmt_gain(result.value)} on training "
                      f"({result.trials} trials, {seconds:.0f} s) {result.params}")
    state.save_elapsed()

