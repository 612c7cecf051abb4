"""How the report writes a number: one definition for the page, the summary and the plots'
notes, so the same figure reads the same everywhere ("-" for what was not measured)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def pct(x: float | None, signed: bool = True) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:+.1%}" if signed else f"{x:.1%}"


def share(x: float | None) -> str:
    """A share without spurious decimals: 90%, 12.5%."""
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.0%}" if abs(x * 100 - round(x * 100)) < 1e-9 else f"{x:.1%}"


def num(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.{digits}g}"


def dur(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in sorted(params.items())) or "(no tunables)"
