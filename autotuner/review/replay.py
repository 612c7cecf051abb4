"""``replay``: re-run a policy with its tuned parameters beside the tuned baseline, on the same
requests, through the same sandbox and trusted scorer the campaign uses (a run at a rate, or the
capacity of both with output tokens/s at saturation beside it). Nothing is cached or written."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotuner.config import (
    SCENARIO_NAMES,
    CampaignConfig,
    SandboxConfig,
    SLOConfig,
    load_config,
)
from autotuner.policy import read_policy_file
from autotuner.resources import baseline_path
from autotuner.review.common import (
    FAIRNESS_COLUMNS,
    SATURATION_FACTOR,
    ReviewError,
    fairness_lines,
    fmt_or_dash,
    gain_text,
    named_requests,
    open_campaign,
    params_text,
    resolve,
)
from autotuner.scoring import Evaluator, Instance, Job, NoCache


@dataclass(frozen=True)
class ReplayTarget:
    name: str
    code: str
    params: dict[str, Any]
    baseline_name: str
    baseline_code: str
    baseline_params: dict[str, Any]
    cfg: CampaignConfig
    note: str = ""


@dataclass(frozen=True)
class ReplayOptions:
    """What to replay on. workloads/traces: default the campaign's scenarios; seed: default
    its first held-out seed; window_s: a trace's (start, end) in seconds; capacity: measure
    both capacities instead of one run at ``rate``; ttft_s/tpot_s/share: SLO overrides."""

    workloads: tuple[str, ...] = ()
    traces: tuple[str, ...] = ()
    seed: int | None = None
    requests: int | None = None
    rate: float | None = None
    window_s: tuple[float, float] | None = None
    capacity: bool = False
    ttft_s: float | None = None
    tpot_s: float | None = None
    share: float | None = None
    sandbox: str | None = None
    parallelism: int | None = None


def replay_target(spec: str) -> ReplayTarget:
    """CAMPAIGN:CANDIDATE, or a policy FILE (a promoted file's folder supplies the tuned
    baseline; elsewhere the baseline file runs at its defaults, which is said)."""
    path = Path(spec)
    if ":" in spec and not path.exists():
        name, _, ref = spec.rpartition(":")
        _, cfg, archive = open_campaign(name)
        with archive:
            cand = resolve(archive, ref)
            base = archive.get_meta("baseline")
            if cand.code is None:
                raise ReviewError(f"{cand.id} has no code ({cand.status}: {cand.failure})")
            if not base:
                raise ReviewError("the campaign's baseline is not tuned yet")
            return ReplayTarget(f"{cfg.name}:{cand.id}", cand.code, dict(cand.params),
                                f"tuned {base['name']}", base["code"], dict(base["params"]), cfg)
    if not path.is_file():
        raise ReviewError(f"{spec}: no such policy file (or CAMPAIGN:CANDIDATE)")
    source = read_policy_file(path)
    sibling = path.parent / "baseline.py"
    cfg_path = path.parent.parent / "config.toml"
    cfg = load_config(cfg_path) if cfg_path.is_file() else load_config()
    if sibling.is_file() and sibling.resolve() != path.resolve():
        base = read_policy_file(sibling)
        return ReplayTarget(str(path), source.code, source.defaults(), f"tuned baseline "
                            f"({sibling})", base.code, base.defaults(), cfg)
    base = read_policy_file(baseline_path(cfg.objective.baseline))
    return ReplayTarget(str(path), source.code, source.defaults(),
                        f"{cfg.objective.baseline} (default parameters)", base.code,
                        base.defaults(), cfg,
                        note="no tuned baseline beside this file: the baseline runs at its "
                             "default parameters")


def slo_override(slo: SLOConfig, ttft_s: float | None = None, tpot_s: float | None = None,
                 share: float | None = None) -> SLOConfig:
    """The campaign's SLO with whichever targets are given (for traces whose prompts no policy
    can serve within the campaign's targets, such as 100k-token contexts)."""
    changes = {}
    for key, option, value in (("ttft_s", "--ttft-slo", ttft_s), ("tpot_s", "--tpot-slo", tpot_s),
                               ("share", "--share", share)):
        if value is None:
            continue
        if not (value > 0 and math.isfinite(value)) or key == "share" and value > 1:
            raise ReviewError(f"{option} must be a positive number"
                              + (" at most 1" if key == "share" else ""))
        changes[key] = value
    return dataclasses.replace(slo, **changes) if changes else slo


