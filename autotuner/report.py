"""``autotuner report CAMPAIGN``: one self-contained HTML page and a short Markdown summary.

The report answers, for a reader who was not there: did the search find something, how much
better is it (capacity under SLO on held-out workloads, with confidence intervals), where does
the gain come from (latency distributions and the capacity curve), is it more than a known
router or chunk schedule (every reference policy in ``baselines/``, tuned the same way as the
baseline), how far is it from what the hardware could do (a roofline upper bound), and what did
the search cost (failures, tokens, dollars, time).

Every number comes from the trusted side: capacities and runs go through the same ``Job`` /
``Evaluator`` path (sandbox + trusted replay) as the campaign and the gate, so results the
campaign already has are read from its evaluation cache rather than recomputed; anything new is
cached in ``report_cache.json`` beside the archive, keyed by the job's own identity, so a second
report costs seconds. The archive and the Optuna journal are only read.

Where the campaign did not tune a reference policy itself (``search.seeds``), the report tunes it
here exactly as the campaign tunes a seed: same training instances, ladder objective against the
tuned baseline, Optuna trial budget, sampler seed and starting point (``autotuner.tune``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from autotuner import archive as A
from autotuner import report_plots as P
from autotuner.archive import Archive, Candidate, canonical, sha256
from autotuner.config import CampaignConfig, ConfigError, load_config
from autotuner.sim.engine import ClusterSpec, SimResult
from autotuner.sim.metrics import SLO, per_request, run_metrics
from autotuner.sim.workload import Workload

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
CACHE_VERSION = 1
# Fairness figures at a policy's own capacity: averaged over instances, or summed (counts).
FAIRNESS_MEANS = ("goodput_tok_s", "longest_wait_s", "max_wait_over_deadline",
                  "late_finish_share", "jain_slowdown")
FAIRNESS_COUNTS = ("starved", "priority_inversions", "unfinished")
# Load factors (of the tuned baseline's capacity) of the capacity-curve sweep.
CURVE_FACTORS = (0.5, 0.7, 0.85, 1.0, 1.15, 1.3, 1.5, 1.75, 2.0)
DASHBOARD_PACKAGE = "optuna-dashboard"


class ReportError(RuntimeError):
    """An expected failure with a message for the user."""


# ------------------------------------------------------------------------------- options
@dataclass
class ReportOptions:
    """What to compute.

    parallelism: simulations at once (default: the campaign's). reference_seeds: how many of the
    held-out seeds the reference comparison uses (0: no reference comparison; None: all of
    them, as the gate). sandbox: isolation backend override. simulator: run jobs with this
    function instead of the sandbox (tests of trusted files only; see ``scoring.in_process``).
    """

    parallelism: int | None = None
    reference_seeds: int | None = 1
    sandbox: str | None = None
    simulator: Any = None
    stream: TextIO | None = None


# ------------------------------------------------------------------------------- cache
class ReportCache:
    """``report_cache.json``: evaluation results by job key, plus derived data (CDFs, tuned
    references), each under a key that hashes every input that could change it."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = {"version": CACHE_VERSION, "evaluations": {}, "derived": {}}
        if path.is_file():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
                if loaded.get("version") == CACHE_VERSION:
                    self.data = loaded
                    self.data.setdefault("evaluations", {})
                    self.data.setdefault("derived", {})
            except (OSError, ValueError):
                pass  # an unreadable cache is only a slower report
        self._dirty = False
        self._saved_at = time.monotonic()

    def get(self, kind: str, key: str) -> Any:
        return self.data["derived"].get(f"{kind}:{key}")

    def put(self, kind: str, key: str, value: Any) -> None:
        self.data["derived"][f"{kind}:{key}"] = json.loads(canonical(value))
        self._dirty = True
        self.save(force=True)

    def save(self, force: bool = False) -> None:
        if not self._dirty or (not force and time.monotonic() - self._saved_at < 2.0):
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, separators=(",", ":")), encoding="utf-8")
        tmp.replace(self.path)
        self._dirty = False
        self._saved_at = time.monotonic()


