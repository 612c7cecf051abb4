"""Small SVG plots for the campaign report: line/step, CDF, bars with error bars.

The report must be one self-contained file that opens anywhere without network access, and the
project does not depend on matplotlib, so plots are drawn here as inline SVG strings (on the
canvas of ``report_svg``). Each plot is an ``<svg>`` with a stable ``id`` (the report's browser
test looks for them), a ``<title>`` for screen readers, axes with "nice" tick values, and a
legend. Inputs are plain sequences of numbers; non-finite points are dropped (a gap, not a crash).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

import numpy as np

from autotuner.report_svg import (
    COLORS,
    PALETTE,
    Fmt,
    Frame,
    axes,
    data_range,
    finite_points,
    fmt_number,
    fmt_percent,
    fmt_share,
    legend,
    legend_rows,
    log_ticks,
    nice_ticks,
    svg_open,
)


@dataclass
class Series:
    """One line (or set of points) of a plot.

    step: draw as a post-step line (a running best, a CDF); points: draw markers at the data
    points (``line`` False: markers only); dash: SVG dash pattern.
    """

    name: str
    x: Sequence[float]
    y: Sequence[float]
    color: str = COLORS["baseline"]
    step: bool = False
    points: bool = False
    line: bool = True
    dash: str = ""
    width: float = 2.0
    labels: Sequence[str] = field(default_factory=tuple)  # per-point hover text


@dataclass
class Rule:
    """A vertical (``axis='x'``) or horizontal (``axis='y'``) reference line with a label."""

    value: float
    label: str
    axis: str = "x"
    color: str = COLORS["muted"]
    dash: str = "5,4"


def line_plot(
    plot_id: str,
    series: Sequence[Series],
    *,
    title: str,
    x_label: str = "",
    y_label: str = "",
    rules: Sequence[Rule] = (),
    x_log: bool = False,
    y_log: bool = False,
    x_fmt: Fmt = fmt_number,
    y_fmt: Fmt = fmt_number,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    y_zero: bool = False,
    width: int = 640,
    height: int = 360,
) -> str:
    """Lines, step lines and markers on shared axes, with reference rules and a legend."""
    data = [(finite_points(s.x, s.y, x_log, y_log), s) for s in series]
    xs = [float(v) for (x, _), _ in data for v in x]
    ys = [float(v) for (_, y), _ in data for v in y]
    xs += [r.value for r in rules if r.axis == "x"]
    ys += [r.value for r in rules if r.axis == "y"]
    xr = x_range or data_range(xs, x_log, 0.03)
    yr = y_range or data_range(ys, y_log, 0.08, include_zero=y_zero)
    rows = legend_rows([s.name for s in series], width - 72 - 16)
    fr = Frame(width, height, xr, yr, x_log, y_log, (72, 16, 12 + 16 * rows, 44))
    xticks = log_ticks(*xr) if x_log else nice_ticks(*xr)
    yticks = log_ticks(*yr) if y_log else nice_ticks(*yr)
    xticks = [t for t in xticks if xr[0] <= t <= xr[1]]
    yticks = [t for t in yticks if yr[0] <= t <= yr[1]]
    out = svg_open(plot_id, width, height, title)
    out += axes(fr, xticks, yticks, x_fmt, y_fmt, x_label, y_label)
    left, top, right, bottom = fr.plot_box
    clip = f"{plot_id}-clip"
    out.append(f'<clipPath id="{escape(clip)}"><rect x="{left:.1f}" y="{top - 2:.1f}" '
               f'width="{right - left + 2:.1f}" height="{bottom - top + 4:.1f}"/></clipPath>')
    out += _rule_lines(fr, rules, clip)
    for k, ((x, y), s) in enumerate(data):
        out += _series_lines(fr, s, x, y, f"{plot_id}-s{k}", clip)
    out += legend([(s.name, s.color, s.dash, not s.line) for s in series], left, right, 16)
    out.append("</svg>")
    return "\n".join(out)


def _rule_lines(fr: Frame, rules: Sequence[Rule], clip: str) -> list[str]:
    """Reference lines with their labels; those outside the plot box are left out."""
    left, top, right, bottom = fr.plot_box
    out = [f'<g class="rules" clip-path="url(#{escape(clip)})">']
    k_x = 0
    for r in rules:
        if r.axis == "x":
            x = fr.px(r.value)
            if not left - 1 <= x <= right + 1:
                continue
            out.append(f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" '
                       f'stroke="{r.color}" stroke-dasharray="{r.dash}"/>')
            # labels staggered downwards, on the side of the line with room for them
            flip = x + 8 + 6.4 * len(r.label) > right
            anchor = ' text-anchor="end"' if flip else ""
            out.append(f'<text x="{x - 4 if flip else x + 4:.1f}" y="{top + 12 + 14 * k_x:.1f}"'
                       f'{anchor} fill="{r.color}">{escape(r.label)}</text>')
            k_x += 1
        else:
            y = fr.py(r.value)
            if not top - 1 <= y <= bottom + 1:
                continue
            out.append(f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" '
                       f'stroke="{r.color}" stroke-dasharray="{r.dash}"/>')
            out.append(f'<text x="{left + 4:.1f}" y="{y - 4:.1f}" fill="{r.color}">'
                       f"{escape(r.label)}</text>")
    out.append("</g>")
    return out


def _series_lines(fr: Frame, s: Series, x: np.ndarray, y: np.ndarray, sid: str,
                  clip: str) -> list[str]:
    """One series' line (stepped or straight) and markers, in a group named after it."""
    out = [f'<g class="series" id="{escape(sid)}" data-name="{escape(s.name)}" '
           f'clip-path="url(#{escape(clip)})">']
    if s.line and len(x) >= 1:
        pts: list[tuple[float, float]] = []
        for i in range(len(x)):
            if s.step and i > 0:
                pts.append((fr.px(x[i]), fr.py(y[i - 1])))
            pts.append((fr.px(x[i]), fr.py(y[i])))
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        out.append(f'<polyline points="{path}" fill="none" stroke="{s.color}" '
                   f'stroke-width="{s.width}" stroke-linejoin="round"{dash}/>')
    if s.points or not s.line:
        for i in range(len(x)):
            label = s.labels[i] if i < len(s.labels) else ""
            tip = f"<title>{escape(label)}</title>" if label else ""
            out.append(f'<circle cx="{fr.px(x[i]):.1f}" cy="{fr.py(y[i]):.1f}" r="3.5" '
                       f'fill="{s.color}" fill-opacity="0.85">{tip}</circle>')
    out.append("</g>")
    return out