def replay_instances(opts: ReplayOptions, cfg: CampaignConfig) -> list[Instance]:
    if opts.window_s is not None and not opts.traces:
        raise ReviewError("--window applies to --trace only")
    if opts.traces:
        for t in opts.traces:
            if not Path(t).is_file():
                raise ReviewError(f"{t}: no such trace file")
        return [Instance(None, 0, opts.requests or 2000, t, None, opts.window_s)
                for t in opts.traces]
    seed = opts.seed if opts.seed is not None else cfg.workloads.heldout_seeds[0]
    names = opts.workloads or cfg.workloads.scenarios
    for n in names:
        if n not in SCENARIO_NAMES:
            raise ReviewError(f"unknown workload {n!r} (known: {', '.join(SCENARIO_NAMES)})")
    return [Instance(n, seed, opts.requests or cfg.workloads.requests_for(n, "heldout"))
            for n in names]


def replay(spec: str, opts: ReplayOptions) -> dict[str, Any]:
    """Both policies on every instance: the replay's report (plain data; a result's
    ``error`` says where a policy failed)."""
    t = replay_target(spec)
    cfg = t.cfg
    sandbox = SandboxConfig(backend=opts.sandbox or cfg.sandbox.backend,
                            timeout_s=cfg.sandbox.timeout_s, memory_mb=cfg.sandbox.memory_mb)
    insts = replay_instances(opts, cfg)
    cfg = dataclasses.replace(cfg, slo=slo_override(cfg.slo, opts.ttft_s, opts.tpot_s,
                                                    opts.share))
    kind = "capacity" if opts.capacity else "run"
    jobs = [Job(code, params, inst, kind, opts.rate, cfg.cluster, cfg.slo, sandbox,
                rel_tol=cfg.gate.capacity_rel_tol, name=name,
                max_multiple=cfg.gate.capacity_max_multiple)
            for inst in insts
            for code, params, name in ((t.code, t.params, "policy.py"),
                                       (t.baseline_code, t.baseline_params, "baseline.py"))]
    evaluator = Evaluator(NoCache(), opts.parallelism or cfg.parallelism)
    try:
        results = evaluator.evaluate(jobs)
        rows = []
        for n, inst in enumerate(insts):
            pol, base = results[2 * n], results[2 * n + 1]
            row: dict[str, Any] = {"workload": inst.label, "policy": pol, "baseline": base}
            if kind == "capacity":
                c, b = pol.get("capacity") or 0.0, base.get("capacity") or 0.0
                row["gain"] = (c / b - 1.0) if b > 0 else None
            rows.append(row)
        if kind == "capacity":
            _add_saturation(evaluator, jobs, rows)
    finally:
        evaluator.close()
    return {
        "target": t.name, "params": t.params, "baseline": t.baseline_name,
        "baseline_params": t.baseline_params, "note": t.note, "kind": kind,
        "slo": {"ttft_s": cfg.slo.ttft_s, "tpot_s": cfg.slo.tpot_s, "share": cfg.slo.share,
                "text": cfg.slo.slo().describe()},
        "cluster": f"{cfg.cluster.replicas} x {cfg.cluster.model} on {cfg.cluster.gpu}",
        "results": rows}


def replay_failed(report: Mapping[str, Any]) -> bool:
    return any(r["policy"].get("error") or r["baseline"].get("error")
               for r in report["results"])


def _add_saturation(evaluator: Evaluator, jobs: Sequence[Job], rows: list[dict[str, Any]]
                    ) -> None:
    """Output tokens/s of both policies at ``SATURATION_FACTOR`` x the baseline's capacity:
    what each delivers when overloaded (a policy that starves requests may keep its SLO share
    there while serving no more tokens)."""
    runs, where = [], []
    for n, row in enumerate(rows):
        cap = row["baseline"].get("capacity") or 0.0
        if cap <= 0:
            continue
        rate = SATURATION_FACTOR * cap
        for k in (0, 1):
            runs.append(dataclasses.replace(jobs[2 * n + k], kind="run", rate=rate))
        where.append((row, rate))
    results = evaluator.evaluate(runs)
    for m, (row, rate) in enumerate(where):
        pol, base = results[2 * m], results[2 * m + 1]
        row["saturation"] = {"rate": rate, "policy": pol.get("throughput_tok_s"),
                             "baseline": base.get("throughput_tok_s"),
                             "error": pol.get("error") or base.get("error")}