class _EvaluationCache:
    """What ``scoring.Evaluator`` needs of an archive: results found in the campaign's own
    evaluation cache (read only) or in the report's; new ones go to the report's."""

    def __init__(self, archive: Archive, cache: ReportCache):
        self.archive = archive
        self.cache = cache

    def get_evaluations(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        found = self.archive.get_evaluations(keys)
        mine = self.cache.data["evaluations"]
        for k in keys:
            if k not in found and k in mine:
                found[k] = mine[k]
        return found

    def put_evaluation(self, key: str, *, result: Mapping[str, Any], **_: Any) -> None:
        self.cache.data["evaluations"][key] = json.loads(canonical(result))
        self.cache._dirty = True
        self.cache.save()


# ------------------------------------------------------------------------------- headroom
def capacity_bound(cluster: ClusterSpec, wl: Workload, slo: SLO | None = None,
                   share: float = 0.9) -> dict[str, Any]:
    """An upper bound on the capacity under SLO of any policy on this cluster and workload.

    Idealised service: every replica runs full-budget iterations (``max_batch_tokens``
    tokens), so each token costs its share of the roofline's ideal batch (fixed costs and
    weight reads spread over the whole budget); attention costs its exact (query, key) pairs
    and decode KV reads; every shared prompt prefix is computed once in the whole cluster;
    KV-cache capacity never limits the batch; and the costliest ``1 - share`` of requests are
    never served (the SLO only asks for ``share``). Each request is then a fixed amount of
    replica time, its prefill part due by arrival + the TTFT target and the rest by arrival +
    TTFT + the TPOT target per decode token.

    ``steady_rate``: the sustained rate at which the replicas are never idle and nothing waits.
    ``rate``: the bound for this finite instance (what the measured capacity is compared with):
    the highest arrival rate at which, for every deadline, the work due by then fits in the
    replica time since 0 (a necessary condition, found by bisection). It can exceed the steady
    rate, since a finite run may finish work after its last arrival. Rates in requests/s.
    """
    slo = slo or SLO()
    cost = cluster.cost_model()
    B = int(cluster.max_batch_tokens)
    prompt = wl.prompt.astype(np.float64)
    out = wl.output.astype(np.float64)
    hit = np.zeros(len(wl))
    if wl.prefix is not None:
        seen: set[int] = set()
        pbt = int(wl.prefix_block_tokens)
        for i, ids in enumerate(wl.prefix):
            h = 0
            for b in ids:
                if b not in seen:
                    break
                h += 1
            hit[i] = min(h * pbt, prompt[i] - 1)
            seen.update(ids)
    pre = prompt - hit  # prompt tokens that must be computed
    pairs = (prompt * (prompt + 1) - hit * (hit + 1)) / 2.0  # causal attention (query, key) pairs
    dec = out - 1.0  # decode iterations after the first token
    ctx = dec * prompt + dec * (dec + 1) / 2.0  # KV tokens the decodes read, summed
    # Marginal costs at the ideal (full-budget) iteration, from the cost model itself.
    t_full = cost.iteration_time(B, 0.0, 0, 0)
    per_token = t_full / B
    big = float(B) * B * 64  # enough pairs to sit on the compute side of the roofline
    per_pair = (cost.iteration_time(B, 2 * big, 0, 0) - cost.iteration_time(B, big, 0, 0)) / big
    per_logit = (cost.iteration_time(B // 2, 0.0, B - B // 2, 0) - t_full) / (B - B // 2)
    per_ctx = cost.decode_coeffs(1)[1]
    prefill_work = pre * per_token + pairs * per_pair
    decode_work = dec * (per_token + max(per_logit, 0.0)) + ctx * per_ctx
    keep = np.sort(np.argsort(prefill_work + decode_work, kind="stable")[
        : max(1, math.ceil(share * len(wl)))])
    mean_work = float((prefill_work + decode_work)[keep].mean())
    steady = cluster.replicas / mean_work / share if mean_work > 0 else math.inf
    rate = _finite_bound(wl, keep, prefill_work, decode_work, slo.ttft_s,
                         slo.ttft_s + dec * slo.tpot_s, cluster.replicas, steady)
    return {
        "rate": rate, "steady_rate": steady, "iteration_tokens": B, "iteration_s": t_full,
        "request_s": mean_work, "decode_share": float(dec[keep].sum()
                                                      / max((pre + dec)[keep].sum(), 1.0)),
        "prefix_hit_share": float(hit[keep].sum() / max(prompt[keep].sum(), 1.0)),
    }


def _finite_bound(wl: Workload, keep: np.ndarray, first: np.ndarray, rest: np.ndarray,
                  first_slack: float, rest_slack: np.ndarray, replicas: int, start: float
                  ) -> float:
    """Highest rate at which the kept requests' work (replica-seconds: ``first`` due by arrival
    + ``first_slack``, ``rest`` by arrival + ``rest_slack``) can meet every deadline on
    ``replicas`` replicas counted from time 0 (inf if even simultaneous arrivals could)."""
    rate0 = wl.rate
    if not (len(keep) and math.isfinite(rate0) and rate0 > 0 and math.isfinite(start)):
        return start
    a0 = wl.arrival[keep] * rate0  # arrivals at 1 request/s
    work = np.concatenate([first[keep], rest[keep]])
    slack = np.concatenate([np.full(len(keep), first_slack), rest_slack[keep]])
    arrive = np.concatenate([a0, a0])

    def feasible(rate: float) -> bool:
        due = arrive / rate + slack
        order = np.argsort(due, kind="stable")
        return bool(np.all(np.cumsum(work[order]) <= replicas * due[order] * (1 + 1e-12)))

    lo = hi = max(start, 1e-9)
    while feasible(hi):
        lo, hi = hi, hi * 2
        if hi > 1e4 * start:
            return math.inf
    while not feasible(lo):
        hi, lo = lo, lo / 2
        if lo < 1e-9 * start:
            return 0.0
    for _ in range(60):
        if hi - lo <= 1e-6 * lo:
            break
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if feasible(mid) else (lo, mid)
    return lo


# ------------------------------------------------------------------------------- statistics
def bootstrap_interval(values: Sequence[float], confidence: float, samples: int, seed: int
                       ) -> tuple[float, float, float]:
    """Mean and the percentile-bootstrap interval [1 - confidence, confidence] of the mean
    (the lower end is the gate's one-sided bound when given the gate's seed and samples)."""
    x = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    if x.size == 1:
        return float(x[0]), -math.inf, math.inf
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(samples, x.size))
    means = x[idx].mean(axis=1)
    return (float(x.mean()), float(np.quantile(means, 1.0 - confidence)),
            float(np.quantile(means, confidence)))


def gain_interval(gains: Sequence[float], confidence: float, samples: int, seed: int
                  ) -> tuple[float, float, float]:
    """The gate's statistic for capacity gains: the geometric mean of the ratios (minus one)
    and its bootstrap interval, resampled in log space (the lower end is the gate's bound)."""
    from autotuner.gate import MIN_RATIO

    logs = [math.log(max(1.0 + g, MIN_RATIO)) for g in gains if math.isfinite(g)]
    mean, lo, hi = bootstrap_interval(logs, confidence, samples, seed)
    return tuple(math.exp(x) - 1.0 if not math.isnan(x) else x  # type: ignore[return-value]
                 for x in (mean, lo, hi))


def _gain(a: float, b: float) -> float:
    return a / b - 1.0 if b > 0 else (0.0 if a <= 0 else math.inf)


def _pct(x: float | None, signed: bool = True) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:+.1%}" if signed else f"{x:.1%}"


def _share(x: float | None) -> str:
    """A share without spurious decimals: 90%, 12.5%."""
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.0%}" if abs(x * 100 - round(x * 100)) < 1e-9 else f"{x:.1%}"


def _num(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.{digits}g}"


def _dur(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in sorted(params.items())) or "(no tunables)"


# ------------------------------------------------------------------------------- trusted runs
def _trusted_result(code: str, params: Mapping[str, Any], cfg: CampaignConfig, wl: Workload,
                    name: str, simulator: Any) -> tuple[SimResult | None, str | None]:
    """One run with per-request timestamps, through the sandbox and the trusted replay."""
    from autotuner.scoring import horizon_for

    slo = cfg.slo.slo()
    cluster = cfg.cluster.spec()
    horizon = horizon_for(wl, slo)
    if simulator is not None:  # tests: trusted files in this process
        from autotuner.policy import PolicyFileError, read_policy_source
        from autotuner.simulation import run_policy

        try:
            result = run_policy(read_policy_source(code, name), cluster, wl, params=params,
                                horizon=horizon)
        except (PolicyFileError, Exception) as exc:  # noqa: BLE001 - reported, not raised
            return None, f"{type(exc).__name__}: {exc}"
        return result, result.error
    from autotuner.evaluate import evaluate
    from autotuner.isolation import Limits
    from autotuner.scoring import _backend

    sb = cfg.sandbox
    limits = Limits(wall_s=sb.timeout_s, cpu_s=max(1, int(sb.timeout_s)),
                    memory_bytes=int(sb.memory_mb) << 20)
    ev = evaluate(code, name=name, params=params, cluster=cluster, workload=wl, slo=slo,
                  horizon=horizon, sandbox=_backend(sb.backend), limits=limits)
    if not ev.ok:
        return None, "; ".join(ev.reasons) or ev.verdict
    return ev.result, None