def cdf_points(values: Sequence[float], weights: Sequence[float] | None = None,
               points: int = 200) -> tuple[list[float], list[float]]:
    """An empirical CDF as at most ``points`` (value, cumulative share) pairs.

    Non-finite values (requests that never got a first token, say) count in the denominator but
    never appear, so the curve ends below 1 by exactly their share: a starved request is a miss,
    not a missing row.
    """
    v = np.asarray(values, dtype=np.float64)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)
    total = float(w.sum())
    ok = np.isfinite(v)
    v, w = v[ok], w[ok]
    if v.size == 0 or total <= 0:
        return [], []
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cum = np.cumsum(w) / total
    if v.size > points:
        idx = np.unique(np.linspace(0, v.size - 1, points).round().astype(np.int64))
        v, cum = v[idx], cum[idx]
    return [float(a) for a in v], [float(c) for c in cum]


def cdf_plot(
    plot_id: str,
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    rules: Sequence[Rule] = (),
    x_log: bool = True,
    width: int = 640,
    height: int = 340,
) -> str:
    """CDFs (series given as (value, cumulative share) pairs, e.g. from ``cdf_points``)."""
    steps = [Series(s.name, s.x, s.y, s.color, step=True, dash=s.dash) for s in series]
    return line_plot(plot_id, steps, title=title, x_label=x_label, y_label="share of samples",
                     rules=rules, x_log=x_log, y_fmt=fmt_share, y_range=(0.0, 1.02),
                     width=width, height=height)


@dataclass
class Bar:
    """One bar: ``value`` with an optional interval [lo, hi] and individual points (seeds)."""

    label: str
    value: float
    lo: float | None = None
    hi: float | None = None
    color: str = COLORS["promoted"]
    points: Sequence[float] = field(default_factory=tuple)
    note: str = ""  # hover text


