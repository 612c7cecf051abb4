"""Optuna tuning: search space from TUNABLES, seeded TPE, starting points, durable resume."""

from __future__ import annotations

import math

import optuna
import pytest

from autotuner.policy import Tunable
from autotuner.tune import (
    distributions,
    load_result,
    open_storage,
    repair_journal,
    starting_points,
    tune,
)

TUNABLES = (
    Tunable("chunk", "int", 32, 8192, 512, log=True),
    Tunable("weight", "float", 0.0, 4.0, 1.0),
)


def quadratic(calls: list[dict]):
    """Best at chunk=2048, weight=2.5."""

    def objective(params):
        calls.append(dict(params))
        return -((math.log2(params["chunk"]) - 11) ** 2) - (params["weight"] - 2.5) ** 2, None

    return objective


def test_distributions_follow_the_declaration():
    d = distributions(TUNABLES)
    assert isinstance(d["chunk"], optuna.distributions.IntDistribution)
    assert d["chunk"].log and d["chunk"].low == 32 and d["chunk"].high == 8192
    assert isinstance(d["weight"], optuna.distributions.FloatDistribution)
    assert not d["weight"].log


def test_starting_points_parent_first_then_defaults():
    points = starting_points(TUNABLES, {"chunk": 99999, "weight": 3.0, "gone": 1})
    assert points == [{"chunk": 8192, "weight": 3.0}, {"chunk": 512, "weight": 1.0}]
    assert starting_points(TUNABLES, None) == [{"chunk": 512, "weight": 1.0}]


def test_tuning_improves_on_the_start_and_is_deterministic(tmp_path):
    results = []
    for run in range(2):
        storage = open_storage(tmp_path / f"j{run}.journal")
        calls: list[dict] = []
        res = tune(storage=storage, study_name="c0001", tunables=TUNABLES, n_trials=16,
                   objective=quadratic(calls), seed=3, start=[{"chunk": 64, "weight": 0.5}])
        assert calls[0] == {"chunk": 64, "weight": 0.5}  # the parent's values first
        assert calls[1] == {"chunk": 512, "weight": 1.0}  # then the file's defaults
        assert len(calls) == 16 and res.trials == 16
        assert res.value == max(v for _, v in res.history)
        assert res.value > quadratic([])(calls[1])[0]
        results.append((calls, res.params))
    assert results[0] == results[1]


def test_resume_continues_without_repeating_finished_trials(tmp_path):
    path = tmp_path / "optuna.journal"
    first: list[dict] = []
    tune(storage=open_storage(path), study_name="s", tunables=TUNABLES, n_trials=4,
         objective=quadratic(first), seed=0)
    second: list[dict] = []
    res = tune(storage=open_storage(path), study_name="s", tunables=TUNABLES, n_trials=10,
               objective=quadratic(second), seed=0)
    assert len(first) == 4 and len(second) == 6 and res.trials == 10
    again: list[dict] = []
    tune(storage=open_storage(path), study_name="s", tunables=TUNABLES, n_trials=10,
         objective=quadratic(again), seed=0)
    assert again == []
    assert load_result(open_storage(path), "s", TUNABLES).trials == 10
    assert load_result(open_storage(path), "nope", TUNABLES) is None


def test_an_interrupted_trial_is_retried_with_its_parameters(tmp_path):
    path = tmp_path / "optuna.journal"
    storage = open_storage(path)
    tune(storage=storage, study_name="s", tunables=TUNABLES, n_trials=2,
         objective=quadratic([]), seed=0)
    study = optuna.load_study(study_name="s", storage=storage)
    dangling = study.ask(distributions(TUNABLES))  # a process killed mid-trial leaves this
    params = dict(dangling.params)
    calls: list[dict] = []
    res = tune(storage=open_storage(path), study_name="s", tunables=TUNABLES, n_trials=4,
               objective=quadratic(calls), seed=0)
    assert calls[0] == params  # re-run first: its simulations would come from the cache
    assert len(calls) == 2 and res.trials == 4  # the interrupted one does not count
    states = [t.state for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1


def test_failed_trials_count_and_keep_their_reason(tmp_path):
    def objective(params):
        if params["weight"] > 2:
            return None, "partition: budget must be >= 0"
        return params["weight"], None

    res = tune(storage=open_storage(tmp_path / "j"), study_name="s", tunables=TUNABLES,
               n_trials=8, objective=objective, seed=1, start=[{"weight": 3.0}])
    assert res.trials == 8
    assert res.failures and res.failures[0] == "partition: budget must be >= 0"
    assert res.value is not None and res.params["weight"] <= 2

    def always_fails(params):
        return None, "boom"

    res = tune(storage=open_storage(tmp_path / "j"), study_name="t", tunables=TUNABLES,
               n_trials=3, objective=always_fails, seed=1)
    assert res.value is None and res.params == {"chunk": 512, "weight": 1.0}
    assert res.failures == ["boom"] * 3


def test_no_tunables_means_one_evaluation(tmp_path):
    calls = []

    def objective(params):
        calls.append(params)
        return 0.5, None

    res = tune(storage=open_storage(tmp_path / "j"), study_name="s", tunables=(), n_trials=8,
               objective=objective)
    assert calls == [{}] and res.value == 0.5 and res.params == {}


def test_should_stop_is_polled_between_trials(tmp_path):
    calls: list[dict] = []
    res = tune(storage=open_storage(tmp_path / "j"), study_name="s", tunables=TUNABLES,
               n_trials=10, objective=quadratic(calls), should_stop=lambda: len(calls) >= 3)
    assert len(calls) == 3 and res.trials == 3


def test_repair_journal_drops_a_torn_line_and_a_stale_lock(tmp_path):
    path = tmp_path / "optuna.journal"
    tune(storage=open_storage(path), study_name="s", tunables=TUNABLES, n_trials=2,
         objective=quadratic([]), seed=0)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"op_code": 4, "worker_id": "x", "trial_')
    (tmp_path / "optuna.journal.lock").write_text("")
    repair_journal(path)
    assert path.read_bytes() == whole
    assert not (tmp_path / "optuna.journal.lock").exists()
    res = tune(storage=open_storage(path), study_name="s", tunables=TUNABLES, n_trials=3,
               objective=quadratic([]), seed=0)
    assert res.trials == 3


@pytest.mark.parametrize("n", [1, 3])
def test_small_budgets(tmp_path, n):
    calls: list[dict] = []
    res = tune(storage=open_storage(tmp_path / "j"), study_name="s", tunables=TUNABLES,
               n_trials=n, objective=quadratic(calls))
    assert len(calls) == n == res.trials