def _distributions(wl: Workload, result: SimResult, slo: SLO) -> dict[str, Any]:
    """Latency CDFs of one run, with its SLO shares (the one definition: ``run_metrics``)."""
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


# ------------------------------------------------------------------------------- the builder
@dataclass
class _Policy:
    """A policy as the report measures it (code + tuned params) and what it found."""

    key: str  # "baseline", "subject" or "ref:<stem>"
    label: str
    code: str
    params: dict[str, Any]
    color: str
    note: str = ""
    caps: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    at_capacity: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> run metrics

    def measured(self, results: Mapping[str, Mapping[str, Any]]) -> None:
        """Take capacity results (label -> capacity job result): capacities, the run metrics
        at each capacity, and the first error."""
        self.caps = {k: float(r.get("capacity") or 0.0) for k, r in results.items()}
        self.at_capacity = {k: dict(r.get("at_capacity") or {}) for k, r in results.items()}
        errs = [f"{k}: {r['error']}" for k, r in results.items() if r.get("error")]
        self.error = errs[0] if errs else None


class _Builder:
    def __init__(self, folder: Path, cfg: CampaignConfig, archive: Archive, opts: ReportOptions,
                 cache: ReportCache):
        from autotuner.scoring import Evaluator

        self.folder, self.cfg, self.archive, self.opts, self.cache = (folder, cfg, archive,
                                                                      opts, cache)
        self.stream = opts.stream or sys.stderr
        self.evaluator = Evaluator(_EvaluationCache(archive, cache),
                                   opts.parallelism or cfg.parallelism, opts.simulator)
        self.t0 = time.perf_counter()
        self.notes: list[str] = []

    def log(self, text: str) -> None:
        self.stream.write(f"report [{time.perf_counter() - self.t0:5.1f}s] {text}\n")
        self.stream.flush()

    def close(self) -> None:
        self.evaluator.close()
        self.cache.save(force=True)

    # -- measurements --------------------------------------------------------------------
    def capacities(self, pol: _Policy, insts: Sequence[Any], hints: Mapping[str, float] | None,
                   ) -> dict[str, dict[str, Any]]:
        from autotuner.scoring import capacity_jobs

        jobs = capacity_jobs(pol.code, pol.params, insts, self.cfg, hints,
                             name=f"{pol.key}.py")
        results = self.evaluator.evaluate(jobs, pol.key)
        return {i.label: r for i, r in zip(insts, results, strict=True)}

    def runs(self, pol: _Policy, inst: Any, rates: Sequence[float]) -> list[dict[str, Any]]:
        from autotuner.scoring import Job

        cfg = self.cfg
        jobs = [Job(pol.code, dict(pol.params), inst, "run", r, cfg.cluster, cfg.slo,
                    cfg.sandbox, name=f"{pol.key}.py") for r in rates]
        return self.evaluator.evaluate(jobs, pol.key)

    def distributions(self, pol: _Policy, inst: Any, rate: float) -> dict[str, Any]:
        from autotuner.scoring import Job, build_workload

        cfg = self.cfg
        key = Job(pol.code, dict(pol.params), inst, "run", rate, cfg.cluster, cfg.slo).key()
        hit = self.cache.get("distributions", key)
        if hit is not None:
            return hit
        wl = build_workload(inst).with_rate(rate)
        result, error = _trusted_result(pol.code, pol.params, cfg, wl, f"{pol.key}.py",
                                        self.opts.simulator)
        out = {"error": error} if result is None else {"error": error,
                                                        **_distributions(wl, result,
                                                                         cfg.slo.slo())}
        self.cache.put("distributions", key, out)
        return out

    def tune_reference(self, stem: str, code: str, base: Mapping[str, Any],
                       train: Sequence[Any]) -> dict[str, Any]:
        """Tune a reference exactly as the campaign tunes a seed (without its screening)."""
        import optuna

        from autotuner.policy import read_policy_source
        from autotuner.yardstick import from_campaign, tune_reference

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


def _campaign_files(folder: Path) -> tuple[Path, Path]:
    db = folder / "archive.sqlite"
    if not db.is_file():
        raise ReportError(f"{folder}: no archive.sqlite (the campaign never started)")
    return db, folder / "config.toml"


def _pick_subject(archive: Archive, folder: Path) -> tuple[Candidate | None, str,
                                                            dict[str, Any] | None]:
    """The promoted policy, else the best gated candidate, else the best on training.
    Returns (candidate, how it was chosen, promotion record or None)."""
    promoted = archive.get_meta("promoted")
    if promoted:
        cand = archive.get(promoted)
        path = folder / "promotions" / f"{promoted}.json"
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        return cand, "promoted", record
    scored = [c for c in archive.candidates() if c.promotable and c.code]
    gated = [c for c in scored if c.gate and (c.gate.get("comparisons") or [])]
    if gated:
        best = max(gated, key=lambda c: (c.gate["comparisons"][0].get("mean_gain") or -1e9,
                                         -c.seq))
        return best, "best candidate at the gate (refused)", None
    tuned = [c for c in scored if c.train_score is not None]
    if tuned:
        best = max(tuned, key=lambda c: (c.train_score or 0.0, -c.seq))
        return best, "best candidate on training (never gated)", None
    return None, "", None


def _progress(archive: Archive) -> dict[str, Any]:
    """Best training objective against proposals made, from the archive (proposal order)."""
    xs, best_y, pts_x, pts_y, labels = [], [], [], [], []
    best = -math.inf
    made = 0
    for c in archive.candidates():
        if c.origin != "proposal":
            continue
        made += 1
        score = c.train_score
        if score is not None and math.isfinite(score):
            pts_x.append(made)
            pts_y.append(score)
            labels.append(f"{c.id}: {score:+.1%} ({c.status})")
            best = max(best, score)
        xs.append(made)
        best_y.append(best if math.isfinite(best) else math.nan)
    seeds = [(c.id, c.train_score) for c in archive.candidates(origin="seed")
             if c.train_score is not None]
    return {"x": xs, "best": best_y, "px": pts_x, "py": pts_y, "labels": labels,
            "seeds": seeds, "made": made}


