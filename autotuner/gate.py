"""The promotion gate: a paired capacity comparison on held-out workloads, and what a promotion
writes so that anyone can check the claim with one command.

For each held-out instance (a scenario with a held-out seed, or a trace's held-out window), the
capacity under SLO (highest rate at which ``share`` of requests meet both the TTFT and the TPOT
target) is measured for the candidate and for the reference (the tuned baseline; and the promoted
policy, if there is one), on the same requests. The per-instance relative gains
``cap_candidate / cap_reference - 1`` are bootstrapped (resampling instances, seeded); the
one-sided lower bound at the configured confidence must reach the margin. Separately, at the
tuned baseline's capacity on each instance, the candidate may not lose more than the tolerance in
any SLO metric: the share of requests meeting the TTFT target, the TPOT target, and both.
"""

from __future__ import annotations

import ast
import json
import math
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotuner.archive import canonical, sha256
from autotuner.config import CampaignConfig, GateConfig, to_dict
from autotuner.scoring import Evaluator, Instance, Job, capacity_jobs

SLO_METRICS = ("ttft_ok", "tpot_ok", "attainment")


def bootstrap_bound(gains: Sequence[float], *, confidence: float, samples: int, seed: int
                    ) -> tuple[float, float]:
    """Mean of ``gains`` and the one-sided lower bound of the mean at ``confidence``
    (percentile bootstrap over the paired instances)."""
    x = np.asarray(gains, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), -math.inf  # one pair cannot bound anything
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(samples, x.size))
    means = x[idx].mean(axis=1)
    return float(x.mean()), float(np.quantile(means, 1.0 - confidence))


@dataclass
class Comparison:
    """A paired capacity comparison against one reference."""

    reference: str  # "baseline" or the promoted candidate's id
    capacities: dict[str, tuple[float, float]]  # instance -> (candidate, reference)
    gains: dict[str, float]  # instance -> relative gain
    mean_gain: float
    lower_bound: float
    margin: float
    passed: bool


@dataclass
class GateResult:
    candidate: str
    passed: bool
    reasons: list[str]
    comparisons: list[Comparison]
    slo: dict[str, dict[str, float]]  # metric -> {"candidate", "baseline", "delta", "tolerance"}
    instances: list[dict[str, Any]]
    confidence: float
    bootstrap: int
    seed: int
    seconds: float = 0.0
    per_family: dict[str, float] = field(default_factory=dict)  # mean gain per scenario/trace

    def to_dict(self) -> dict[str, Any]:
        return json.loads(canonical(asdict(self)))

    @property
    def baseline(self) -> Comparison:
        return self.comparisons[0]


def compare(candidate_caps: Mapping[str, float], reference_caps: Mapping[str, float],
            reference: str, gate: GateConfig, seed: int) -> Comparison:
    labels = [k for k in candidate_caps if k in reference_caps]
    caps = {k: (float(candidate_caps[k]), float(reference_caps[k])) for k in labels}
    gains = {k: (c / r - 1.0) if r > 0 else (0.0 if c <= 0 else math.inf)
             for k, (c, r) in caps.items()}
    finite = [g for g in gains.values() if math.isfinite(g)]
    mean, lower = bootstrap_bound(finite, confidence=gate.confidence, samples=gate.bootstrap,
                                  seed=seed)
    passed = bool(finite) and math.isfinite(lower) and lower >= gate.margin
    return Comparison(reference, caps, gains, mean, lower, gate.margin, passed)