# ------------------------------------------------------------------------------- as text
RUN_ROWS = (("rate", "offered rate (req/s)", "{:.3g}"), ("attainment", "SLO attainment", "{:.1%}"),
            ("goodput_rps", "goodput (req/s)", "{:.3g}"),
            ("goodput_tok_s", "goodput (tok/s)", "{:,.0f}"),
            ("throughput_tok_s", "throughput (tok/s)", "{:,.0f}"),
            ("ttft_p50", "TTFT p50 (s)", "{:.3f}"), ("ttft_p90", "TTFT p90 (s)", "{:.3f}"),
            ("ttft_p99", "TTFT p99 (s)", "{:.3f}"), ("tpot_p50", "TPOT p50 (s)", "{:.4f}"),
            ("tpot_p90", "TPOT p90 (s)", "{:.4f}"), ("tpot_p99", "TPOT p99 (s)", "{:.4f}"),
            *((key, label, fmt) for key, label, fmt in FAIRNESS_COLUMNS
              if key != "goodput_tok_s"))


def replay_text(report: Mapping[str, Any]) -> str:
    slo = report["slo"]
    lines = [f"policy    {report['target']}  {params_text(report['params'])}",
             f"baseline  {report['baseline']}  {params_text(report['baseline_params'])}",
             f"cluster   {report['cluster']}; SLO {slo['text']}"]
    if report["note"]:
        lines.append(f"note      {report['note']}")
    body = _capacity_lines(report) if report["kind"] == "capacity" else _run_lines(report)
    return "\n".join(lines + body) + "\n"


def _run_lines(report: Mapping[str, Any]) -> list[str]:
    lines = []
    for r in report["results"]:
        lines += ["", f"{r['workload']}:", f"  {'':<22} {'policy':>12} {'baseline':>12}"]
        for key, label, fmt in RUN_ROWS:
            vals = [fmt_or_dash(side.get(key), fmt) for side in (r["policy"], r["baseline"])]
            lines.append(f"  {label:<22} {vals[0]:>12} {vals[1]:>12}")
        for side in ("policy", "baseline"):
            if named := named_requests(r[side]):
                lines.append(f"  {side} {named}")
            if r[side].get("error"):
                lines.append(f"  {side} error: {r[side]['error']}")
    return lines


def _capacity_lines(report: Mapping[str, Any]) -> list[str]:
    share = report["slo"]["share"]
    results = report["results"]
    lines = ["", f"capacity under SLO (highest sustainable rate with >= {share:.0%} of requests "
             "meeting it):", f"  {'workload':<32} {'policy':>12} {'baseline':>12} {'gain':>8}"]
    for r in results:
        p, b = r["policy"], r["baseline"]
        err = p.get("error") or b.get("error")
        lines.append(f"  {r['workload']:<32} {p.get('capacity') or 0:>8.3g} r/s "
                     f"{b.get('capacity') or 0:>8.3g} r/s {gain_text(r.get('gain')):>8}"
                     + (f"  error: {err}" if err else ""))
    if any((r["baseline"].get("capacity") or 0) <= 0 and not r["baseline"].get("error")
           for r in results):
        lines.append(f"  (a capacity of 0: fewer than {share:.0%} of requests meet the SLO at "
                     "any rate, e.g. prompts too long to prefill within the TTFT target; no "
                     "relative gain is defined there)")
    gains = [r["gain"] for r in results if r.get("gain") is not None]
    if len(gains) > 1:
        lines.append(f"  {'mean':<32} {'':>12} {'':>12} {gain_text(sum(gains) / len(gains)):>8}")
    return lines + _capacity_fairness_lines(results)


def _capacity_fairness_lines(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """Beside capacity: each side's fairness at its own capacity, and output tokens/s at
    saturation."""
    caps = {r["workload"]: (r["policy"].get("capacity"), r["baseline"].get("capacity"))
            for r in results}
    at = {r["workload"]: {"policy": r["policy"].get("at_capacity") or {},
                          "baseline": r["baseline"].get("at_capacity") or {}} for r in results}
    lines = ["", "at each policy's own capacity:"]
    lines += [f"  {line}" for line in fairness_lines(caps, at, ("policy", "baseline"))]
    sat = [r for r in results if r.get("saturation")]
    if sat:
        lines += ["", f"output tokens/s at saturation ({SATURATION_FACTOR:g} x the baseline's "
                  "capacity):"]
    for r in sat:
        s = r["saturation"]
        p, b = s.get("policy"), s.get("baseline")
        ratio = gain_text(p / b - 1.0) if p is not None and b else "-"
        lines.append(f"  {r['workload']:<32} at {s['rate']:.3g} r/s: policy "
                     f"{fmt_or_dash(p, '{:,.0f}')} tok/s, baseline {fmt_or_dash(b, '{:,.0f}')}"
                     f" tok/s ({ratio})" + (f"  error: {s['error']}" if s.get("error") else ""))
    return lines