def _spend(archive: Archive, folder: Path) -> dict[str, Any]:
    s = archive.spend()
    row = archive.conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(seconds), 0) FROM evaluations").fetchone()
    trials = None
    journal = folder / "optuna.journal"
    if journal.is_file():
        try:
            import optuna

            from autotuner.tune import open_storage

            storage = open_storage(journal)
            trials = sum(x.n_trials for x in optuna.study.get_all_study_summaries(storage))
        except Exception:  # noqa: BLE001 - the count is a nicety
            trials = None
    statuses: dict[str, int] = {}
    for c in archive.candidates():
        statuses[c.status] = statuses.get(c.status, 0) + 1
    return {**s, "elapsed_s": float(archive.get_meta("elapsed_s", 0.0) or 0.0),
            "evaluations": int(row[0]), "simulation_s": float(row[1]), "trials": trials,
            "candidates": archive.count(), "proposals": archive.count(origin="proposal"),
            "statuses": statuses}


def _failures(archive: Archive) -> dict[str, Any]:
    from autotuner.archive import failure_category

    counts = archive.failures_by_reason()
    examples: dict[str, list[str]] = {}
    for c in archive.candidates(status=(A.PROPOSAL_FAILED, A.FAILED, A.SCREENED_OUT)):
        cat = failure_category(c.status, c.failure)
        if len(examples.setdefault(cat, [])) < 2:
            examples[cat].append(f"{c.id}: {c.failure}"[:300])
    gate_refused = archive.candidates(status=A.GATE_FAILED)
    if gate_refused:
        counts["refused by the gate"] = len(gate_refused)
        examples["refused by the gate"] = [f"{c.id}: {c.failure}"[:300]
                                           for c in gate_refused[:2]]
    return {"counts": counts, "examples": examples}


def dashboard_command(folder: Path) -> str:
    """The one command that opens the campaign's Optuna studies in optuna-dashboard
    (it reads a JournalStorage file given as its path)."""
    try:
        shown = os.path.relpath(folder / "optuna.journal")
        if shown.startswith(".."):
            shown = str(folder / "optuna.journal")
    except ValueError:
        shown = str(folder / "optuna.journal")
    return f"optuna-dashboard {shown}"


def _reference_stems(cfg: CampaignConfig) -> list[str]:
    from autotuner.resources import asset_dir

    base = Path(cfg.objective.baseline).stem
    return sorted(p.stem for p in asset_dir("baselines").glob("*.py") if p.stem != base)


def collect(folder: Path, opts: ReportOptions | None = None) -> dict[str, Any]:
    """Everything the report shows, as plain data plus the SVG plots."""
    opts = opts or ReportOptions()
    db, config_path = _campaign_files(folder)
    cfg = load_config(config_path, name=folder.name, results_dir=str(folder.parent))
    if opts.sandbox:
        from dataclasses import replace

        cfg = replace(cfg, sandbox=replace(cfg.sandbox, backend=opts.sandbox))
    archive = Archive(db)
    cache = ReportCache(folder / "report_cache.json")
    b = _Builder(folder, cfg, archive, opts, cache)
    try:
        return _collect(b, folder, cfg, archive)
    finally:
        b.close()
        archive.close()


