"""The canvas the report's plots are drawn on: colours, number formats, "nice" tick values, the
frame that maps data to SVG coordinates (linear or log), and the pieces every plot has (the
``<svg>`` opening with its ``<title>``, axes with grid and labels, a legend above the plot box).

``report_plots`` draws the plots themselves with these.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

import numpy as np

# Colour per role, so a policy has the same colour in every plot of the report.
COLORS = {
    "baseline": "#4c72b0",
    "promoted": "#dd8452",
    "bound": "#2ca02c",
    "grid": "#e5e5e5",
    "axis": "#555555",
    "text": "#222222",
    "muted": "#999999",
}
PALETTE = ("#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd", "#55a868")

Fmt = Callable[[float], str]


def fmt_number(x: float) -> str:
    """Compact tick label: 0.05, 1.5, 20, 1.2k."""
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 10_000:
        return f"{x / 1000:.0f}k"
    if a >= 1000:
        return f"{x / 1000:.1f}k".replace(".0k", "k")
    if a >= 10:
        return f"{x:.0f}"
    if a >= 1:
        return f"{x:.1f}".rstrip("0").rstrip(".")
    return f"{x:.3g}"


def fmt_percent(x: float) -> str:
    return f"{x:+.0%}" if x else "0%"


def fmt_share(x: float) -> str:
    return f"{x:.0%}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (1, 2, 2.5, 5 x 10^k steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    k = 0
    while first + k * step <= hi + 1e-9 * step and k < 100:
        ticks.append(round(first + k * step, 12))
        k += 1
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks at 1, 2, 5 x 10^k inside [lo, hi] (only powers of ten when the range is wide)."""
    if lo <= 0 or hi <= lo:
        return []
    k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mults = (1, 2, 5) if k1 - k0 <= 3 else (1,)
    out = [m * 10.0**k for k in range(k0, k1 + 1) for m in mults]
    return [t for t in out if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]


class Frame:
    """Maps data coordinates to the SVG canvas, linear or log on either axis."""

    def __init__(self, width: int, height: int, xr: tuple[float, float], yr: tuple[float, float],
                 x_log: bool, y_log: bool, margin: tuple[int, int, int, int]):
        self.w, self.h = width, height
        self.left, self.right, self.top, self.bottom = margin
        self.x_log, self.y_log = x_log, y_log
        self.x0, self.x1 = self._t(xr[0], x_log), self._t(xr[1], x_log)
        self.y0, self.y1 = self._t(yr[0], y_log), self._t(yr[1], y_log)
        if self.x1 <= self.x0:
            self.x1 = self.x0 + 1.0
        if self.y1 <= self.y0:
            self.y1 = self.y0 + 1.0

    @staticmethod
    def _t(v: float, log: bool) -> float:
        return math.log10(v) if log else v

    def px(self, x: float) -> float:
        f = (self._t(x, self.x_log) - self.x0) / (self.x1 - self.x0)
        return self.left + f * (self.w - self.left - self.right)

    def py(self, y: float) -> float:
        f = (self._t(y, self.y_log) - self.y0) / (self.y1 - self.y0)
        return self.h - self.bottom - f * (self.h - self.top - self.bottom)

    @property
    def plot_box(self) -> tuple[float, float, float, float]:
        return self.left, self.top, self.w - self.right, self.h - self.bottom


def finite_points(x: Sequence[float], y: Sequence[float], x_log: bool, y_log: bool
            ) -> tuple[np.ndarray, np.ndarray]:
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(xa) & np.isfinite(ya)
    if x_log:
        ok &= xa > 0
    if y_log:
        ok &= ya > 0
    return xa[ok], ya[ok]


def data_range(values: list[float], log: bool, pad: float, include_zero: bool = False
           ) -> tuple[float, float]:
    vals = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
    if include_zero and not log:
        vals.append(0.0)
    if not vals:
        return (1.0, 10.0) if log else (0.0, 1.0)
    lo, hi = min(vals), max(vals)
    if log:
        if hi <= lo:
            return lo / 2, hi * 2
        span = math.log10(hi / lo)
        return lo / 10 ** (pad * span), hi * 10 ** (pad * span)
    if hi <= lo:
        d = abs(lo) * 0.1 or 1.0
        return lo - d, hi + d
    d = (hi - lo) * pad
    return (lo - d if not (include_zero and lo >= 0) else lo), hi + d


