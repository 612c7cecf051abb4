"""Which plots the report draws, and from which records (the drawing itself is
``report_plots``): search progress and failures, gains per workload, the capacity curve and
attainment, the latency CDFs, the references, and the headroom. Each returns inline SVG."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from autotuner import report_plots as P
from autotuner.config import CampaignConfig
from autotuner.report.records import (
    Curve,
    Distribution,
    Focus,
    Gains,
    Headroom,
    Policy,
    ReferenceRow,
    Search,
)
from autotuner.report.text import pct


def colors(refs: Sequence[Policy]) -> dict[str, str]:
    """Each policy's colour, the same in every plot: policy key -> colour."""
    out = {"baseline": P.COLORS["baseline"], "subject": P.COLORS["promoted"]}
    out |= {r.key: P.PALETTE[k % len(P.PALETTE)] for k, r in enumerate(refs)}
    return out


def search_plots(search: Search) -> dict[str, str]:
    prog = search.progress
    series = [P.Series("best so far", prog.x, prog.best, P.COLORS["promoted"], step=True),
              P.Series("tuned proposal", prog.px, prog.py, P.COLORS["muted"], line=False,
                       labels=prog.labels)]
    rules = [P.Rule(0.0, "tuned baseline", "y", P.COLORS["baseline"])]
    for k, (sid, score) in enumerate(prog.seeds):
        rules.append(P.Rule(score, sid.replace("seed-", "seed "), "y", P.PALETTE[k % 7], "2,3"))
    return {
        "progress": P.line_plot(
            "plot-progress", series, rules=rules,
            title="Best training objective against proposals made",
            x_label="proposals made", y_label="objective vs tuned baseline",
            y_fmt=P.fmt_percent, x_range=(0.0, max(1.0, float(prog.made))), width=1000),
        "failures": P.hbar_plot("plot-failures", list(search.failures.counts.items()),
                                title="Failed candidates by reason"),
    }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def gains_plot(gains: Gains, cfg: CampaignConfig) -> str:
    g = cfg.gate
    bars = [P.Bar(f.family, f.mean, _finite(f.lo), _finite(f.hi), P.COLORS["promoted"],
                  [r.gain for r in f.rows],
                  f"{f.family}: mean {pct(f.mean)} [{pct(f.lo)}, {pct(f.hi)}]")
            for f in gains.families]
    bars.append(P.Bar("all (gate)", gains.interval_mean, gains.lo, gains.hi, P.COLORS["bound"],
                      list(gains.per_instance),
                      f"all: mean {pct(gains.interval_mean)}, {g.confidence:.0%} lower bound "
                      f"{pct(gains.lower_bound)}"))
    return P.bar_plot(
        "plot-gains", bars, y_fmt=P.fmt_percent,
        title=f"Held-out capacity gain over the tuned baseline per workload "
              f"({2 * g.confidence - 1:.0%} bootstrap intervals; dots: seeds)",
        y_label="capacity gain", width=1000,
        rules=[P.Rule(g.margin, f"gate margin {g.margin:.0%}", "y", P.COLORS["bound"])])


def _value(x: float | None) -> float:
    return math.nan if x is None else x