def _collect(b: _Builder, folder: Path, cfg: CampaignConfig, archive: Archive
             ) -> dict[str, Any]:
    from autotuner.gate import compare
    from autotuner.review import candidate_diff
    from autotuner.scoring import Instance, build_workload, split_instances

    c = cfg.cluster
    data: dict[str, Any] = {
        "campaign": cfg.name, "folder": str(folder), "generated": time.strftime(
            "%Y-%m-%d %H:%M:%S %Z"), "phase": archive.get_meta("phase", "?"),
        "cluster": f"{c.replicas} x {c.model} on {c.gpu} (tp={c.tp}), max "
                   f"{c.max_batch_tokens} tokens per iteration",
        "slo": cfg.slo, "share": cfg.slo.share, "gate": cfg.gate,
        "workloads": ", ".join(cfg.workloads.scenarios + tuple(
            Path(t).name for t in cfg.workloads.traces)),
        "budget": cfg.budget, "dashboard": dashboard_command(folder),
        "dashboard_package": DASHBOARD_PACKAGE, "plots": {}, "notes": b.notes,
    }
    plots: dict[str, str] = data["plots"]

    # -- search progress, failures, spend: the archive alone
    prog = _progress(archive)
    data["progress"] = prog
    data["failures"] = _failures(archive)
    data["spend"] = _spend(archive, folder)
    promoted_list = archive.get_meta("promotions", []) or []
    data["promotions"] = promoted_list
    series = [P.Series("best so far", prog["x"], prog["best"], P.COLORS["promoted"], step=True),
              P.Series("tuned proposal", prog["px"], prog["py"], P.COLORS["muted"], line=False,
                       labels=prog["labels"])]
    rules = [P.Rule(0.0, "tuned baseline", "y", P.COLORS["baseline"])]
    for k, (sid, score) in enumerate(prog["seeds"]):
        rules.append(P.Rule(score, sid.replace("seed-", "seed "), "y", P.PALETTE[k % 7], "2,3"))
    plots["progress"] = P.line_plot(
        "plot-progress", series, rules=rules,
        title="Best training objective against proposals made",
        x_label="proposals made", y_label="objective vs tuned baseline",
        y_fmt=P.fmt_percent, x_range=(0.0, max(1.0, float(prog["made"]))), width=1000)
    plots["failures"] = P.hbar_plot("plot-failures", list(data["failures"]["counts"].items()),
                                    title="Failed candidates by reason")

    base_meta = archive.get_meta("baseline")
    if not base_meta:
        data["state"] = "no-baseline"
        b.notes.append("The tuned baseline is not in the archive yet (the campaign is still in "
                       "its baseline phase), so there is nothing to compare.")
        return _finish(b, data)
    baseline = _Policy("baseline", f"tuned {base_meta['name']}", base_meta["code"],
                       dict(base_meta["params"]), P.COLORS["baseline"])
    data["baseline"] = {"name": base_meta["name"], "params": baseline.params,
                        "params_text": _params_text(baseline.params)}

    subject_cand, how, record = _pick_subject(archive, folder)
    data["state"] = "promoted" if how == "promoted" else ("candidate" if subject_cand else
                                                          "nothing")
    data["how"] = how
    if record is not None:
        insts = [Instance.from_dict(d) for d in record["instances"]]
        data["claim"] = record.get("claim")
        data["record"] = str(folder / "promotions" / f"{record['candidate']}.json")
    elif subject_cand is not None and subject_cand.gate:
        insts = [Instance.from_dict(d) for d in subject_cand.gate["instances"]]
    else:
        insts = split_instances(cfg)["heldout"]

    b.log(f"held-out capacity of the tuned baseline on {len(insts)} instances")
    baseline.measured(b.capacities(baseline, insts, None))

    subject: _Policy | None = None
    if subject_cand is not None:
        label = (f"promoted {subject_cand.id}" if data["state"] == "promoted"
                 else f"best candidate {subject_cand.id}")
        subject = _Policy("subject", label, subject_cand.code or "", dict(subject_cand.params),
                          P.COLORS["promoted"])
        data["subject"] = {"id": subject_cand.id, "label": label,
                           "params_text": _params_text(subject.params),
                           "train": subject_cand.train_score,
                           "validation": subject_cand.validation_score,
                           "lineage": [x.id for x in archive.lineage(subject_cand.id)],
                           "status": subject_cand.status}
        try:
            data["diff"] = candidate_diff(archive, subject_cand, "baseline")
        except Exception as exc:  # noqa: BLE001 - a missing diff must not sink the report
            data["diff"] = f"(no diff: {exc})"
        b.log(f"held-out capacity of {label}")
        subject.measured(b.capacities(subject, insts, baseline.caps))

    # -- per-workload gains with confidence intervals (the gate's statistics)
    g = cfg.gate
    if subject is not None:
        comp = compare(subject.caps, baseline.caps, "baseline", g, cfg.seed)
        recorded = None
        if record is not None:
            recorded = record["statistics"]["comparisons"][0]
        elif subject_cand is not None and subject_cand.gate:
            recorded = subject_cand.gate["comparisons"][0]
        if recorded is not None:
            same = all(abs(comp.capacities[k][0] - v[0]) <= 1e-9 * max(1.0, v[0])
                       and abs(comp.capacities[k][1] - v[1]) <= 1e-9 * max(1.0, v[1])
                       for k, v in recorded["capacities"].items() if k in comp.capacities)
            data["reproduced"] = same
            if not same:
                b.notes.append("The re-measured held-out capacities differ from the gate's "
                               "record (see `autotuner replay` of the record).")
        mean, lo, hi = gain_interval(list(comp.gains.values()), g.confidence, g.bootstrap,
                                     cfg.seed)
        fams: dict[str, list[tuple[str, float, float, float]]] = {}
        for inst in insts:
            lab = inst.label
            cap_s, cap_b = subject.caps.get(lab, 0.0), baseline.caps.get(lab, 0.0)
            fams.setdefault(inst.family, []).append((lab, cap_s, cap_b, _gain(cap_s, cap_b)))
        fam_rows = []
        bars = []
        for k, (fam, rows) in enumerate(fams.items()):
            gains = [r[3] for r in rows]
            m, flo, fhi = gain_interval(gains, g.confidence, g.bootstrap, cfg.seed + 7 + k)
            fam_rows.append({"family": fam, "mean": m, "lo": flo, "hi": fhi, "rows": rows,
                             "cap_subject": float(np.mean([r[1] for r in rows])),
                             "cap_baseline": float(np.mean([r[2] for r in rows]))})
            bars.append(P.Bar(fam, m, flo if math.isfinite(flo) else None,
                              fhi if math.isfinite(fhi) else None, P.COLORS["promoted"],
                              gains, f"{fam}: mean {_pct(m)} [{_pct(flo)}, {_pct(fhi)}]"))
        bars.append(P.Bar("all (gate)", mean, lo, hi, P.COLORS["bound"],
                          list(comp.gains.values()),
                          f"all: mean {_pct(mean)}, {g.confidence:.0%} lower bound "
                          f"{_pct(comp.lower_bound)}"))
        data["gains"] = {"mean": comp.mean_gain, "lower_bound": comp.lower_bound, "lo": lo,
                         "hi": hi, "margin": g.margin, "passed": comp.passed,
                         "families": fam_rows, "instances": len(insts)}
        plots["gains"] = P.bar_plot(
            "plot-gains", bars, y_fmt=P.fmt_percent,
            title=f"Held-out capacity gain over the tuned baseline per workload "
                  f"({2 * g.confidence - 1:.0%} bootstrap intervals; dots: seeds)",
            y_label="capacity gain", width=1000,
            rules=[P.Rule(g.margin, f"gate margin {g.margin:.0%}", "y", P.COLORS["bound"])])

    data["fairness"] = _fairness(b, insts, [baseline] + ([subject] if subject else []))
    # -- the capacity curve and latency CDFs on one held-out instance
    focus = next((i for i in insts if i.family == "mixed"), insts[0] if insts else None)
    policies = [baseline] + ([subject] if subject is not None else [])
    if focus is not None and baseline.caps.get(focus.label, 0) > 0:
        cap0 = baseline.caps[focus.label]
        rates = sorted({round(cap0 * f, 9) for f in CURVE_FACTORS}
                       | ({round(subject.caps[focus.label], 9)}
                          if subject is not None and subject.caps.get(focus.label) else set()))
        b.log(f"capacity curve on {focus.label}: {len(rates)} rates x {len(policies)} policies")
        curve = {p.key: b.runs(p, focus, rates) for p in policies}
        wl = build_workload(focus)
        bound = capacity_bound(cfg.cluster.spec(), wl, cfg.slo.slo(), cfg.slo.share)
        data["focus"] = {"label": focus.label, "rate": cap0, "bound": bound["rate"],
                         "steady": bound["steady_rate"]}
        gp_series, att_series = [], []
        for p in policies:
            res = curve[p.key]
            gp_series.append(P.Series(p.label, rates, [r.get("goodput_rps", math.nan)
                                                       for r in res], p.color, points=True))
            att_series.append(P.Series(p.label, rates, [r.get("attainment", math.nan)
                                                        for r in res], p.color, points=True))
        gp_series.append(P.Series("offered load (all within SLO)", [0, rates[-1]],
                                  [0, rates[-1]], P.COLORS["muted"], dash="4,4", width=1))
        cap_rules = [P.Rule(p.caps[focus.label], f"{p.label.split(' ')[0]} capacity", "x",
                            p.color)
                     for p in policies if p.caps.get(focus.label)]
        x_hi = rates[-1] * 1.03
        bound_rule = [P.Rule(v, name, "x", P.COLORS["bound"], dash) for v, name, dash in (
            (bound["rate"], "upper bound", "5,4"),
            (bound["steady_rate"], "sustained roofline", "2,3")) if v <= x_hi]
        data["curve"] = {"rates": rates, "results": {p.key: [
            {k: r.get(k) for k in ("goodput_rps", "attainment", "ttft_p90", "tpot_p90",
                                   "error")} for r in curve[p.key]] for p in policies}}
        off = "" if bound["rate"] <= x_hi else \
            f" (upper bound {bound['rate']:.3g} req/s off the chart)"
        plots["curve"] = P.line_plot(
            "plot-curve", gp_series, rules=cap_rules + bound_rule,
            title=f"Goodput against offered load on held-out {focus.label}{off}",
            x_label="offered load (requests/s)", y_label="goodput (requests/s within SLO)",
            x_range=(0.0, x_hi), y_zero=True, width=520)
        plots["attainment"] = P.line_plot(
            "plot-attainment", att_series,
            rules=[P.Rule(cfg.slo.share, f"{cfg.slo.share:.0%} target", "y", P.COLORS["bound"])]
            + cap_rules, title=f"SLO attainment against offered load on {focus.label}",
            x_label="offered load (requests/s)", y_label="requests within both SLOs",
            y_fmt=P.fmt_share, x_range=(0.0, x_hi), y_range=(0.0, 1.02), width=520)
        b.log(f"latency distributions on {focus.label} at {cap0:.3g} req/s")
        dists = {p.key: b.distributions(p, focus, cap0) for p in policies}
        data["distributions"] = {p.key: {k: v for k, v in dists[p.key].items()
                                         if k not in ("ttft", "tbt", "tpot")}
                                 for p in policies}
        for metric, slo_v, label in (("ttft", cfg.slo.ttft_s, "TTFT"),
                                     ("tbt", cfg.slo.tpot_s, "time between tokens")):
            ss = []
            for p in policies:
                d = dists[p.key]
                if d.get("error"):
                    b.notes.append(f"{p.label} failed on {focus.label}: {d['error']}")
                    continue
                ss.append(P.Series(p.label, d[metric][0], d[metric][1], p.color))
            target = "TTFT" if metric == "ttft" else "TPOT"
            plots[metric] = P.cdf_plot(
                f"plot-{metric}", ss, x_label=f"{label} (s, log scale)",
                title=f"{label} CDF on {focus.label} at {cap0:.3g} req/s (the tuned "
                      "baseline's capacity)",
                rules=[P.Rule(slo_v, f"{target} SLO {slo_v:g} s", "x", P.COLORS["bound"])],
                width=520)

    # -- references, tuned the same way, on held-out instances
    refs: list[_Policy] = []
    nseeds = b.opts.reference_seeds
    heldout_seeds = list(dict.fromkeys(i.seed for i in insts if not i.trace))
    use_seeds = heldout_seeds if nseeds is None else heldout_seeds[:max(0, nseeds)]
    ref_insts = [i for i in insts if (i.trace and nseeds != 0) or i.seed in use_seeds]
    if nseeds != 0 and ref_insts:
        train = split_instances(cfg)["train"]
        for k, stem in enumerate(_reference_stems(cfg)):
            from autotuner.resources import baseline_path

            code = baseline_path(stem).read_text(encoding="utf-8")
            tuned = b.tune_reference(stem, code, base_meta, train)
            refs.append(_Policy(f"ref:{stem}", stem, code, dict(tuned["params"]),
                                P.PALETTE[k % len(P.PALETTE)],
                                note=f"tuned by {tuned['by']}; training objective "
                                     f"{_pct(tuned.get('value'))}"))
        b.log(f"held-out capacity of {len(refs)} reference policies on {len(ref_insts)} "
              "instances")
        for r in refs:
            r.measured(b.capacities(r, ref_insts, baseline.caps))
    data["reference_instances"] = [i.label for i in ref_insts] if refs else []
    rows, bars = [], []
    for k, p in enumerate(([subject] if subject else []) + refs):
        labels = [i.label for i in ref_insts]
        gains = [_gain(p.caps.get(x, 0.0), baseline.caps.get(x, 0.0)) for x in labels]
        m, lo, hi = gain_interval(gains, g.confidence, g.bootstrap, cfg.seed + 101 + k)
        row = {"label": p.label, "key": p.key, "params": _params_text(p.params),
               "note": p.note, "mean_cap": float(np.mean([p.caps.get(x, 0.0) for x in labels]))
               if labels else math.nan, "gain": m, "lo": lo, "hi": hi, "error": p.error}
        if subject is not None and p is not subject:
            sg = [_gain(subject.caps.get(x, 0.0), p.caps.get(x, 0.0)) for x in labels]
            sm, slo_, shi = gain_interval(sg, g.confidence, g.bootstrap,
                                               cfg.seed + 201 + k)
            row |= {"subject_gain": sm, "subject_lo": slo_, "subject_hi": shi}
        rows.append(row)
        bars.append(P.Bar(p.label, m, lo if math.isfinite(lo) else None,
                          hi if math.isfinite(hi) else None, p.color, gains,
                          f"{p.label}: {_pct(m)} over the tuned baseline"))
    if refs:
        data["references"] = rows
        plots["references"] = P.bar_plot(
            "plot-references", bars, y_fmt=P.fmt_percent, y_label="capacity gain", width=1000,
            title=f"Held-out capacity over the tuned baseline: the "
                  f"{'promoted policy' if data['state'] == 'promoted' else 'candidate'} and "
                  f"every tuned reference ({len(ref_insts)} instances)")

    # -- headroom: a roofline upper bound per held-out instance
    b.log("headroom: roofline upper bound per instance")
    spec = cfg.cluster.spec()
    bounds = {i.label: capacity_bound(spec, build_workload(i), cfg.slo.slo(), cfg.slo.share)
              for i in insts}

    def share_of(p: _Policy, labels: Sequence[str], which: str = "rate") -> float:
        vals = [p.caps.get(x, 0.0) / bounds[x][which] for x in labels
                if math.isfinite(bounds[x][which]) and bounds[x][which] > 0]
        return float(np.mean(vals)) if vals else math.nan

    head_rows = []
    fam_groups: dict[str, list[str]] = {}
    for i in insts:
        fam_groups.setdefault(i.family, []).append(i.label)
    for fam, labs in fam_groups.items():
        row = {"family": fam, "bound": float(np.mean([bounds[x]["rate"] for x in labs])),
               "steady": float(np.mean([bounds[x]["steady_rate"] for x in labs])),
               "request_ms": 1000 * float(np.mean([bounds[x]["request_s"] for x in labs])),
               "decode_share": float(np.mean([bounds[x]["decode_share"] for x in labs])),
               "prefix_hit_share": float(np.mean([bounds[x]["prefix_hit_share"]
                                                  for x in labs])),
               "baseline": float(np.mean([baseline.caps.get(x, 0.0) for x in labs])),
               "baseline_share": share_of(baseline, labs),
               "baseline_steady": share_of(baseline, labs, "steady_rate")}
        if subject is not None:
            row |= {"subject": float(np.mean([subject.caps.get(x, 0.0) for x in labs])),
                    "subject_share": share_of(subject, labs),
                    "subject_steady": share_of(subject, labs, "steady_rate")}
        head_rows.append(row)
    hb = []
    for p in [baseline] + refs + ([subject] if subject else []):
        labs = [x.label for x in (ref_insts if p in refs else insts) if x.label in p.caps]
        shares = [p.caps[x] / bounds[x]["rate"] for x in labs if math.isfinite(bounds[x]["rate"])]
        if shares:
            hb.append(P.Bar(p.label, float(np.mean(shares)), color=p.color, points=shares,
                            note=f"{p.label}: {np.mean(shares):.0%} of the upper bound"))
    all_labels = [i.label for i in insts]
    sustained = [bounds[x]["steady_rate"] / bounds[x]["rate"] for x in all_labels
                 if math.isfinite(bounds[x]["rate"])]
    data["headroom"] = {"rows": head_rows, "ideal_tokens": cfg.cluster.max_batch_tokens,
                        "baseline_share": share_of(baseline, all_labels),
                        "baseline_steady": share_of(baseline, all_labels, "steady_rate")}
    if subject is not None:
        data["headroom"] |= {"subject_share": share_of(subject, all_labels),
                             "subject_steady": share_of(subject, all_labels, "steady_rate")}
    over = [r["family"] for r in head_rows
            if max(r["baseline_steady"], r.get("subject_steady", 0.0)) > 1.0]
    data["headroom"]["over_steady"] = over
    if over:
        b.notes.append(
            "Measured capacity exceeds the sustained roofline rate on " + ", ".join(over)
            + ": these instances are short next to the SLO's slack (TTFT target + TPOT target x "
              "output tokens), so part of what capacity measures there is work finished after "
              "the last arrival. Longer instances measure a sustained rate.")
    rules = [P.Rule(1.0, "upper bound (this instance)", "y", P.COLORS["bound"])]
    if sustained:
        rules.append(P.Rule(float(np.mean(sustained)), "sustained roofline rate (mean)", "y",
                            P.COLORS["muted"]))
    plots["headroom"] = P.bar_plot(
        "plot-headroom", hb, y_fmt=P.fmt_share, y_label="share of the upper bound", width=1000,
        title="Held-out capacity as a share of the roofline upper bound (dots: instances)",
        rules=rules)
    data["policies"] = {p.key: {"label": p.label, "caps": p.caps, "error": p.error}
                        for p in [baseline] + refs + ([subject] if subject else [])}
    return _finish(b, data)