def svg_open(plot_id: str, width: int, height: int, title: str) -> list[str]:
    tid = f"{plot_id}-title"
    return [
        f'<svg id="{escape(plot_id)}" class="plot" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-labelledby="{escape(tid)}" font-family="system-ui, -apple-system, Segoe UI, '
        f'Helvetica, Arial, sans-serif" font-size="12">',
        f'<title id="{escape(tid)}">{escape(title)}</title>',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
    ]


def axes(fr: Frame, xticks: list[float], yticks: list[float], x_fmt: Fmt, y_fmt: Fmt,
          x_label: str, y_label: str) -> list[str]:
    left, top, right, bottom = fr.plot_box
    out = ['<g class="grid">']
    for t in yticks:
        y = fr.py(t)
        out.append(f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" '
                   f'stroke="{COLORS["grid"]}"/>')
    for t in xticks:
        x = fr.px(t)
        out.append(f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" '
                   f'stroke="{COLORS["grid"]}"/>')
    out.append("</g>")
    out.append(f'<g class="axes" fill="{COLORS["text"]}">')
    out.append(f'<line x1="{left:.1f}" y1="{bottom:.1f}" x2="{right:.1f}" y2="{bottom:.1f}" '
               f'stroke="{COLORS["axis"]}"/>')
    out.append(f'<line x1="{left:.1f}" y1="{top:.1f}" x2="{left:.1f}" y2="{bottom:.1f}" '
               f'stroke="{COLORS["axis"]}"/>')
    for t in xticks:
        out.append(f'<text x="{fr.px(t):.1f}" y="{bottom + 16:.1f}" text-anchor="middle">'
                   f"{escape(x_fmt(t))}</text>")
    for t in yticks:
        out.append(f'<text x="{left - 6:.1f}" y="{fr.py(t) + 4:.1f}" text-anchor="end">'
                   f"{escape(y_fmt(t))}</text>")
    if x_label:
        out.append(f'<text x="{(left + right) / 2:.1f}" y="{fr.h - 6:.1f}" '
                   f'text-anchor="middle">{escape(x_label)}</text>')
    if y_label:
        cy = (top + bottom) / 2
        out.append(f'<text x="14" y="{cy:.1f}" text-anchor="middle" '
                   f'transform="rotate(-90 14 {cy:.1f})">{escape(y_label)}</text>')
    out.append("</g>")
    return out


def legend(entries: list[tuple[str, str, str, bool]], left: float, right: float, y: float
            ) -> list[str]:
    """entries: (name, colour, dash, marker only), in a row above the plot box (wrapping), so
    it never hides data or reference labels."""
    if not entries:
        return []
    out = ['<g class="legend">']
    x = left
    for name, color, dash, marker in entries:
        w = len(name) * 6.4 + 40
        if x + w > right and x > left:
            x, y = left, y + 16
        if marker:
            out.append(f'<circle cx="{x + 12:.1f}" cy="{y - 4:.1f}" r="3.5" fill="{color}"/>')
        else:
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(f'<line x1="{x + 2:.1f}" y1="{y - 4:.1f}" x2="{x + 22:.1f}" '
                       f'y2="{y - 4:.1f}" stroke="{color}" stroke-width="2"{dash_attr}/>')
        out.append(f'<text x="{x + 28:.1f}" y="{y:.1f}" fill="{COLORS["text"]}">'
                   f"{escape(name)}</text>")
        x += w
    out.append("</g>")
    return out


def legend_rows(names: Sequence[str], width: float) -> int:
    rows, x = 1, 0.0
    for name in names:
        w = len(name) * 6.4 + 40
        if x + w > width and x > 0:
            rows, x = rows + 1, 0.0
        x += w
    return rows
