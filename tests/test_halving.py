"""Successive halving in the campaign (early rejection in screening, pruned tuning trials) and
the evaluation budget, on small deterministic campaigns.

The simulator is the in-process one with a marked candidate's goodput scaled on one scenario
(``# scaled on <scenario> by <factor>``): a way to make a candidate good on the screening stage
and poor (or great) elsewhere without relying on what some real policy happens to do there.
"""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import optuna
import pytest

from autotuner import archive as A
from autotuner.archive import Archive
from autotuner.campaign import Campaign
from autotuner.config import load_config
from autotuner.proposers.base import Proposal
from autotuner.resources import baseline_path
from autotuner.review.show import show_text
from autotuner.scoring import in_process, ladder_scores, split_instances

FIXED = baseline_path("fixed_chunk").read_text()
MARK = re.compile(r"# scaled on (\w+) by ([0-9.]+)")

SMALL = {
    "workloads.scenarios": ["multiturn", "summarize", "chat"], "workloads.screen": ["multiturn"],
    "workloads.requests": 150, "workloads.scenario_requests": {},
    "workloads.heldout_requests": {}, "workloads.heldout_seeds": [1001, 1002],
    "objective.ladder": [1.0, 1.4], "budget.trials": 3, "budget.proposals": 2,
    "search.seeds": [], "search.islands": 1, "search.finalists": 1, "gate.bootstrap": 500,
    "gate.capacity_rel_tol": 0.05, "gate.references": [], "parallelism": 1,
    "search.in_flight": 1,
}


def scaled(code, params, cluster, wl, slo, horizon, sandbox, name):
    """``in_process``, with a marked file's goodput scaled on its scenario."""
    metrics = in_process(code, params, cluster, wl, slo, horizon, sandbox, name)
    for mark in MARK.finditer(code):
        if wl.name == mark.group(1) and not metrics.error:
            k = float(mark.group(2))
            metrics = dataclasses.replace(metrics, goodput_rps=metrics.goodput_rps * k,
                                          goodput_tok_s=metrics.goodput_tok_s * k)
    return metrics


class Scripted:
    name = "scripted"

    def __init__(self, codes):
        self.codes = list(codes)

    def propose(self, request, check):
        return Proposal(self.codes.pop(0), True, "") if self.codes else \
            Proposal(None, False, "no more")


def campaign(tmp_path: Path, name: str, codes, **extra) -> tuple[Path, str]:
    cfg = load_config(**{**SMALL, "results_dir": str(tmp_path / "results"), "name": name,
                         **extra})
    out = io.StringIO()
    rc = Campaign(cfg, proposer=Scripted(codes), simulator=scaled, stream=out, tty=False).run()
    assert rc == 0, out.getvalue()
    return cfg.campaign_dir, out.getvalue()


def labels_run(archive: Archive, cand_id: str) -> set[str]:
    rows = archive.conn.execute("SELECT DISTINCT workload FROM evaluations WHERE candidate_id=?",
                                (cand_id,)).fetchall()
    return {r[0] for r in rows}


def marked(text: str) -> str:
    """The baseline's program, behaving the same, with a module constant that it reads: a
    program of its own (an unread constant would make it a copy of the baseline, refused)."""
    code = FIXED.replace("TUNABLES = {", f"NOTE = {text!r}\n\nTUNABLES = {{", 1)
    read = code.replace('budget = params["chunk_size"]',
                        'budget = params["chunk_size"] if NOTE else 0', 1)
    assert read != code
    return read


POOR = marked("# scaled on summarize by 0.05")
GOOD = marked("a copy of the baseline")


def test_a_poor_candidate_stops_early_and_a_good_one_runs_every_stage(tmp_path):
    folder, out = campaign(tmp_path, "halve", [POOR, GOOD])
    with Archive(folder / "archive.sqlite") as archive:
        poor, good = archive.get("c0001"), archive.get("c0002")
        # the poor one passed the cheap stage, then stopped after 2 of 3 instances: no chat run,
        # no tuning, its partial score recorded and labelled
        assert poor.status == A.SCREENED_OUT and poor.train_score is None
        assert poor.failure.startswith("rejected early: partial score")
        assert "on 2 of 3 instances" in poor.failure
        assert poor.screen_score is not None and poor.screen_score < -0.02
        assert labels_run(archive, "c0001") == {"multiturn@1", "summarize@1"}
        assert A.failure_category(poor.status, poor.failure) == "rejected early"
        assert "failures: rejected early: partial score" in show_text(archive, poor)
        assert archive.failures_by_reason().get("rejected early") == 1
        # the good one ran every stage and was tuned
        assert good.status in (A.TUNED, A.FINALIST, A.GATE_FAILED, A.PROMOTED)
        assert labels_run(archive, "c0002") >= {"multiturn@1", "summarize@1", "chat@1"}
    assert "c0001 (island 0): rejected early" in out.replace(" <- baseline", "")
    assert optuna.study.get_all_study_names(
        optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
            str(folder / "optuna.journal")))).count("c0001") == 0