def _fairness(b: _Builder, insts: Sequence[Any], policies: Sequence[_Policy]
              ) -> list[dict[str, Any]]:
    """Per workload family and policy, beside capacity: the fairness figures at the policy's
    own capacity (means over instances; counts summed) and output tokens/s at saturation
    (``SATURATION_FACTOR`` x the tuned baseline's capacity), with the starved requests and
    priority inversions named."""
    from autotuner.review import SATURATION_FACTOR, named_requests

    base = policies[0]
    rows = []
    fams: dict[str, list[Any]] = {}
    for inst in insts:
        fams.setdefault(inst.family, []).append(inst)
    for fam, members in fams.items():
        for p in policies:
            at = [p.at_capacity.get(i.label) or {} for i in members]
            sat = [b.runs(p, i, [SATURATION_FACTOR * base.caps[i.label]])[0] for i in members
                   if base.caps.get(i.label, 0) > 0]
            rows.append({"family": fam, "key": p.key, "label": p.label,
                         "capacity": _mean([p.caps.get(i.label) for i in members]),
                         **{k: _mean([m.get(k) for m in at]) for k in FAIRNESS_MEANS},
                         **{k: int(sum(m.get(k) or 0 for m in at)) for k in FAIRNESS_COUNTS},
                         "saturation_tok_s": _mean([r.get("throughput_tok_s") for r in sat]),
                         "named": "; ".join(f"{i.label}: {n}" for i, m in zip(members, at,
                                                                             strict=True)
                                            if (n := named_requests(m)))})
    return rows


