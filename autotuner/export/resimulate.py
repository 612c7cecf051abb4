"""How much of the gain survives: the policy and each projection measured with the campaign's own
yardstick (capacity under its SLO on its held-out instances, through the sandbox and the
evaluator's cache), each against the tuned baseline with the gate's statistic (the paired
geometric mean of capacity ratios, ``gate.compare``). Nothing here scores anew."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from autotuner.config import CampaignConfig
from autotuner.gate import (
    GateInputError,
    PolicyRef,
    compare,
    measure_capacities,
    refusal_line,
    zero_capacity,
)
from autotuner.scoring import Evaluator, Instance, run_lengths


@dataclass(frozen=True)
class Gain:
    """A policy's held-out gain over the tuned baseline (mean: geometric mean of the capacity
    ratios minus 1; lower: its bootstrap lower bound) and its capacity per instance."""

    mean: float
    lower: float
    capacities: Mapping[str, float]
    error: str | None = None


def survival(projected: float, simulated: float) -> float | None:
    """Share of the simulated gain the projection keeps (None when there is no gain to keep)."""
    return projected / simulated if simulated > 0 else None


def survival_line(label: str, projected: Gain, simulated: Gain) -> str:
    """'vLLM knobs keep +12.0 % of +25.0 % (48% survives)', with what makes a share
    meaningless said beside it: a policy gain whose lower bound is not above 0, or a projection
    that does better than the policy (then it is a different rule, not the policy's)."""
    if projected.error:
        return f"{label}: the projection fails in simulation: {projected.error}"
    share = survival(projected.mean, simulated.mean)
    if share is None:
        kept = " (the policy itself gains nothing here, so no share is defined)"
    elif share > 1.1:
        kept = (f" ({share:.0%}: more than the policy itself; the target's closest rule is a "
                "different one, see the decisions it cannot express)")
    else:
        kept = f" ({share:.0%} survives)"
    if share is not None and simulated.lower <= 0:
        kept += (f"; the policy's own gain is not significant (lower bound "
                 f"{simulated.lower * 100:+.1f} %)")
    verb = "keep" if label.endswith("s") else "keeps"
    return (f"{label} {verb} {projected.mean * 100:+.1f} % of {simulated.mean * 100:+.1f} %"
            f"{kept}")


class Yardstick:
    """The tuned baseline's held-out capacities, measured once; every policy is compared with
    them by the gate's statistic."""

    def __init__(self, evaluator: Evaluator, cfg: CampaignConfig, baseline: PolicyRef,
                 instances: Sequence[Instance]):
        self.evaluator, self.cfg, self.instances = evaluator, cfg, list(instances)
        caps, raw, err = measure_capacities(evaluator, baseline, instances, cfg, None, "baseline")
        if err:
            raise GateInputError(f"the tuned baseline fails on a held-out workload: {err}")
        if zero := zero_capacity(caps, cfg.gate.min_baseline_capacity):
            raise GateInputError(refusal_line(zero[0], caps[zero[0]], "tuned baseline", cfg))
        self.base_caps, self.base_lengths = caps, run_lengths(raw)

    def gain(self, policy: PolicyRef, candidate_id: str, seed_offset: int = 0) -> Gain:
        caps, _, err = measure_capacities(self.evaluator, policy, self.instances, self.cfg,
                                          self.base_caps, candidate_id, self.base_lengths)
        comp = compare(caps, self.base_caps, "baseline", self.cfg.gate,
                       self.cfg.seed + seed_offset)
        return Gain(comp.mean_gain, comp.lower_bound, caps, err)


def per_instance_rows(base: Mapping[str, float], gains: Mapping[str, Gain]) -> list[str]:
    """One line per instance: the baseline's capacity and each policy's, req/s."""
    widths = {n: max(10, len(n) + 2) for n in gains}
    rows = ["instance".ljust(16) + "baseline".rjust(10) +
            "".join(n.rjust(widths[n]) for n in gains)]
    for label, cap in base.items():
        rows.append(label.ljust(16) + f"{cap:10.3g}" +
                    "".join(f"{gains[n].capacities.get(label, 0.0):{widths[n]}.3g}"
                            for n in gains))
    return rows
