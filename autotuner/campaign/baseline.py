"""Phase 1: the tuned baseline, the yardstick every candidate is measured against.

It is tuned with exactly the trial budget a candidate gets, then its capacity is measured on
every split. A workload where the tuned baseline has (nearly) no capacity is refused now, before
anything is searched, since no capacity ratio to it means anything.
"""

from __future__ import annotations

from typing import Any

from autotuner import archive as A
from autotuner.archive import Candidate
from autotuner.campaign.errors import CampaignError, WorkloadRefused
from autotuner.campaign.lifecycle import end_setup
from autotuner.campaign.progress import fmt_gain
from autotuner.campaign.reserve import timed_gates
from autotuner.campaign.state import Baseline, CampaignState
from autotuner.config import policy_file
from autotuner.gate import PolicyRef
from autotuner.policy import read_policy_source
from autotuner.yardstick import (
    BaselineTuning,
    YardstickError,
    capacities,
    family_hints,
    tune_baseline,
)


def baseline_phase(state: CampaignState) -> Baseline:
    """Tune and measure the baseline; the setup ends after its first evaluation."""
    assert state.archive is not None and state.evaluator is not None
    path = policy_file(state.cfg.objective.baseline)
    code = path.read_text(encoding="utf-8")
    _baseline_candidate(state, path.name, code)
    try:
        tuned, other = _tune_and_measure(state, path.name, code)
    except YardstickError as exc:
        raise WorkloadRefused(str(exc)) from None
    params, caps, caps0, ref = dict(tuned.policy.params), tuned.caps, tuned.caps_default, \
        tuned.goodput
    baseline = Baseline(path.name, code, params, {"train": caps, **other}, {"train": ref})
    state.archive.set_scores("baseline", "train", {
        label: (0.0, {"capacity": caps[label], "capacity_default_params": caps0[label],
                      "goodput": ref[label]}) for label in caps})
    state.archive.update("baseline", params=params, status=A.TUNED, train_score=0.0,
                         screen_score=0.0)
    state.archive.set_meta("baseline", baseline.to_dict())
    gain = [caps[k] / caps0[k] - 1 for k in caps]
    state.progress.log(
        f"baseline {path.name} tuned: {params} (tuning moved training capacity "
        f"{fmt_gain(sum(gain) / len(gain))}); capacity "
        + ", ".join(f"{k} {v:.3g}" for k, v in caps.items()) + " req/s")
    return baseline


def stored_baseline(state: CampaignState) -> Baseline:
    """The baseline a resumed campaign made in its phase 1."""
    assert state.archive is not None
    return Baseline(**state.archive.get_meta("baseline"))


def _baseline_candidate(state: CampaignState, file_name: str, code: str) -> Candidate:
    assert state.archive is not None
    cand = state.archive.find("baseline")
    if cand is None:
        return state.archive.add_candidate(
            candidate_id="baseline", origin="baseline", code=code, status=A.TUNING,
            proposer=f"baseline file {file_name}", files_dir=state.dir / "candidates")
    if cand.code != code:
        raise CampaignError("the baseline file changed since this campaign started")
    return cand


def _tune_and_measure(state: CampaignState, file_name: str, code: str
                      ) -> tuple[BaselineTuning, dict[str, dict[str, float]]]:
    """The tuned baseline, and its capacities on the validation and held-out splits.

    The defaults' capacity is the first real evaluation: the setup ends once it passed (the
    folder moves into place, the storages reopen there); tuning then finds these capacities in
    the evaluation cache."""
    assert state.evaluator is not None
    cfg = state.cfg

    def on_result(i: int, result: dict[str, Any]) -> None:
        state.progress.status(state.status_text())

    defaults = read_policy_source(code, file_name).defaults()
    state.tick(f"baseline: capacity at default parameters {defaults}")
    capacities(state.evaluator, cfg, PolicyRef(file_name, code, defaults),
               state.instances["train"], "baseline", who="baseline (at its default parameters)")
    end_setup(state)
    tuned = tune_baseline(state.evaluator, cfg, file_name, code, state.instances["train"],
                          state.storage, tick=state.tick, on_result=on_result)
    state.tick("baseline: capacity on the validation and held-out workloads")
    train, other = state.instances["train"], {}  # type: ignore[var-annotated]

    def measure(split: str) -> None:
        other[split] = capacities(
            state.evaluator, cfg, tuned.policy.ref(), state.instances[split], "baseline",
            family_hints(tuned.caps, train, state.instances[split]), who="tuned baseline",
            checked=split == "heldout")

    measure("validation")
    timed_gates(state, "baseline", ["heldout"], measure)  # what a gate costs, if no reference
    return tuned, other