def _mean(values: Sequence[Any]) -> float | None:
    """Mean of the numbers in ``values`` (None when there are none: not measured)."""
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)]
    return float(np.mean(nums)) if nums else None


def _finish(b: _Builder, data: dict[str, Any]) -> dict[str, Any]:
    ev = b.evaluator
    data["compute"] = {"seconds": time.perf_counter() - b.t0, "simulations": ev.ran,
                       "cached": ev.cached}
    return data


# ------------------------------------------------------------------------------- rendering
def _template_env() -> Any:
    import jinja2

    from autotuner.resources import asset_dir

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(asset_dir("prompts"))),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["pct"] = _pct
    env.filters["share"] = _share
    env.filters["num"] = _num
    env.filters["dur"] = _dur
    return env


def _diff_lines(diff: str) -> list[tuple[str, str]]:
    out = []
    for line in diff.splitlines():
        kind = ("head" if line.startswith(("+++", "---")) else "hunk" if line.startswith("@@")
                else "add" if line.startswith("+") else "del" if line.startswith("-")
                else "ctx")
        out.append((kind, line))
    return out


def render_html(data: Mapping[str, Any]) -> str:
    import markupsafe

    env = _template_env()
    plots = {k: markupsafe.Markup(v) for k, v in data["plots"].items()}
    from autotuner.review import SATURATION_FACTOR

    data = {**data, "fairness_intro": FAIRNESS_INTRO.format(factor=SATURATION_FACTOR)}
    return env.get_template("report.html.j2").render(
        d=data, plots=plots, diff_lines=_diff_lines(data.get("diff") or ""))


