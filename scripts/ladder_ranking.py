"""Research: does the ladder objective rank policies as capacity does, under the new yardstick?

The campaign searches on a cheap stand-in (``autotuner.scoring.ladder_scores``: goodput over a
ladder of rates, factors of the baseline's capacity, a rung earning nothing once its backlog
grows) and gates on capacity (the highest sustainable rate meeting the share). This script
measures both, with the same per-request SLO, for the audit's policies (the fixed-chunk baseline,
shortest-first with no aging, the long-prompt deferrer, least-outstanding and prefix-aware
routing, and two more references) on the training instances, and prints per scenario the
capacity gain and each ladder's gain over the baseline, and how often the two order a pair of
policies the same way (Kendall's concordance; ties in capacity, within the bisection's 2 %, are
left out).

    PYTHONPATH=. python scripts/ladder_ranking.py                 # ~5 min on 2 cores
    PYTHONPATH=. python scripts/ladder_ranking.py --scenarios chat,mixed --procs 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from multiprocessing import Pool
from pathlib import Path

from autotuner.policy import load_policy, read_policy_file
from autotuner.resources import asset_dir, baseline_path
from autotuner.scoring import goodput_of
from autotuner.sim.engine import ClusterSpec
from autotuner.sim.metrics import SLO, capacity, metrics_at
from autotuner.sim.workload import make_workload

REQUESTS = {"chat": 2000, "bursty": 2000, "summarize": 1000, "multiturn": 600, "mixed": 1000}
POLICIES = ("fixed_chunk", "shortest_first", "defer_long", "least_outstanding", "prefix_aware",
            "power_of_two", "sarathi_shrinking")
LADDERS = {"1,1.5,2 (default)": (1.0, 1.5, 2.0), "1,1.2,1.5": (1.0, 1.2, 1.5),
           "1,1.2,1.5,2": (1.0, 1.2, 1.5, 2.0)}
FACTORS = sorted({f for ladder in LADDERS.values() for f in ladder})
CREDITS = {"sustained": lambda m: goodput_of(m, "requests"), "plain": lambda m: m["goodput_rps"]}


def _source(name: str):
    audit = asset_dir("audit_policies") / f"{name}.py"
    return read_policy_file(audit if audit.is_file() else baseline_path(name))


def _measure(job: tuple[str, str, int, float | None]):
    name, scenario, seed, base_cap = job
    source = _source(name)
    wl = make_workload(scenario, REQUESTS[scenario], seed=seed)
    slo = SLO()
    cap = capacity(ClusterSpec(), wl, lambda: load_policy(source), slo, start=base_cap)
    rungs = {}
    if base_cap:
        for f in FACTORS:
            m = metrics_at(ClusterSpec(), wl, lambda: load_policy(source), slo, f * base_cap)
            rungs[f] = m.to_dict()
    return name, scenario, cap.rate, len(cap.probes), rungs


def _geomean(gains: list[float]) -> float:
    """Geometric mean of (1 + gain), minus one, as ``ladder_scores`` and the gate combine."""
    return math.exp(sum(math.log(max(1 + g, 0.01)) for g in gains) / len(gains)) - 1


def _concordance(a: list[float], b: list[float], tie: float = 0.02) -> tuple[int, int]:
    agree = total = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        if abs(a[i] - a[j]) <= tie * max(abs(a[i]), abs(a[j]), 1e-9):
            continue
        total += 1
        agree += (a[i] - a[j]) * (b[i] - b[j]) > 0
    return agree, total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", default=",".join(REQUESTS))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--out", default="scripts/output/ladder_ranking.md")
    ap.add_argument("--credit", choices=sorted(CREDITS), default="sustained",
                    help="a rung's credit: the objective's (sustained goodput) or plain goodput")
    args = ap.parse_args(argv)
    scenarios = args.scenarios.split(",")
    with Pool(args.procs) as pool:
        base = {s: cap for _, s, cap, _, _ in pool.map(
            _measure, [("fixed_chunk", s, args.seed, None) for s in scenarios])}
        rows = pool.map(_measure, [(n, s, args.seed, base[s]) for n in POLICIES
                                   for s in scenarios], chunksize=1)
    raw = {(n, s): (cap, probes, rungs) for n, s, cap, probes, rungs in rows}
    Path(args.out).with_suffix(".json").write_text(json.dumps(
        {f"{n}|{s}": v for (n, s), v in raw.items()}, default=str))
    credit = CREDITS[args.credit]
    data = {k: (cap, probes, {f: credit(m) for f, m in rungs.items()})
            for k, (cap, probes, rungs) in raw.items()}
    lines = [f"# Ladder objective ({args.credit} credit) against capacity (deadline SLO, "
             "sustainable capacity)", "",
             f"Seed {args.seed}; training-size instances; policies at their default parameters; "
             "gains over fixed_chunk (512); mean = geometric. Cells: capacity gain | ladder gains "
             f"({' / '.join(LADDERS)}).", ""]
    lines += ["| policy | " + " | ".join(scenarios) + " | mean |",
              "|---|" + "---|" * (len(scenarios) + 1)]
    gains: dict[str, dict[str, list[float]]] = {"capacity": {}} | {k: {} for k in LADDERS}
    for n in POLICIES:
        cells = []
        for s in scenarios:
            cap, _, rungs = data[(n, s)]
            bcap, _, brungs = data[("fixed_chunk", s)]
            cg = cap / bcap - 1 if bcap else float("nan")
            gains["capacity"].setdefault(n, []).append(cg)
            parts = []
            for label, ladder in LADDERS.items():
                ref = sum(brungs[f] for f in ladder)
                lg = sum(rungs[f] for f in ladder) / ref - 1 if ref else float("nan")
                gains[label].setdefault(n, []).append(lg)
                parts.append(f"{100 * lg:+.0f}")
            cells.append(f"{100 * cg:+.0f}% \\| " + " / ".join(parts))
        mean = {k: _geomean(v[n]) for k, v in gains.items()}
        cells.append(f"{100 * mean['capacity']:+.0f}% \\| "
                     + " / ".join(f"{100 * mean[k]:+.0f}" for k in LADDERS))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Pairs of policies ordered the same way by the ladder as by capacity "
              "(per scenario, and on the geometric mean over scenarios, which is what the search "
              "ranks and the gate judges):", ""]
    for label in LADDERS:
        per = []
        for k, s in enumerate(scenarios):
            caps = [gains["capacity"][n][k] for n in POLICIES]
            lad = [gains[label][n][k] for n in POLICIES]
            per.append((s, *_concordance(caps, lad)))
        caps = [_geomean(gains["capacity"][n]) for n in POLICIES]
        lad = [_geomean(gains[label][n]) for n in POLICIES]
        a, t = _concordance(caps, lad)
        lines.append(f"- {label}: " + ", ".join(f"{s} {x}/{y}" for s, x, y in per)
                     + f"; mean over scenarios {a}/{t}")
    probes = sum(p for _, p, _ in data.values()) / len(data)
    lines += ["", f"Capacity searches: {probes:.1f} probes each on average; a ladder costs one "
              "run per rung."]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
