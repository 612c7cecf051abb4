"""The gate's statistic, written once: the geometric mean of paired capacity ratios and its
percentile-bootstrap interval over the instances (seeded, so a verdict can be repeated). The
report's intervals are these same draws; there is no second bootstrap."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from autotuner.config import GateConfig

# A candidate with no capacity on an instance has ratio 0; its log is clamped here so that the
# geometric mean stays defined (and far below any margin).
MIN_RATIO = 1e-3


def bootstrap_interval(values: Sequence[float], *, confidence: float, samples: int, seed: int
                       ) -> tuple[float, float, float]:
    """Mean of ``values`` and the percentile-bootstrap interval of the mean,
    [1 - confidence, confidence] quantiles (resampling the paired instances); its lower end is
    the gate's one-sided bound. One value bounds nothing: (-inf, inf)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    if x.size == 1:
        return float(x[0]), -math.inf, math.inf
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(samples, x.size))
    means = x[idx].mean(axis=1)
    return (float(x.mean()), float(np.quantile(means, 1.0 - confidence)),
            float(np.quantile(means, confidence)))


def bootstrap_bound(gains: Sequence[float], *, confidence: float, samples: int, seed: int
                    ) -> tuple[float, float]:
    """Mean of ``gains`` and the one-sided lower bound of the mean at ``confidence``."""
    mean, lower, _ = bootstrap_interval(gains, confidence=confidence, samples=samples,
                                        seed=seed)
    return mean, lower


def geometric_interval(ratios: Sequence[float], *, confidence: float, samples: int, seed: int
                       ) -> tuple[float, float, float]:
    """Geometric mean of capacity ratios minus one, and its bootstrap interval (resampled in
    log space, so one workload with a tiny baseline cannot carry the rest)."""
    logs = [math.log(max(r, MIN_RATIO)) for r in ratios]
    mean, lower, upper = bootstrap_interval(logs, confidence=confidence, samples=samples,
                                            seed=seed)
    return math.exp(mean) - 1.0, math.exp(lower) - 1.0, math.exp(upper) - 1.0


def geometric_gain(ratios: Sequence[float]) -> float:
    """Geometric mean of capacity ratios, minus one (NaN for none)."""
    if not ratios:
        return math.nan
    return math.exp(float(np.mean([math.log(max(r, MIN_RATIO)) for r in ratios]))) - 1.0


@dataclass
class Comparison:
    """A paired capacity comparison against one reference: the geometric mean of the
    per-instance ratios (minus one) and its bootstrap lower bound, against ``margin``."""

    reference: str  # "baseline", "reference:<stem>", or the promoted candidate's id
    capacities: dict[str, tuple[float, float]]  # instance -> (candidate, reference)
    gains: dict[str, float]  # instance -> ratio - 1 (instances with a reference capacity > 0)
    mean_gain: float
    lower_bound: float
    margin: float
    passed: bool
    excluded: list[str] = field(default_factory=list)  # reference capacity 0: no ratio


def compare(candidate_caps: Mapping[str, float], reference_caps: Mapping[str, float],
            reference: str, gate: GateConfig, seed: int, margin: float | None = None
            ) -> Comparison:
    """Pure: pair the capacities by instance and bound the geometric-mean gain."""
    margin = gate.margin if margin is None else margin
    labels = [k for k in candidate_caps if k in reference_caps]
    caps = {k: (float(candidate_caps[k]), float(reference_caps[k])) for k in labels}
    ratios = {k: c / r for k, (c, r) in caps.items() if r > 0}
    mean, lower, _ = geometric_interval(list(ratios.values()), confidence=gate.confidence,
                                        samples=gate.bootstrap, seed=seed)
    passed = bool(ratios) and lower >= margin
    return Comparison(reference, caps, {k: x - 1.0 for k, x in ratios.items()}, mean, lower,
                      margin, passed, [k for k in labels if k not in ratios])


def family_gains(comp: Comparison, families: Mapping[str, str]) -> dict[str, float]:
    """Pure: the geometric-mean gain per workload family (instance label -> family)."""
    groups: dict[str, list[float]] = {}
    for label, gain in comp.gains.items():
        groups.setdefault(families.get(label, label), []).append(gain + 1.0)
    return {fam: geometric_gain(ratios) for fam, ratios in groups.items()}
