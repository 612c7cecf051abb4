"""The promotion gate on any policy file: would the campaign promote it?

The file runs at its own defaults (a promoted file has its tuned values baked in) through the
same sandbox, held-out instances, tuned baseline, tuned reference policies and conditions as the
campaign's gate (``gate.run_gate``). Against a campaign, its tuned baseline and references are
used and its evaluation cache is read (never written: the campaign may be running); otherwise
the baseline and the references are tuned here with the config's budget, as a campaign would
tune them. ``autotuner gate`` (``commands/gate.py``) prints the verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from autotuner.archive import Archive
from autotuner.campaign import CampaignError, campaign_dir
from autotuner.check import check_policy
from autotuner.config import CampaignConfig, load_config
from autotuner.gate import GateResult, PolicyRef, run_gate
from autotuner.lineage import same_policy_as, shipped_references
from autotuner.policy import PolicyFileError, PolicySource, read_policy_file
from autotuner.scoring import Evaluator, split_instances
from autotuner.yardstick import TunedPolicy, read_named_policy, tune_baseline, tuned_references

Log = Callable[[str], None]


class GateFileError(RuntimeError):
    """Bad input for the gate on a file; the message is the one line printed."""


@dataclass(frozen=True)
class GateFileVerdict:
    """The gate's result on a file, with what it was judged against.

    where: how the baseline was tuned ("tuned by campaign c", "tuned here (n trials)").
    copy_of: the reference policy the file is (``lineage.same_policy_as``), "" if none: its
    gain is that reference's, never a discovery."""

    policy: str
    params: Mapping[str, Any]
    baseline: TunedPolicy
    where: str
    result: GateResult
    cfg: CampaignConfig
    copy_of: str = ""


class _ReadOnlyCache:
    """The campaign's evaluation cache, read only; new results stay in memory."""

    def __init__(self, archive: Any):
        self.archive = archive
        self.mine: dict[str, dict[str, Any]] = {}

    def get_evaluations(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        found = self.archive.get_evaluations(keys)
        return found | {k: self.mine[k] for k in keys if k in self.mine}

    def put_evaluation(self, key: str, **kwargs: Any) -> None:
        self.mine[key] = kwargs["result"]


class _MemoryCache(_ReadOnlyCache):
    def __init__(self) -> None:
        super().__init__(None)

    def get_evaluations(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        return {k: self.mine[k] for k in keys if k in self.mine}


def read_candidate(path: str) -> PolicySource:
    """The policy file, refused with one line if it cannot be read or fails the check."""
    try:
        source = read_policy_file(path)
    except PolicyFileError as exc:
        raise GateFileError(str(exc)) from None
    checked = check_policy(source.code, Path(path).name)
    if not checked.ok:
        raise GateFileError(f"{path}: not a valid policy file: {checked.reasons()[0]}")
    return source


class GateSetup:
    """Config, evaluator, tuned baseline and tuned references for one gate run."""

    def __init__(self, config: str | None, campaign: str | None, sandbox: str | None,
                 parallelism: int | None, simulator: Any, log: Log):
        self.log = log
        self.archive: Archive | None = None
        if campaign:
            try:
                folder = campaign_dir(campaign)
            except CampaignError as exc:
                raise GateFileError(str(exc)) from None
            if not (folder / "archive.sqlite").is_file():
                raise GateFileError(f"{folder}: no archive.sqlite (the campaign never started)")
            cfg = load_config(folder / "config.toml", name=folder.name,
                              results_dir=str(folder.parent))
            self.archive = Archive(folder / "archive.sqlite")
            cache: Any = _ReadOnlyCache(self.archive)
        else:
            cfg = load_config(config)
            cache = _MemoryCache()
        if sandbox:
            cfg = replace(cfg, sandbox=replace(cfg.sandbox, backend=sandbox))
        if parallelism is not None and parallelism < 1:
            raise GateFileError("--parallelism must be at least 1")
        self.cfg: CampaignConfig = cfg
        self.evaluator = Evaluator(cache, parallelism or cfg.parallelism, simulator)

    def close(self) -> None:
        self.evaluator.close()
        if self.archive is not None:
            self.archive.close()

    def baseline(self) -> tuple[TunedPolicy, dict[str, float], dict[str, list[float]], str]:
        """(tuned baseline, its training capacities, its training ladder goodput, where from)"""
        import optuna

        if self.archive is not None:
            meta = self.archive.get_meta("baseline")
            if not meta:
                raise GateFileError("the campaign's baseline is not tuned yet")
            tuned = TunedPolicy(meta["name"], meta["code"], dict(meta["params"]), 0.0,
                                "the campaign")
            return (tuned, dict(meta["caps"]["train"]), dict(meta["reference"]["train"]),
                    f"tuned by campaign {self.cfg.name}")
        name, code = read_named_policy(self.cfg.objective.baseline)
        self.log(f"tuning the baseline {name} ({self.cfg.budget.trials} trials)")
        result = tune_baseline(self.evaluator, self.cfg, name, code,
                               split_instances(self.cfg)["train"],
                               optuna.storages.InMemoryStorage(), tick=self.log)
        return (result.policy, result.caps, result.goodput,
                f"tuned here ({self.cfg.budget.trials} trials)")

    def references(self, baseline: TunedPolicy, caps: Mapping[str, float],
                   goodput: Mapping[str, list[float]]) -> list[TunedPolicy]:
        import optuna

        return tuned_references(self.evaluator, self.cfg, split_instances(self.cfg)["train"],
                                baseline, caps, goodput, optuna.storages.InMemoryStorage(),
                                "autotuner gate", archive=self.archive, log=self.log)


def judge_policy_file(policy: str, *, config: str | None = None, campaign: str | None = None,
                      sandbox: str | None = None, parallelism: int | None = None,
                      simulator: Any = None, log: Log = lambda _: None) -> GateFileVerdict:
    """Run the promotion gate on the file ``policy`` at its defaults, against the campaign
    ``campaign``'s tuned baseline and references, or against ones tuned here under the
    campaign file ``config`` (default: the built-in defaults). ``log``: progress lines."""
    source = read_candidate(policy)
    setup = GateSetup(config, campaign, sandbox, parallelism, simulator, log)
    try:
        cfg = setup.cfg
        baseline, caps, goodput, where = setup.baseline()
        references = [r.ref() for r in setup.references(baseline, caps, goodput)]
        instances = split_instances(cfg)["heldout"]
        log(f"held-out capacities on {len(instances)} instances")
        candidate = PolicyRef(Path(policy).name, source.code, source.defaults())
        result = run_gate(setup.evaluator, cfg, "candidate", candidate, baseline.ref(),
                          instances, references=references)
        named = [cfg.objective.baseline, *cfg.search.seeds, *cfg.gate.references]
        known = shipped_references() | dict(read_named_policy(n) for n in named)
        copy_of = same_policy_as(source.code, {Path(k).stem: v for k, v in known.items()})
        return GateFileVerdict(policy, dict(candidate.params), baseline, where, result, cfg,
                               copy_of or "")
    finally:
        setup.close()