def render_markdown(data: Mapping[str, Any]) -> str:
    """A short summary: the headline, per-workload gains, references, headroom, spend."""
    lines = [f"# Campaign `{data['campaign']}`", ""]
    state = data.get("state")
    if state == "promoted":
        gains = data["gains"]
        lines += [f"**Promoted {data['subject']['id']}**: held-out capacity under SLO "
                  f"{_pct(gains['mean'])} over the tuned baseline "
                  f"({data['gate'].confidence:.0%} lower bound {_pct(gains['lower_bound'])}, "
                  f"gate margin {data['gate'].margin:.0%}; {gains['instances']} held-out "
                  "instances).", ""]
    elif state == "candidate":
        gains = data["gains"]
        lines += [f"**Nothing was promoted.** Best candidate {data['subject']['id']} "
                  f"({data['how']}): held-out capacity {_pct(gains['mean'])} over the tuned "
                  f"baseline ({data['gate'].confidence:.0%} lower bound "
                  f"{_pct(gains['lower_bound'])}).", ""]
    else:
        lines += ["**Nothing was promoted**, and no candidate has a score to compare yet.", ""]
    lines += [f"Cluster: {data['cluster']}. SLO: TTFT <= {data['slo'].ttft_s:g} s and TPOT <= "
              f"{data['slo'].tpot_s:g} s for {data['share']:.0%} of requests. Capacity = the "
              "highest request rate meeting it.", ""]
    if "baseline" in data:
        lines += [f"Tuned baseline: {data['baseline']['name']} ({data['baseline']['params_text']})"
                  + (f"; {data['subject']['label']}: {data['subject']['params_text']}"
                     if "subject" in data else ""), ""]
    if "gains" in data:
        lines += ["| workload | baseline (req/s) | policy (req/s) | gain | interval |",
                  "|---|---:|---:|---:|---|"]
        for f in data["gains"]["families"]:
            lines.append(f"| {f['family']} | {f['cap_baseline']:.3g} | {f['cap_subject']:.3g} | "
                         f"{_pct(f['mean'])} | [{_pct(f['lo'])}, {_pct(f['hi'])}] |")
        g = data["gains"]
        lines += [f"| **all** | | | **{_pct(g['mean'])}** | [{_pct(g['lo'])}, {_pct(g['hi'])}]"
                  " |", ""]
    lines += _fairness_markdown(data.get("fairness") or [])
    if data.get("references"):
        lines += [f"Against the reference policies in `baselines/`, each tuned like the baseline "
                  f"({len(data['reference_instances'])} held-out instances):", "",
                  "| policy | capacity vs tuned baseline | policy's gain over it |",
                  "|---|---:|---:|"]
        for r in data["references"]:
            lines.append(f"| {r['label']} | {_pct(r['gain'])} | "
                         f"{_pct(r.get('subject_gain')) if 'subject_gain' in r else '-'} |")
        lines.append("")
    h = data.get("headroom")
    if h:
        text = (f"Headroom: the tuned baseline reaches {_share(h['baseline_share'])} of a "
                f"roofline upper bound on capacity ({_share(h['baseline_steady'])} of the "
                "sustained roofline rate)")
        if "subject_share" in h:
            text += (f", the {data['subject']['label']} {_share(h['subject_share'])} "
                     f"({_share(h['subject_steady'])})")
        lines += [text + ".", ""]
        if h.get("over_steady"):
            lines += ["Note: measured capacity exceeds the sustained roofline rate on "
                      + ", ".join(h["over_steady"]) + " (instances short next to the SLO "
                      "slack: part of it is work finished after the last arrival).", ""]
    s = data["spend"]
    fails = ", ".join(f"{k} {v}" for k, v in sorted(data["failures"]["counts"].items()))
    lines += [f"Search: {s['proposals']} proposals, {s['evaluations']} simulations, "
              f"{_dur(s['elapsed_s'])} wall time, {s['tokens']:,} LLM tokens, "
              f"${s['cost_usd']:.2f}. Failures: {fails or 'none'}.", "",
              f"Optuna dashboard: `{data['dashboard']}` (`pip install {DASHBOARD_PACKAGE}`).",
              "", "Plots, diff and details: `report.html`.", ""]
    return "\n".join(lines)


FAIRNESS_INTRO = (
    "Beside capacity, at each policy's own capacity (means over the held-out instances): "
    "token goodput, output tokens/s at saturation ({factor:g} x the tuned baseline's "
    "capacity), the longest wait for a first token (seconds, and as a multiple of the request's "
    "TTFT deadline), the share of requests finished after the last arrival, Jain's index of TTFT "
    "slowdown over prompt-length deciles (1 = every length served alike), and the requests "
    "starved or overtaken (priority inversions), summed over instances.")


def _fairness_markdown(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    from autotuner.review import SATURATION_FACTOR

    if not rows:
        return []

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else fmt.format(v)

    lines = [FAIRNESS_INTRO.format(factor=SATURATION_FACTOR), "",
             "| workload | policy | capacity (req/s) | goodput (tok/s) | tok/s at saturation | "
             "longest wait | wait/deadline | late finish | Jain | starved | inversions |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['label']} | {f(r['capacity'], '{:.3g}')} | "
            f"{f(r['goodput_tok_s'], '{:,.0f}')} | {f(r['saturation_tok_s'], '{:,.0f}')} | "
            f"{f(r['longest_wait_s'], '{:.3g} s')} | {f(r['max_wait_over_deadline'], '{:.3g}x')}"
            f" | {f(r['late_finish_share'], '{:.0%}')} | {f(r['jain_slowdown'], '{:.3f}')} | "
            f"{r['starved']} | {r['priority_inversions']} |")
    named = [f"- {r['family']}, {r['label']}: {r['named']}" for r in rows if r["named"]]
    return lines + ([""] + named if named else []) + [""]


def write_report(folder: Path, out_dir: Path | None = None,
                 opts: ReportOptions | None = None) -> tuple[Path, Path, dict[str, Any]]:
    """Compute and write ``report.html`` and ``report.md``; returns their paths and the data."""
    data = collect(folder, opts)
    out_dir = out_dir or folder
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    for path, text in ((html_path, render_html(data)), (md_path, render_markdown(data))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return html_path, md_path, data


# ------------------------------------------------------------------------------- CLI
def add_report_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``autotuner report``."""
    p.add_argument("campaign", help="campaign name (under results/) or folder")
    p.add_argument("--out", metavar="DIR", help="where report.html and report.md go "
                   "(default: the campaign folder)")
    p.add_argument("--reference-seeds", type=int, default=1, metavar="N",
                   help="held-out seeds the reference-policy comparison uses (default 1; "
                   "0 skips it; -1 uses all, as the gate)")
    p.add_argument("--parallelism", type=int, help="simulations at once (default: the "
                   "campaign's)")
    p.add_argument("--sandbox", choices=["auto", "bwrap", "docker", "process"],
                   help="isolation backend (default: the campaign's)")


def run_report(args: argparse.Namespace) -> int:
    """``autotuner report CAMPAIGN``: exit 0 with the report written, 2 on a usage error."""
    from autotuner.campaign import CampaignError, campaign_dir

    try:
        folder = campaign_dir(args.campaign)
        n = getattr(args, "reference_seeds", 1)
        opts = ReportOptions(parallelism=getattr(args, "parallelism", None),
                             reference_seeds=None if n is not None and n < 0 else n,
                             sandbox=getattr(args, "sandbox", None))
        html_path, md_path, data = write_report(
            folder, Path(args.out) if getattr(args, "out", None) else None, opts)
    except (ReportError, CampaignError, ConfigError, A.ArchiveError) as exc:
        print(f"autotuner report: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    comp = data["compute"]
    print(render_markdown(data).split("\n\n")[1])
    print(f"wrote {html_path} and {md_path} in {comp['seconds']:.0f} s "
          f"({comp['simulations']} simulations run, {comp['cached']} from cache)")
    return EXIT_OK


__all__ = [
    "ReportError", "ReportOptions", "add_report_arguments", "bootstrap_interval",
    "capacity_bound", "collect", "dashboard_command", "render_html", "render_markdown",
    "run_report", "write_report",
]
