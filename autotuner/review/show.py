"""``show``: one candidate whole: its lineage, scores per phase and workload, the gate's
conditions with their figures, what it cost, and its code (or the proposer's replies)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autotuner.archive import Archive, Candidate
from autotuner.diagnose import Explanation
from autotuner.review.common import (
    fairness_lines,
    gain_text,
    heldout_gain,
    params_text,
    short,
)
from autotuner.review.status import attempt_outcomes


def show_text(archive: Archive, cand: Candidate) -> str:
    lines = _summary(archive, cand) + _scores(archive, cand)
    if cand.gate:
        lines += _gate_text(cand.gate)
    if cand.explanation:
        lines += explanation_text(cand.explanation)
    if cand.code is not None:
        lines += [f"\n--- {cand.id}.py ---", cand.code.rstrip("\n")]
    else:
        for k, reply in enumerate(cand.raw, 1):
            lines += [f"\n--- proposer's reply {k} of {len(cand.raw)} ---", str(reply)[:4000]]
    return "\n".join(lines) + "\n"


def _summary(archive: Archive, cand: Candidate) -> list[str]:
    lines = [f"candidate {cand.id}: {cand.status}  (origin {cand.origin}, island {cand.island}, "
             f"proposer {cand.proposer or '-'}{', model ' + cand.model if cand.model else ''})"]
    if cand.copy_of:
        lines.append(f"copy of the reference policy {cand.copy_of} (the same program up to "
                     "names, docstrings and tunable defaults): never promoted as a discovery")
    lines.append("lineage: " + " <- ".join(
        f"{c.label} ({gain_text(c.train_score)})" for c in archive.lineage(cand.id)))
    lines.append(f"scores vs tuned baseline: screen {gain_text(cand.screen_score)}, training "
                 f"{gain_text(cand.train_score)}, validation {gain_text(cand.validation_score)},"
                 f" held-out capacity {gain_text(heldout_gain(cand))}")
    if cand.params:
        lines.append(f"tuned parameters: {params_text(cand.params)}")
    if cand.failure:
        lines.append(f"failures: {cand.failure}")
    outcomes = attempt_outcomes(archive, cand)
    if outcomes:
        lines.append("attempts (each reply checked again here):")
        lines += [f"  {k}: {short(o, 300)}" for k, o in enumerate(outcomes, 1)]
    lines.append(
        f"cost: {cand.prompt_tokens:,} prompt + {cand.completion_tokens:,} completion tokens,"
        f" ${cand.cost_usd:.4f}, {cand.attempts} attempt(s); evaluation "
        f"{cand.eval_seconds:.0f} s, {archive.evaluation_count(cand.id)} evaluations")
    return lines


def _scores(archive: Archive, cand: Candidate) -> list[str]:
    lines = []
    for phase, rows in archive.scores(cand.id).items():
        lines.append(f"\n{phase} scores per workload (gain in ladder goodput vs tuned baseline):")
        for label, (score, detail) in rows.items():
            extra = ""
            if "attainment" in detail:
                extra = "  SLO attainment per rung " + " ".join(
                    f"{a:.2f}" for a in detail["attainment"])
            elif "capacity" in detail:
                extra = f"  capacity {detail['capacity']:.3g} req/s"
            lines.append(f"  {label:<24} {gain_text(score):>8}{extra}")
    return lines


def _gate_text(gate: Mapping[str, Any]) -> list[str]:
    lines = [f"\ngate: {'passed' if gate.get('passed') else 'refused'}"
             + ("" if gate.get("passed") else ": " + "; ".join(gate.get("reasons", [])))]
    for comp in gate.get("comparisons", []):
        lines.append(f"  vs {comp['reference']}: mean {gain_text(comp['mean_gain'])}, lower "
                     f"bound {gain_text(comp['lower_bound'])} (margin {comp['margin']:.0%})")
        for label, (c, r) in comp["capacities"].items():
            lines.append(f"    {label:<24} {c:9.3g} vs {r:9.3g} req/s  "
                         f"{gain_text(comp['gains'][label])}")
    return lines + gate_conditions_text(gate)


def gate_conditions_text(gate: Mapping[str, Any]) -> list[str]:
    """The gate's conditions with their figures, and the fairness figures at the claim."""
    lines = []
    for cond in gate.get("conditions") or []:
        lines.append(f"  {'pass' if cond['passed'] else 'FAIL'}  {cond['name']:<12} "
                     f"{cond['figures']}")
    at_claim = gate.get("at_claim") or {}
    comps = gate.get("comparisons") or []
    if at_claim and comps:
        lines.append("  at the claimed capacity:")
        lines += [f"    {x}" for x in fairness_lines(comps[0]["capacities"], at_claim)]
    return lines


def explanation_text(explanation: Mapping[str, Any]) -> list[str]:
    """Why a gated candidate wins, as its stored explanation's figures say."""
    why = Explanation.from_dict(explanation)
    return ["\nwhy (from the measured diagnostics, vs the tuned baseline at the same rates):",
            *(f"  {line}" for line in why.lines())]
