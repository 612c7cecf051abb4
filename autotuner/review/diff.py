"""``diff``: a candidate's code, then its tuned parameters, as unified diffs against another
archive member (its parent, the baseline, the promoted policy, or any candidate)."""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from typing import Any

from autotuner.archive import Archive, Candidate
from autotuner.review.common import ReviewError, resolve

# ANSI colours of a unified diff's lines, by their first characters (the first match wins)
_COLOURS = (("+++", "1"), ("---", "1"), ("@@", "36"), ("+", "32"), ("-", "31"))


def colorize(diff: str) -> str:
    out = []
    for line in diff.splitlines(keepends=True):
        code = next((c for prefix, c in _COLOURS if line.startswith(prefix)), None)
        out.append(line if code is None else f"\x1b[{code}m{line.rstrip(chr(10))}\x1b[0m\n")
    return "".join(out)


def _params_lines(params: Mapping[str, Any]) -> list[str]:
    return [f"{k} = {json.dumps(v)}\n" for k, v in sorted(params.items())]


def candidate_diff(archive: Archive, cand: Candidate, against: str = "parent") -> str:
    """Unified diff of code, then of tuned parameters, against another archive member."""
    if against == "parent":
        if not cand.parent_id:
            raise ReviewError(f"{cand.id} has no parent; use --against baseline or an id")
        other = archive.get(cand.parent_id)
    elif against == "baseline":
        other = archive.get("baseline")
    else:
        other = resolve(archive, against)
    code = "".join(difflib.unified_diff(
        (other.code or "").splitlines(keepends=True), (cand.code or "").splitlines(keepends=True),
        fromfile=f"{other.id}.py", tofile=f"{cand.id}.py"))
    params = "".join(difflib.unified_diff(
        _params_lines(other.params), _params_lines(cand.params),
        fromfile=f"{other.id} tuned parameters", tofile=f"{cand.id} tuned parameters"))
    if not code and not params:
        return f"{cand.id} and {other.id} are identical (code and tuned parameters)\n"
    parts = [code or f"(code identical to {other.id})\n",
             params or f"(tuned parameters identical to {other.id})\n"]
    return "".join(p if p.endswith("\n") else p + "\n" for p in parts)


def diff_text(archive: Archive, ref: str, against: str = "parent") -> str:
    """The diff of the candidate named ``ref`` (see ``common.resolve``)."""
    cand = resolve(archive, ref)
    if cand.code is None:
        raise ReviewError(f"{cand.id} has no code ({cand.status}: {cand.failure})")
    return candidate_diff(archive, cand, against)