def test_early_rejection_keeps_a_good_candidates_score_and_costs_a_poor_one_less(tmp_path):
    on, _ = campaign(tmp_path, "on", [POOR, GOOD])
    off, _ = campaign(tmp_path, "off", [POOR, GOOD], **{"search.early_rejection": False})
    pruned, _ = campaign(tmp_path, "pruned", [POOR, GOOD], **{"search.prune_trials": True})
    with Archive(on / "archive.sqlite") as a_on, Archive(off / "archive.sqlite") as a_off:
        assert a_off.get("c0001").status == A.TUNED  # without it, the poor one is tuned in full
        assert a_on.evaluation_count("c0001") * 3 < a_off.evaluation_count("c0001")
        good_on, good_off = a_on.get("c0002"), a_off.get("c0002")
        assert (good_on.train_score, good_on.params) == (good_off.train_score, good_off.params)
        # screening's full run at the starting parameters is the first trial: nothing extra
        assert a_on.evaluation_count("c0002") == a_off.evaluation_count("c0002")
        full_cost = a_off.evaluation_count("c0002")
    with Archive(pruned / "archive.sqlite") as a_pruned:
        assert a_pruned.evaluation_count("c0002") < full_cost  # pruned trials stop part-way


def _stored_train_score(folder: Path, cand_id: str) -> float:
    """The candidate's training objective recomputed from the archive's full training ladder
    at its tuned parameters (every job is cached: nothing runs)."""
    from autotuner.config import load_config as load
    from autotuner.scoring import Evaluator, ladder_jobs

    cfg = load(folder / "config.toml")
    train = split_instances(cfg)["train"]
    with Archive(folder / "archive.sqlite") as archive:
        cand, base = archive.get(cand_id), archive.get_meta("baseline")
        ev = Evaluator(archive, parallelism=1, simulator=scaled)
        jobs = ladder_jobs(cand.code, cand.params, train, base["caps"]["train"], cfg,
                           name=f"{cand_id}.py")
        results = ev.evaluate(jobs)
        assert ev.ran == 0 and ev.cached == len(jobs)
    return ladder_scores(results, train, base["reference"]["train"], cfg).objective


def test_a_partial_score_never_becomes_a_training_score_nor_reaches_the_gate(tmp_path):
    """Great on the screening stage, poor on the last instance: early rejection lets it through
    to tuning (the last stage never rejects), and its training score is the full one, below the
    baseline, so it is no finalist; its pruned trials have no value the tuner could return."""
    lopsided = marked("# scaled on multiturn by 3; # scaled on chat by 0.2")
    folder, out = campaign(tmp_path, "lop", [lopsided], **{
        "budget.proposals": 1, "budget.trials": 5, "search.prune_trials": True})
    with Archive(folder / "archive.sqlite") as archive:
        cand = archive.get("c0001")
        assert cand.status == A.TUNED, (cand.status, cand.failure)
        assert cand.screen_score > 1.0  # the cheap stage alone: x3
        assert cand.train_score == pytest.approx(_stored_train_score(folder, "c0001"))
        assert cand.train_score < 0  # the full judgement
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(folder / "optuna.journal")))
    trials = optuna.load_study(study_name="c0001", storage=storage).get_trials()
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert pruned and all(t.value is None for t in pruned)
    assert cand.train_score == max(t.value for t in complete)
    assert "no candidate beat the tuned baseline on training: nothing to gate" in out


class Counting(Scripted):
    """Scripted, and notes the archive's evaluation count whenever it is asked to propose."""

    def __init__(self, codes, campaign_ref):
        super().__init__(codes)
        self.campaign, self.counts = campaign_ref, []

    def propose(self, request, check):
        self.counts.append(self.campaign[0].archive.evaluation_count())
        return super().propose(request, check)


