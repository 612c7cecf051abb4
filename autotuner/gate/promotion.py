"""What a promotion writes so that anyone can check the claim with one command: the policy
file with its tuned values baked in, the tuned baseline and best reference beside it, and a
record (``promotions/<id>.json``) that ``autotuner replay`` repeats the whole gate from."""

from __future__ import annotations

import ast
import json
import platform
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from autotuner.archive import canonical, sha256
from autotuner.config import CampaignConfig, to_dict
from autotuner.gate.run import GateResult, PolicyRef


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
    reference: PolicyRef | None = None,
    explanation: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``promotions/<id>.py`` (tuned defaults baked in) and ``promotions/<id>.json``;
    beside them the tuned baseline and the best tuned reference (``reference.py``) the claim
    was measured against, so that the record alone reproduces the whole gate. ``explanation``:
    why it wins (``autotuner.diagnose.Explanation.to_dict()``), kept beside the claim."""
    out = campaign_dir / "promotions"
    out.mkdir(parents=True, exist_ok=True)
    policy_path = out / f"{candidate_id}.py"
    baked = bake_params(candidate.code, candidate.params)
    _atomic_write(policy_path, baked)
    baseline_path = out / "baseline.py"
    _atomic_write(baseline_path, bake_params(baseline.code, baseline.params))
    record_path = out / f"{candidate_id}.json"
    ref_entry = None
    if reference is not None and result.reference is not None:
        _atomic_write(out / "reference.py", bake_params(reference.code, reference.params))
        ref_entry = {"name": result.reference, "file": "reference.py",
                     "params": dict(reference.params), "code_sha256": sha256(reference.code)}
    record = {
        "kind": "autotuner promotion",
        "campaign": cfg.name,
        "candidate": candidate_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "claim": claim_line(result, baseline_name),
        "claims": claims_by_workload(result),
        "explanation": dict(explanation) if explanation is not None else None,
        "reproduce": f"autotuner replay {record_path}",
        "policy_file": policy_path.name,
        "policy_sha256": sha256(baked),
        "code_sha256": sha256(candidate.code),
        "params": dict(candidate.params),
        "baseline": {"name": baseline_name, "file": baseline_path.name,
                     "params": dict(baseline.params), "code_sha256": sha256(baseline.code)},
        "reference": ref_entry,
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


def claim_line(result: GateResult, baseline_name: str) -> str:
    """The promotion's claim in one sentence, with the figures that back it."""
    comp = result.baseline
    text = (f"capacity under SLO, judged at its own claimed rate, on {len(result.instances)} "
            f"held-out workload instances: geometric mean {comp.mean_gain:+.1%} over the tuned "
            f"{baseline_name} baseline (one-sided {result.confidence:.0%} lower bound "
            f"{comp.lower_bound:+.1%}, margin {comp.margin:.0%})")
    ref = result.comparison("reference:")
    if ref is not None:
        text += (f", {ref.mean_gain:+.1%} over the best tuned reference {result.reference} "
                 f"(lower bound {ref.lower_bound:+.1%}, margin {ref.margin:.0%})")
    return text + "; per workload " + ", ".join(
        f"{fam} {g:+.1%}" for fam, g in result.per_family.items())


def claims_by_workload(result: GateResult) -> dict[str, dict[str, Any]]:
    """Per workload family: mean capacities (candidate, baseline, best reference) and the
    geometric-mean gains over the baseline and the best reference."""
    fam_of = {d["label"]: (d.get("trace") and Path(d["trace"]).name) or d["scenario"]
              for d in result.instances}
    base = result.baseline
    ref = result.comparison("reference:")
    out: dict[str, dict[str, Any]] = {}
    for fam in result.per_family:
        labels = [k for k, f in fam_of.items() if f == fam and k in base.capacities]
        row: dict[str, Any] = {
            "instances": labels,
            "capacity": float(np.mean([base.capacities[k][0] for k in labels])),
            "baseline_capacity": float(np.mean([base.capacities[k][1] for k in labels])),
            "gain_vs_baseline": result.per_family[fam]}
        if ref is not None:
            row |= {"reference": result.reference,
                    "reference_capacity": float(np.mean([ref.capacities[k][1] for k in labels
                                                         if k in ref.capacities])),
                    "gain_vs_reference": result.per_family_reference.get(fam)}
        out[fam] = row
    return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
