"""``replay promotions/<id>.json``: repeat a promotion's whole gate from its record alone (its
files, cluster, SLO, gate settings, held-out instances and best reference) and say whether the
claim holds: the same capacities, and the gate passing again."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotuner.config import CampaignConfig, ConfigError, config_from_mapping
from autotuner.gate import GateInputError, GateResult, PolicyRef, run_gate
from autotuner.policy import read_policy_file
from autotuner.review.common import ReviewError, gain_text
from autotuner.scoring import Evaluator, Instance, NoCache


@dataclass(frozen=True)
class Reproduction:
    """The gate run again from a record; ``recorded``: the record's comparisons."""

    path: Path
    record: Mapping[str, Any]
    cfg: CampaignConfig
    result: GateResult
    identical_capacities: bool

    @property
    def recorded(self) -> list[dict[str, Any]]:
        return self.record["statistics"]["comparisons"]

    @property
    def passed(self) -> bool:
        return self.result.passed


def _read_record(record_path: Path) -> dict[str, Any]:
    record = json.loads(record_path.read_text(encoding="utf-8"))
    if record.get("kind") != "autotuner promotion":
        raise ReviewError(f"{record_path}: not a promotion record")
    return record


def reproduce(record_path: Path, *, sandbox: str | None = None, parallelism: int | None = None,
              simulator: Any = None) -> Reproduction:
    """Run the recorded gate again (``simulator``: tests of trusted files only)."""
    record = _read_record(record_path)
    folder = record_path.parent
    policy = read_policy_file(folder / record["policy_file"])
    base = read_policy_file(folder / record["baseline"]["file"])
    try:
        cfg = config_from_mapping({
            "cluster": record["cluster"], "slo": record["slo"], "gate": record["gate"],
            "sandbox": {"backend": sandbox or "auto"}, "seed": record["statistics"]["seed"]})
    except ConfigError as exc:
        raise ReviewError(f"{record_path}: written under another yardstick ({exc})") from None
    insts = [Instance.from_dict(d) for d in record["instances"]]
    refs = []
    if record.get("reference"):
        ref = read_policy_file(folder / record["reference"]["file"])
        refs = [PolicyRef(f"{record['reference']['name']}.py", ref.code,
                          dict(record["reference"]["params"]))]
    evaluator = Evaluator(NoCache(), parallelism or 2, simulator)
    try:
        result = run_gate(evaluator, cfg, record["candidate"],
                          PolicyRef(record["policy_file"], policy.code, dict(record["params"])),
                          PolicyRef(record["baseline"]["file"], base.code,
                                    dict(record["baseline"]["params"])), insts, references=refs)
    except GateInputError as exc:
        raise ReviewError(str(exc)) from None
    finally:
        evaluator.close()
    same = all(
        sorted(comp.capacities.items()) == sorted((k, tuple(v)) for k, v in rec["capacities"]
                                                  .items())
        for comp, rec in zip(result.comparisons, record["statistics"]["comparisons"],
                             strict=False))
    return Reproduction(record_path, record, cfg, result, same)


def reproduction_data(rep: Reproduction) -> dict[str, Any]:
    comp, recorded = rep.result.baseline, rep.recorded[0]
    return {"record": str(rep.path), "claim": rep.record["claim"],
            "recorded": {"mean_gain": recorded["mean_gain"],
                         "lower_bound": recorded["lower_bound"]},
            "reproduced": {"mean_gain": comp.mean_gain, "lower_bound": comp.lower_bound,
                           "passed": rep.result.passed, "failed": rep.result.failed()},
            "identical_capacities": rep.identical_capacities,
            "capacities": {k: list(v) for k, v in comp.capacities.items()}}


def reproduction_text(rep: Reproduction) -> str:
    comp, recorded, result = rep.result.baseline, rep.recorded[0], rep.result
    lines = [f"record   {rep.path}", f"claim    {rep.record['claim']}",
             f"  {'instance':<28} {'policy':>10} {'baseline':>10} {'gain':>8}"]
    for k, (c, b) in comp.capacities.items():
        lines.append(f"  {k:<28} {c:>10.3g} {b:>10.3g} {gain_text(c / b - 1 if b else None):>8}")
    lines += [f"  {cond.line()}" for cond in result.conditions]
    lines.append(
        f"reproduced: geometric mean gain {gain_text(comp.mean_gain)}, "
        f"{rep.cfg.gate.confidence:.0%} lower bound {gain_text(comp.lower_bound)} (recorded "
        f"{gain_text(recorded['mean_gain'])}, {gain_text(recorded['lower_bound'])}); "
        f"capacities {'identical' if rep.identical_capacities else 'DIFFER'}; gate "
        + ("passes" if result.passed else f"FAILS ({', '.join(result.failed())})"))
    return "\n".join(lines) + "\n"