def _budget_run(tmp_path: Path, name: str, codes, **extra) -> tuple[Path, str, list[int]]:
    cfg = load_config(**{**SMALL, "results_dir": str(tmp_path / "results"), "name": name,
                         "budget.proposals": 3, **extra})
    ref: list[Campaign] = []
    proposer = Counting(codes, ref)
    out = io.StringIO()
    ref.append(Campaign(cfg, proposer=proposer, simulator=scaled, stream=out, tty=False))
    assert ref[0].run() == 0, out.getvalue()
    return cfg.campaign_dir, out.getvalue(), proposer.counts


def test_the_evaluation_budget_stops_the_search_and_the_finalist_is_still_gated(tmp_path):
    better = marked("# scaled on multiturn by 1.6")
    codes = [better, GOOD, POOR]
    _, _, counts = _budget_run(tmp_path, "free", codes)
    assert len(counts) == 3  # unbudgeted: every proposal asked for
    # a budget of one evaluation more than the baseline's: the first proposal is asked for and
    # evaluated in full, then nothing more
    folder, out, counts = _budget_run(tmp_path, "capped", codes,
                                      **{"budget.evaluations": counts[0] + 1})
    assert len(counts) == 1
    assert "search stopped: the evaluation budget is spent" in out
    assert "1 of 3 proposals, each evaluated in full" in out
    with Archive(folder / "archive.sqlite") as archive:
        (cand,) = archive.candidates(origin="proposal")
        assert cand.status in (A.PROMOTED, A.GATE_FAILED) and cand.gate, (cand.status, out)
        assert cand.train_score > 0 and cand.validation_score > 0
        assert archive.get_meta("phase") == "done"


def test_the_evaluation_budget_is_validated():
    from autotuner.config import ConfigError

    with pytest.raises(ConfigError, match="budget.evaluations: must be between 1"):
        load_config(**{"budget.evaluations": 0})
    with pytest.raises(ConfigError, match="search.prune_margin"):
        load_config(**{"search.prune_margin": -0.1})


def test_a_gate_costs_what_one_policys_held_out_searches_took():
    from autotuner.campaign.reserve import predicted_finalisation

    quiet = predicted_finalisation(0.1, 30, 2, 40.0)
    assert quiet == pytest.approx(1.2 * (0.1 * 30 + 2 * 40.0))
    assert predicted_finalisation(0.2, 30, 2, 40.0) == pytest.approx(1.2 * (0.2 * 30 + 80.0))


class _Measured:
    """An evaluator whose latest runs took ``wall_per_run`` seconds each."""

    def __init__(self, wall_per_run: float):
        self.wall_per_run = wall_per_run

    def recent_wall_per_sim(self) -> float:
        return self.wall_per_run

    def wall_per_sim(self) -> float:
        return self.wall_per_run


def test_the_reserve_is_the_measured_cost_of_the_finalists_picked_now(tmp_path):
    """Quiet or busy, the reserve is the finalists' validation runs at the speed of the latest
    runs and one gate each at what the same held-out searches took when measured (here, with no
    references, the tuned baseline's); with no finalist there is nothing to keep back beyond
    ``budget.finalize_reserve_s``."""
    from autotuner.campaign.reserve import SAFETY, finalize_estimate, gate_cost

    codes = [marked("# scaled on multiturn by 1.6"), marked("# scaled on chat by 1.5"),
             marked("# scaled on summarize by 1.3")]
    folder, _ = campaign(tmp_path, "reserve", codes, **{"budget.proposals": 3,
                                                        "search.finalists": 2})
    cfg = load_config(**{**SMALL, "results_dir": str(tmp_path / "results"), "name": "reserve",
                         "search.finalists": 2})
    state = Campaign(cfg, resume=True, stream=io.StringIO(), tty=False)
    with Archive(folder / "archive.sqlite") as archive:
        state.archive = archive
        from autotuner.campaign.baseline import stored_baseline

        state.baseline = stored_baseline(state)
        state.baseline = dataclasses.replace(state.baseline, reference={
            "train": state.baseline.reference["train"]})  # validation not yet run
        for cand in archive.candidates(origin="proposal"):  # as when the search stops
            archive.update(cand.id, status=A.TUNED, validation_score=None)
        cost = gate_cost(state)
        stored = archive.get_meta("gate_cost")
        assert cost is not None and set(stored) == {"baseline"}  # no references configured
        assert cost == stored["baseline"] > 0
        validation_runs = 2 * 3 * 3  # rungs x validation instances x (2 finalists + baseline)
        for wall_per_run in (0.05, 0.5):
            state.evaluator = _Measured(wall_per_run)  # type: ignore[assignment]
            assert finalize_estimate(state) == pytest.approx(
                SAFETY * (wall_per_run * validation_runs + 2 * cost))
        for cand in archive.candidates(origin="proposal"):
            archive.update(cand.id, status=A.SCREENED_OUT)
        assert finalize_estimate(state) == 0.0  # no finalist: nothing to gate


