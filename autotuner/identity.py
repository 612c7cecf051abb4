"""When two things are the same: canonical JSON and its hash, a program's identity regardless of
comments and layout, and the key of one evaluation.

The archive, the scorer's evaluation cache and the gate's records all hash through these, so a
value hashes the same wherever it is stored, and a finished evaluation is found again by
exactly the inputs that decided it.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def json_safe(value: Any) -> Any:
    """Plain JSON data: NaN and inf become null (JSON has neither), numpy scalars Python numbers,
    mapping keys strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return json_safe(value.item())
    return value


def canonical(obj: Any) -> str:
    """JSON with sorted keys and no NaN (null instead), so equal inputs hash equally."""
    return json.dumps(json_safe(obj), sort_keys=True, separators=(",", ":"))


def program_sha(code: str) -> str:
    """Identity of a program regardless of comments and formatting (two proposals that differ
    only there behave identically, so the second is a duplicate)."""
    try:
        return sha256(ast.dump(ast.parse(code)))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return sha256(code)


def evaluation_key(code_sha: str, params: Mapping[str, Any], workload: Mapping[str, Any],
                   rate: float | None, context: Mapping[str, Any]) -> str:
    """The identity of one evaluation: policy code, parameter values, workload instance, rate,
    and the context (cluster, SLO, request count) it was scored under."""
    return sha256(canonical({
        "code": code_sha, "params": params, "workload": workload,
        "rate": None if rate is None else round(float(rate), 9), "context": context,
    }))