def slo_check(candidate_runs: Mapping[str, Mapping[str, Any]],
              baseline_runs: Mapping[str, Mapping[str, Any]], tolerance: float
              ) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Mean of each SLO metric over instances, candidate vs baseline, at the baseline's
    capacity; a drop of more than ``tolerance`` is a regression."""
    out: dict[str, dict[str, float]] = {}
    reasons: list[str] = []
    labels = [k for k in candidate_runs if k in baseline_runs]
    for metric in SLO_METRICS:
        if not all(candidate_runs[k].get(metric) is not None
                   and baseline_runs[k].get(metric) is not None for k in labels):
            continue  # an older archive row without this share
        cand = float(np.mean([candidate_runs[k][metric] for k in labels])) if labels else math.nan
        base = float(np.mean([baseline_runs[k][metric] for k in labels])) if labels else math.nan
        delta = cand - base
        out[metric] = {"candidate": cand, "baseline": base, "delta": delta,
                       "tolerance": tolerance}
        if not delta >= -tolerance:
            reasons.append(f"SLO regression: {metric} {cand:.3f} vs baseline {base:.3f} "
                           f"(tolerance {tolerance:.3f})")
    return out, reasons


@dataclass(frozen=True)
class PolicyRef:
    """A policy as the gate measures it: its code and its tuned parameters."""

    name: str
    code: str
    params: Mapping[str, Any]


def measure_capacities(evaluator: Evaluator, policy: PolicyRef, instances: Sequence[Instance],
                       cfg: CampaignConfig, hints: Mapping[str, float] | None,
                       candidate_id: str | None
                       ) -> tuple[dict[str, float], dict[str, Any], str | None]:
    """Capacity per instance (label -> req/s), the raw results, and the first error."""
    jobs = capacity_jobs(policy.code, policy.params, instances, cfg, hints, name=policy.name)
    results = evaluator.evaluate(jobs, candidate_id)
    caps, raw, error = {}, {}, None
    for inst, res in zip(instances, results, strict=True):
        raw[inst.label] = res
        if res.get("error") and error is None:
            error = f"{inst.label}: {res['error']}"
        caps[inst.label] = float(res.get("capacity") or 0.0)
    return caps, raw, error


def run_gate(
    evaluator: Evaluator,
    cfg: CampaignConfig,
    candidate_id: str,
    candidate: PolicyRef,
    baseline: PolicyRef,
    instances: Sequence[Instance],
    promoted: PolicyRef | None = None,
    promoted_id: str | None = None,
) -> GateResult:
    """Measure and decide. Baseline (and promoted) capacities come from the evaluation cache
    after their first measurement, so gating several finalists costs only the candidates."""
    t0 = time.perf_counter()
    gate = cfg.gate
    base_caps, base_raw, base_err = measure_capacities(evaluator, baseline, instances, cfg, None,
                                                       "baseline")
    if base_err:
        raise RuntimeError(f"the baseline failed on the held-out workloads: {base_err}")
    cand_caps, _, cand_err = measure_capacities(evaluator, candidate, instances, cfg, base_caps,
                                                candidate_id)
    reasons: list[str] = []
    comparisons: list[Comparison] = []
    if cand_err:
        reasons.append(f"evaluation failed: {cand_err}")
    comparisons.append(compare(cand_caps, base_caps, "baseline", gate, cfg.seed))
    # SLO metrics at the tuned baseline's capacity, paired
    runs = [Job(candidate.code, dict(candidate.params), inst, "run", base_caps[inst.label],
                cfg.cluster, cfg.slo, cfg.sandbox, name=candidate.name) for inst in instances
            if base_caps[inst.label] > 0]
    cand_runs = {j.instance.label: r for j, r in zip(runs, evaluator.evaluate(runs, candidate_id),
                                                      strict=True)}
    base_runs = {k: v.get("at_capacity") or {} for k, v in base_raw.items() if v.get("capacity")}
    base_runs = {k: v for k, v in base_runs.items() if "attainment" in v}
    for k, r in cand_runs.items():
        if r.get("error") and not cand_err:
            reasons.append(f"evaluation failed: {k}: {r['error']}")
            break
    slo, slo_reasons = slo_check(cand_runs, base_runs, gate.slo_tolerance)
    reasons += slo_reasons
    if promoted is not None:
        prom_caps, _, prom_err = measure_capacities(evaluator, promoted, instances, cfg,
                                                    base_caps, promoted_id)
        if not prom_err:
            comparisons.append(compare(cand_caps, prom_caps, promoted_id or "promoted", gate,
                                       cfg.seed + 1))
    for comp in comparisons:
        if not comp.passed:
            who = "the tuned baseline" if comp.reference == "baseline" else comp.reference
            reasons.append(
                f"capacity gain over {who}: mean {comp.mean_gain:+.1%}, "
                f"{gate.confidence:.0%} lower bound {comp.lower_bound:+.1%} "
                f"< margin {comp.margin:.1%}"
            )
    families: dict[str, list[float]] = {}
    for inst in instances:
        g = comparisons[0].gains.get(inst.label)
        if g is not None and math.isfinite(g):
            families.setdefault(inst.family, []).append(g)
    return GateResult(
        candidate=candidate_id, passed=not reasons, reasons=reasons, comparisons=comparisons,
        slo=slo, instances=[i.to_dict() | {"label": i.label} for i in instances],
        confidence=gate.confidence, bootstrap=gate.bootstrap, seed=cfg.seed,
        seconds=time.perf_counter() - t0,
        per_family={k: float(np.mean(v)) for k, v in families.items()},
    )


# ------------------------------------------------------------------------------- promotion
def bake_params(code: str, params: Mapping[str, Any]) -> str:
    """The policy file with each tunable's ``default`` set to its tuned value, so the file alone
    runs as tuned (and stays a valid policy file, tunable by anyone again).

    A tunable the file inherits from the fallback baseline (a route-only file's chunk size) is
    declared in the file's own TUNABLES with its tuned default: the loader hands a declared value
    to the fallback decision point, so the baked file runs exactly as it was tuned.
    """
    from autotuner.policy import read_policy_source

    tree = ast.parse(code)
    edits: list[tuple[int, int, int, int, str]] = []
    declared: set[str] = set()
    target: ast.Dict | None = None
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "TUNABLES" for t in node.targets)):
            continue
        if not isinstance(node.value, ast.Dict):
            continue
        target = node.value
        for key, spec in zip(node.value.keys, node.value.values, strict=True):
            if isinstance(key, ast.Constant):
                declared.add(str(key.value))
            if not (isinstance(key, ast.Constant) and key.value in params
                    and isinstance(spec, ast.Dict)):
                continue
            for k2, v2 in zip(spec.keys, spec.values, strict=True):
                if isinstance(k2, ast.Constant) and k2.value == "default":
                    edits.append((v2.lineno, v2.col_offset, v2.end_lineno or v2.lineno,
                                  v2.end_col_offset or v2.col_offset, _literal(params[key.value])))
    missing = [t for t in read_policy_source(code).tunables
               if t.name in params and t.name not in declared]
    if missing and target is not None and target.end_lineno is not None:
        lines = code.splitlines(keepends=True)
        close_line, close_col = target.end_lineno, (target.end_col_offset or 1) - 1
        before = "".join(lines[:close_line - 1]) + lines[close_line - 1].encode()[
            :close_col].decode()
        comma = "" if not target.keys or before.rstrip().endswith((",", "{")) else ","
        entries = "".join(
            f'\n    "{t.name}": {{"type": "{t.type}", "low": {_literal(t.low, t.type)}, '
            f'"high": {_literal(t.high, t.type)}, "log": {t.log}, '
            f'"default": {_literal(params[t.name], t.type)}}},  # inherited, tuned'
            for t in missing)
        edits.append((close_line, close_col, close_line, close_col, comma + entries + "\n"))
    lines = code.splitlines(keepends=True)
    for lineno, col, end_lineno, end_col, text in sorted(edits, reverse=True):
        first, last = lines[lineno - 1], lines[end_lineno - 1]
        fb, lb = first.encode(), last.encode()  # ast offsets are in UTF-8 bytes
        lines[lineno - 1:end_lineno] = [fb[:col].decode() + text + lb[end_col:].decode()]
    return "".join(lines)


def _literal(value: Any, kind: str | None = None) -> str:
    if kind == "int" or (kind is None and isinstance(value, int) and not isinstance(value, bool)):
        return repr(int(round(value)))
    return repr(float(value))


def versions() -> dict[str, str]:
    import numpy
    import optuna

    from autotuner import __version__

    return {"autotuner": __version__, "python": sys.version.split()[0],
            "numpy": numpy.__version__, "optuna": optuna.__version__,
            "platform": platform.platform()}


def write_promotion(
    campaign_dir: Path,
    cfg: CampaignConfig,
    candidate_id: str,
    candidate: PolicyRef,
    baseline: PolicyRef,
    baseline_name: str,
    result: GateResult,
    previous: str | None,
) -> tuple[Path, Path]:
    """Write ``promotions/<id>.py`` (tuned defaults baked in) and ``promotions/<id>.json``."""
    out = campaign_dir / "promotions"
    out.mkdir(parents=True, exist_ok=True)
    policy_path = out / f"{candidate_id}.py"
    baked = bake_params(candidate.code, candidate.params)
    _atomic_write(policy_path, baked)
    baseline_path = out / "baseline.py"
    _atomic_write(baseline_path, bake_params(baseline.code, baseline.params))
    record_path = out / f"{candidate_id}.json"
    comp = result.baseline
    record = {
        "kind": "autotuner promotion",
        "campaign": cfg.name,
        "candidate": candidate_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "claim": (f"capacity under SLO on {len(result.instances)} held-out workload instances: "
                  f"mean gain {comp.mean_gain:+.1%} over the tuned {baseline_name} baseline, "
                  f"one-sided {result.confidence:.0%} lower bound {comp.lower_bound:+.1%} "
                  f"(margin {comp.margin:.0%})"),
        "reproduce": f"autotuner replay {record_path}",
        "policy_file": policy_path.name,
        "policy_sha256": sha256(baked),
        "code_sha256": sha256(candidate.code),
        "params": dict(candidate.params),
        "baseline": {"name": baseline_name, "file": baseline_path.name,
                     "params": dict(baseline.params), "code_sha256": sha256(baseline.code)},
        "previous_promoted": previous,
        "cluster": to_dict(cfg.cluster),
        "slo": to_dict(cfg.slo),
        "gate": to_dict(cfg.gate),
        "instances": result.instances,
        "statistics": result.to_dict(),
        "versions": versions(),
    }
    _atomic_write(record_path, json.dumps(json.loads(canonical(record)), indent=2) + "\n")
    return policy_path, record_path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