def bar_plot(
    plot_id: str,
    bars: Sequence[Bar],
    *,
    title: str,
    y_label: str = "",
    y_fmt: Fmt = fmt_number,
    rules: Sequence[Rule] = (),
    width: int = 640,
    height: int = 340,
) -> str:
    """Vertical bars from zero with error bars and per-bar points; ``rules`` are horizontal."""
    vals: list[float] = [0.0]
    for b in bars:
        vals += [b.value] + [v for v in (b.lo, b.hi) if v is not None] + list(b.points)
    vals += [r.value for r in rules]
    yr = data_range(vals, False, 0.14, include_zero=True)
    n = max(1, len(bars))
    fr = Frame(width, height, (0.0, float(n)), yr, False, False, (72, 16, 14, 66))
    yticks = [t for t in nice_ticks(*yr) if yr[0] <= t <= yr[1]]
    out = svg_open(plot_id, width, height, title)
    out += axes(fr, [], yticks, fmt_number, y_fmt, "", y_label)
    left, top, right, bottom = fr.plot_box
    zero = fr.py(0.0)
    out.append(f'<line x1="{left:.1f}" y1="{zero:.1f}" x2="{right:.1f}" y2="{zero:.1f}" '
               f'stroke="{COLORS["axis"]}"/>')
    slot = (right - left) / n
    bw = min(70.0, slot * 0.6)
    for k, b in enumerate(bars):
        cx = left + slot * (k + 0.5)
        out.append(f'<g class="bar" id="{escape(plot_id)}-b{k}" data-name="{escape(b.label)}">')
        if math.isfinite(b.value):
            y = fr.py(b.value)
            tip = f"<title>{escape(b.note or b.label)}</title>"
            out.append(f'<rect x="{cx - bw / 2:.1f}" y="{min(y, zero):.1f}" width="{bw:.1f}" '
                       f'height="{abs(zero - y):.1f}" fill="{b.color}" fill-opacity="0.8">'
                       f"{tip}</rect>")
            ty = y - 5 if b.value >= 0 else y + 14
            out.append(f'<text x="{cx + bw / 2 + 3:.1f}" y="{ty:.1f}" font-size="11" '
                       f'fill="{COLORS["text"]}">{escape(y_fmt(b.value))}</text>')
        if b.lo is not None and b.hi is not None and math.isfinite(b.lo) \
                and math.isfinite(b.hi):
            y_lo, y_hi = fr.py(b.lo), fr.py(b.hi)
            out.append(f'<line class="errorbar" x1="{cx:.1f}" y1="{y_lo:.1f}" x2="{cx:.1f}" '
                       f'y2="{y_hi:.1f}" stroke="{COLORS["text"]}" stroke-width="1.5"/>')
            for yy in (y_lo, y_hi):
                out.append(f'<line x1="{cx - 7:.1f}" y1="{yy:.1f}" x2="{cx + 7:.1f}" '
                           f'y2="{yy:.1f}" stroke="{COLORS["text"]}" stroke-width="1.5"/>')
        spread = min(6.0, 1.6 * bw / max(1, len(b.points)))
        for j, p in enumerate(b.points):
            if math.isfinite(p):
                dx = (j - (len(b.points) - 1) / 2) * spread
                out.append(f'<circle cx="{cx + dx:.1f}" cy="{fr.py(p):.1f}" r="2.8" '
                           f'fill="{COLORS["text"]}" fill-opacity="0.55"/>')
        for j, line in enumerate(_wrap(b.label, max(6, int(slot / 6.6)))):
            out.append(f'<text x="{cx:.1f}" y="{bottom + 16 + 14 * j:.1f}" '
                       f'text-anchor="middle" fill="{COLORS["text"]}">{escape(line)}</text>')
        out.append("</g>")
    for r in rules:
        y = fr.py(r.value)
        out.append(f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" '
                   f'stroke="{r.color}" stroke-dasharray="{r.dash}"/>')
        out.append(f'<text x="{right - 4:.1f}" y="{y - 4:.1f}" text-anchor="end" '
                   f'fill="{r.color}">{escape(r.label)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _wrap(text: str, width: int, lines: int = 2) -> list[str]:
    """Split a label into at most ``lines`` lines of about ``width`` characters (at spaces,
    underscores or dots where possible), the last one cut with an ellipsis."""
    out: list[str] = []
    rest = text
    while rest and len(out) < lines:
        if len(rest) <= width:
            out.append(rest)
            rest = ""
            break
        cut = max((rest.rfind(c, 0, width + 1) for c in " _."), default=-1)
        cut = cut + 1 if cut > 0 else width
        out.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        last = out[-1] + " " + rest
        out[-1] = last[: width - 1] + "…"
    return out


def hbar_plot(plot_id: str, items: Sequence[tuple[str, float]], *, title: str,
              color: str = COLORS["muted"], width: int = 640) -> str:
    """Horizontal bars of counts (failures by reason), longest first."""
    items = sorted(items, key=lambda kv: -kv[1])
    row = 22
    height = max(60, 24 + row * len(items))
    left = min(260, max(80, max((len(k) for k, _ in items), default=8) * 7 + 16))
    top = max([v for _, v in items] + [1])
    span = width - left - 60
    out = svg_open(plot_id, width, height, title)
    for k, (name, value) in enumerate(items):
        y = 12 + k * row
        w = span * value / top
        out.append(f'<g class="bar" data-name="{escape(name)}">')
        out.append(f'<text x="{left - 8}" y="{y + 14}" text-anchor="end" '
                   f'fill="{COLORS["text"]}">{escape(name)}</text>')
        out.append(f'<rect x="{left}" y="{y + 2}" width="{w:.1f}" height="{row - 6}" '
                   f'fill="{color}"/>')
        out.append(f'<text x="{left + w + 6:.1f}" y="{y + 14}" fill="{COLORS["text"]}">'
                   f"{fmt_number(value)}</text>")
        out.append("</g>")
    if not items:
        out.append(f'<text x="{width / 2}" y="36" text-anchor="middle" '
                   f'fill="{COLORS["muted"]}">none</text>')
    out.append("</svg>")
    return "\n".join(out)


__all__ = [
    "COLORS", "PALETTE", "Bar", "Rule", "Series", "bar_plot", "cdf_plot", "cdf_points",
    "fmt_number", "fmt_percent", "fmt_share", "hbar_plot", "line_plot", "log_ticks",
    "nice_ticks",
]