def test_the_references_are_measured_before_the_search_and_the_gate_runs_none_of_theirs(
        tmp_path):
    """The gate's references do not depend on the search: tuned and measured on the held-out
    instances before it, so the gate finds them all in the cache, and the reserve is predicted
    from their measured held-out searches."""
    folder, out = campaign(tmp_path, "refs", [marked("# scaled on multiturn by 1.6")], **{
        "budget.proposals": 1, "gate.references": ["least_outstanding"]})
    with Archive(folder / "archive.sqlite") as archive:
        (cand,) = archive.candidates(origin="proposal")
        assert cand.gate, (cand.status, out)
        first_proposal_run = archive.conn.execute(
            "SELECT MIN(created) FROM evaluations WHERE candidate_id=?", (cand.id,)).fetchone()[0]
        late = archive.conn.execute(
            "SELECT COUNT(*) FROM evaluations WHERE candidate_id LIKE 'reference-%' AND "
            "created > ?", (first_proposal_run,)).fetchone()[0]
        searches = [w for (w,) in archive.conn.execute(
            "SELECT workload FROM evaluations WHERE candidate_id LIKE 'reference-%' AND "
            "json_extract(result, '$.probes') IS NOT NULL")]
        assert set(archive.get_meta("gate_cost")) == {"baseline", "references"}
        heldout = split_instances(load_config(**SMALL))["heldout"]
        assert sorted(searches) == sorted(i.label for i in heldout)  # each held-out instance
        assert late == 0  # tuning and held-out searches all before the search
    assert out.index("reference least_outstanding tuned like the baseline") < \
        out.index("c0001 <- baseline (island 0): proposed")


def test_every_finalist_is_gated_even_when_the_wall_time_is_spent(tmp_path):
    """A budget the setup alone overruns: ``min_proposals`` keeps the search to two proposals,
    and both finalists are gated (the campaign overruns its budget rather than leave a
    finalist ungated)."""
    codes = [marked("# scaled on multiturn by 1.6"), marked("# scaled on chat by 1.5")]
    folder, out = campaign(tmp_path, "late", codes, **{
        "budget.wall_time_s": 1.0, "budget.min_proposals": 2, "budget.proposals": 3,
        "search.finalists": 2})
    assert "search stopped: wall-time budget reached (2 of 3 proposals; " in out
    assert "kept back for the finalisation)" in out and "finalisation took " in out
    assert "wall-time budget is spent" not in out
    with Archive(folder / "archive.sqlite") as archive:
        finalists = archive.candidates(origin="proposal")
        assert len(finalists) == 2
        for cand in finalists:
            assert cand.validation_score > 0 and cand.gate, (cand.id, cand.status, out)


def test_a_finalist_that_scores_exactly_as_a_better_ranked_one_is_not_gated_again(tmp_path):
    """Two programs that differ only in code no run reaches make the same decisions: the
    second is passed over for a finalist slot (and said so), and the next distinct candidate
    takes it."""
    twin_a = marked("# scaled on multiturn by 1.6")
    twin_b = twin_a.replace("NOTE = ", "LABEL = 'twin'\nNOTE = ", 1)
    other = marked("# scaled on chat by 1.3")
    folder, out = campaign(tmp_path, "twins", [twin_a, twin_b, other], **{
        "budget.proposals": 3, "search.finalists": 2})
    assert "c0002 is not a finalist: it scores exactly as c0001 on every training instance" \
        in out, out
    with Archive(folder / "archive.sqlite") as archive:
        a, b, c = (archive.get(i) for i in ("c0001", "c0002", "c0003"))
        assert a.train_score == b.train_score > c.train_score > 0
        assert a.gate and c.gate and not b.gate