def curve_plots(focus: Focus, curve: Curve, policies: Sequence[Policy], cfg: CampaignConfig,
                color: Mapping[str, str]) -> dict[str, str]:
    """Goodput and SLO attainment against offered load on the focus instance."""
    rates = list(curve.rates)
    gp_series, att_series = [], []
    for p in policies:
        points = curve.results[p.key]
        gp_series.append(P.Series(p.label, rates, [_value(r.goodput_rps) for r in points],
                                  color[p.key], points=True))
        att_series.append(P.Series(p.label, rates, [_value(r.attainment) for r in points],
                                   color[p.key], points=True))
    gp_series.append(P.Series("offered load (all within SLO)", [0, rates[-1]], [0, rates[-1]],
                              P.COLORS["muted"], dash="4,4", width=1))
    cap_rules = [P.Rule(p.caps[focus.label], f"{p.label.split(' ')[0]} capacity", "x",
                        color[p.key]) for p in policies if p.caps.get(focus.label)]
    x_hi = rates[-1] * 1.03
    bound_rule = [P.Rule(v, name, "x", P.COLORS["bound"], dash) for v, name, dash in (
        (focus.bound, "upper bound", "5,4"),
        (focus.steady, "sustained roofline", "2,3")) if v <= x_hi]
    off = "" if focus.bound <= x_hi else \
        f" (upper bound {focus.bound:.3g} req/s off the chart)"
    share = cfg.slo.share
    return {
        "curve": P.line_plot(
            "plot-curve", gp_series, rules=cap_rules + bound_rule,
            title=f"Goodput against offered load on held-out {focus.label}{off}",
            x_label="offered load (requests/s)", y_label="goodput (requests/s within SLO)",
            x_range=(0.0, x_hi), y_zero=True, width=520),
        "attainment": P.line_plot(
            "plot-attainment", att_series,
            rules=[P.Rule(share, f"{share:.0%} target", "y", P.COLORS["bound"])] + cap_rules,
            title=f"SLO attainment against offered load on {focus.label}",
            x_label="offered load (requests/s)", y_label="requests within both SLOs",
            y_fmt=P.fmt_share, x_range=(0.0, x_hi), y_range=(0.0, 1.02), width=520),
    }


def cdf_plots(focus: Focus, dists: Mapping[str, Distribution], policies: Sequence[Policy],
              cfg: CampaignConfig, color: Mapping[str, str]) -> dict[str, str]:
    """TTFT and time-between-tokens CDFs at the tuned baseline's capacity (failed runs are
    left out; the report's notes say so)."""
    out = {}
    for metric, slo_v, label in (("ttft", cfg.slo.ttft_s, "TTFT"),
                                 ("tbt", cfg.slo.tpot_s, "time between tokens")):
        ss = [P.Series(p.label, dists[p.key].cdf[metric][0], dists[p.key].cdf[metric][1],
                       color[p.key]) for p in policies if not dists[p.key].error]
        target = "TTFT" if metric == "ttft" else "TPOT"
        out[metric] = P.cdf_plot(
            f"plot-{metric}", ss, x_label=f"{label} (s, log scale)",
            title=f"{label} CDF on {focus.label} at {focus.rate:.3g} req/s (the tuned "
                  "baseline's capacity)",
            rules=[P.Rule(slo_v, f"{target} SLO {slo_v:g} s", "x", P.COLORS["bound"])],
            width=520)
    return out


def references_plot(rows: Sequence[ReferenceRow], state: str, instances: int,
                    color: Mapping[str, str]) -> str:
    bars = [P.Bar(r.label, r.gain, _finite(r.lo), _finite(r.hi), color[r.key],
                  list(r.per_instance), f"{r.label}: {pct(r.gain)} over the tuned baseline")
            for r in rows]
    return P.bar_plot(
        "plot-references", bars, y_fmt=P.fmt_percent, y_label="capacity gain", width=1000,
        title=f"Held-out capacity over the tuned baseline: the "
              f"{'promoted policy' if state == 'promoted' else 'candidate'} and "
              f"every tuned reference ({instances} instances)")


def headroom_plot(headroom: Headroom, color: Mapping[str, str]) -> str:
    bars = [P.Bar(b.label, b.mean, color=color[b.key], points=list(b.shares),
                  note=f"{b.label}: {b.mean:.0%} of the upper bound") for b in headroom.bars]
    rules = [P.Rule(1.0, "upper bound (this instance)", "y", P.COLORS["bound"])]
    if headroom.sustained is not None:
        rules.append(P.Rule(headroom.sustained, "sustained roofline rate (mean)", "y",
                            P.COLORS["muted"]))
    return P.bar_plot(
        "plot-headroom", bars, y_fmt=P.fmt_share, y_label="share of the upper bound", width=1000,
        title="Held-out capacity as a share of the roofline upper bound (dots: instances)",
        rules=rules)
