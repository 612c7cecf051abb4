"""What the report measures, and only through the campaign's own yardstick: capacities and runs
are ``scoring.Job``s through the same ``Evaluator`` (sandbox + trusted replay) as the campaign
and the gate, so results the campaign already has come from its evaluation cache; references are
tuned by ``yardstick.tune_reference`` exactly as the campaign tunes a seed; latency distributions
are one sandboxed run kept whole (``scoring.sandboxed_evaluation``) for its per-request times.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from autotuner import report_plots as P
from autotuner.archive import Archive, canonical, sha256
from autotuner.config import CampaignConfig
from autotuner.policy import PolicyFileError, read_policy_source
from autotuner.report.cache import EvaluationCache, ReportCache
from autotuner.report.records import Compute, Curve, CurvePoint, Distribution, Focus, Policy
from autotuner.report.roofline import RooflineBound, capacity_bound
from autotuner.scoring import (
    Evaluator,
    Instance,
    Job,
    build_workload,
    capacity_jobs,
    horizon_for,
    sandboxed_evaluation,
)
from autotuner.sim.engine import SimResult
from autotuner.sim.metrics import SLO, per_request, run_metrics
from autotuner.sim.workload import Workload
from autotuner.simulation import run_policy
from autotuner.yardstick import from_campaign, tune_reference

# Load factors (of the tuned baseline's capacity) of the capacity-curve sweep.
CURVE_FACTORS = (0.5, 0.7, 0.85, 1.0, 1.15, 1.3, 1.5, 1.75, 2.0)
CURVE_FIELDS = ("goodput_rps", "attainment", "ttft_p90", "tpot_p90", "error")


@dataclass(frozen=True)
class ReportOptions:
    """What to compute.

    parallelism: simulations at once (default: the campaign's). reference_seeds: how many of the
    held-out seeds the reference comparison uses (0: no reference comparison; None: all of
    them, as the gate). sandbox: isolation backend override. simulator: run jobs with this
    function instead of the sandbox (tests of trusted files only; see ``scoring.in_process``).
    stream: where progress lines go (default stderr).
    """

    parallelism: int | None = None
    reference_seeds: int | None = 1
    sandbox: str | None = None
    simulator: Any = None
    stream: TextIO | None = None


def trusted_result(code: str, params: Mapping[str, Any], cfg: CampaignConfig, wl: Workload,
                   name: str, simulator: Any) -> tuple[SimResult | None, str | None]:
    """One run with per-request timestamps, through the sandbox and the trusted replay
    (``simulator`` given: trusted files in this process, for tests)."""
    slo = cfg.slo.slo()
    cluster = cfg.cluster.spec()
    horizon = horizon_for(wl, slo)
    if simulator is not None:
        try:
            result = run_policy(read_policy_source(code, name), cluster, wl, params=params,
                                horizon=horizon)
        except (PolicyFileError, Exception) as exc:  # noqa: BLE001 - reported, not raised
            return None, f"{type(exc).__name__}: {exc}"
        return result, result.error
    ev = sandboxed_evaluation(code, params, cluster, wl, slo, horizon, cfg.sandbox, name)
    if not ev.ok:
        return None, "; ".join(ev.reasons) or ev.verdict
    return ev.result, None


def distributions(wl: Workload, result: SimResult, slo: SLO) -> dict[str, Any]:
    """Latency CDFs of one run, with its SLO shares (the one definition: ``run_metrics``), as
    the report cache keeps them."""
    r = per_request(wl, result)
    ttft = np.where(np.isnan(r["ttft"]), np.inf, r["ttft"])
    tpot = np.where(np.isnan(r["tpot"]), np.inf, r["tpot"])
    d, n = result.tbt_samples
    m = run_metrics(wl, result, slo)
    tbt_x, tbt_y = P.cdf_points(d, n) if len(d) else ([], [])
    ttft_x, ttft_y = P.cdf_points(ttft)
    tpot_x, tpot_y = P.cdf_points(tpot)
    fin = np.isfinite(ttft)

    def q(values: np.ndarray, p: float) -> float | None:
        v = values[np.isfinite(values)]
        return float(np.percentile(v, p)) if v.size else None

    tbt_w = np.repeat(d, n) if len(d) and int(n.sum()) < 5_000_000 else np.asarray(d)
    return {
        "ttft": [ttft_x, ttft_y], "tbt": [tbt_x, tbt_y], "tpot": [tpot_x, tpot_y],
        "attainment": m.attainment, "ttft_ok": m.ttft_ok, "tpot_ok": m.tpot_ok,
        "tbt_ok": m.tbt_ok,
        "first_token_share": float(fin.mean()) if len(wl) else 0.0,
        "ttft_p50": q(ttft, 50), "ttft_p90": q(ttft, 90), "ttft_p99": q(ttft, 99),
        "tbt_p50": q(tbt_w, 50), "tbt_p90": q(tbt_w, 90), "tbt_p99": q(tbt_w, 99),
    }


def _distribution(cached: Mapping[str, Any]) -> Distribution:
    cdf = {k: (list(cached[k][0]), list(cached[k][1])) for k in ("ttft", "tbt", "tpot")
           if k in cached}
    stats = {k: v for k, v in cached.items() if k not in cdf}
    return Distribution(**stats, cdf=cdf)


@dataclass(frozen=True)
class FocusDetail:
    """One held-out instance in detail: the capacity curve, and the latency distributions at
    the tuned baseline's capacity there (policy key -> distribution)."""

    focus: Focus
    curve: Curve
    distributions: Mapping[str, Distribution]


def focus_instance(insts: Sequence[Instance]) -> Instance | None:
    """The instance the curve and CDFs are drawn on: a mixed one if any (it has the most
    variety), else the first."""
    return next((i for i in insts if i.family == "mixed"), insts[0] if insts else None)


class Measurer:
    """The report's one evaluator, its cache and its progress log."""

    def __init__(self, cfg: CampaignConfig, archive: Archive, opts: ReportOptions,
                 cache: ReportCache):
        self.cfg, self.archive, self.opts, self.cache = cfg, archive, opts, cache
        self.stream = opts.stream or sys.stderr
        self.evaluator = Evaluator(EvaluationCache(archive, cache),
                                   opts.parallelism or cfg.parallelism, opts.simulator)
        self.t0 = time.perf_counter()

    def log(self, text: str) -> None:
        self.stream.write(f"report [{time.perf_counter() - self.t0:5.1f}s] {text}\n")
        self.stream.flush()

    def close(self) -> None:
        self.evaluator.close()
        self.cache.save(force=True)

    def compute(self) -> Compute:
        return Compute(time.perf_counter() - self.t0, self.evaluator.ran, self.evaluator.cached)

    # -- through the evaluator ------------------------------------------------------------
    def capacities(self, pol: Policy, insts: Sequence[Instance],
                   hints: Mapping[str, float] | None,
                   lengths: Mapping[str, int] | None = None) -> Policy:
        """``pol`` with its held-out capacities (``hints``: first brackets, ``lengths``: the
        baseline's run lengths, by label: the gate's jobs, so its cached results)."""
        jobs = capacity_jobs(pol.code, pol.params, insts, self.cfg, hints, name=f"{pol.key}.py",
                             lengths=lengths)
        results = self.evaluator.evaluate(jobs, pol.key)
        return pol.measured({i.label: r for i, r in zip(insts, results, strict=True)})

    def runs(self, pol: Policy, inst: Instance, rates: Sequence[float]) -> list[dict[str, Any]]:
        cfg = self.cfg
        jobs = [Job(pol.code, dict(pol.params), inst, "run", r, cfg.cluster, cfg.slo,
                    cfg.sandbox, name=f"{pol.key}.py") for r in rates]
        return self.evaluator.evaluate(jobs, pol.key)

    def saturation(self, policies: Sequence[Policy], insts: Sequence[Instance], factor: float
                   ) -> dict[str, dict[str, dict[str, Any]]]:
        """Each policy's run at ``factor`` x the tuned baseline's capacity (the first policy),
        per instance where the baseline has one: policy key -> label -> run metrics."""
        base = policies[0]
        loaded = [i for i in insts if base.caps.get(i.label, 0) > 0]
        return {p.key: {i.label: self.runs(p, i, [factor * base.caps[i.label]])[0]
                        for i in loaded} for p in policies}

    # -- one instance in detail ------------------------------------------------------------
    def distribution(self, pol: Policy, inst: Instance, rate: float) -> Distribution:
        cfg = self.cfg
        key = Job(pol.code, dict(pol.params), inst, "run", rate, cfg.cluster, cfg.slo).key()
        hit = self.cache.get("distributions", key)
        if hit is None:
            wl = build_workload(inst).with_rate(rate)
            result, error = trusted_result(pol.code, pol.params, cfg, wl, f"{pol.key}.py",
                                           self.opts.simulator)
            hit = {"error": error} if result is None else {
                "error": error, **distributions(wl, result, cfg.slo.slo())}
            self.cache.put("distributions", key, hit)
        return _distribution(hit)

    def focus(self, policies: Sequence[Policy], insts: Sequence[Instance]
              ) -> FocusDetail | None:
        """The capacity curve and the latency distributions on one held-out instance, for the
        tuned baseline (first) and the subject; None where the baseline has no capacity."""
        inst = focus_instance(insts)
        baseline = policies[0]
        if inst is None or not baseline.caps.get(inst.label, 0) > 0:
            return None
        cap0 = baseline.caps[inst.label]
        rates = sorted({round(cap0 * f, 9) for f in CURVE_FACTORS}
                       | {round(p.caps[inst.label], 9) for p in policies[1:]
                          if p.caps.get(inst.label)})
        self.log(f"capacity curve on {inst.label}: {len(rates)} rates x {len(policies)} "
                 "policies")
        curve = {p.key: tuple(CurvePoint(**{k: r.get(k) for k in CURVE_FIELDS})
                              for r in self.runs(p, inst, rates)) for p in policies}
        bound = self.bound(inst)
        focus = Focus(inst.label, cap0, bound.rate, bound.steady_rate)
        self.log(f"latency distributions on {inst.label} at {cap0:.3g} req/s")
        dists = {p.key: self.distribution(p, inst, cap0) for p in policies}
        return FocusDetail(focus, Curve(tuple(rates), curve), dists)

    def bound(self, inst: Instance) -> RooflineBound:
        cfg = self.cfg
        return capacity_bound(cfg.cluster.spec(), build_workload(inst), cfg.slo.slo(),
                              cfg.slo.share)

    # -- references -----------------------------------------------------------------------
    def tune_reference(self, stem: str, code: str, base: Mapping[str, Any],
                       train: Sequence[Instance]) -> dict[str, Any]:
        """Tune a reference exactly as the campaign tunes a seed (without its screening), or
        take the campaign's tuning where it did one."""
        import optuna

        cfg = self.cfg
        by_campaign = from_campaign(self.archive, f"{stem}.py", code)
        if by_campaign is not None:  # a seed, or a reference the campaign's gate tuned
            return {"params": dict(by_campaign.params), "value": by_campaign.value,
                    "by": by_campaign.by}
        caps, ref = base["caps"]["train"], base["reference"]["train"]
        key = sha256(canonical({
            "code": sha256(code), "trials": cfg.budget.trials, "seed": cfg.seed,
            "train": [i.key() for i in train], "caps": caps, "reference": ref,
            "start": base["params"], "cluster": cfg.cluster.__dict__, "slo": cfg.slo.__dict__,
            "objective": {"ladder": list(cfg.objective.ladder),
                          "goodput": cfg.objective.goodput}}))
        hit = self.cache.get("tuned", key)
        if hit is not None:
            return hit
        source = read_policy_source(code, f"{stem}.py")
        n = cfg.budget.trials if source.tunables else 1
        self.log(f"tuning reference {stem} ({n} Optuna trials on {len(train)} training "
                 "instances, as the campaign tunes a seed)")
        result = tune_reference(self.evaluator, cfg, f"{stem}.py", code, train, caps, ref,
                                base["params"], optuna.storages.InMemoryStorage(), "this report")
        out = {"params": dict(result.params), "value": result.value, "by": result.by}
        self.cache.put("tuned", key, out)
        return out
