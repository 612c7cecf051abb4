"""Research: how well does a goodput ladder track capacity under SLO?

The campaign optimises a cheap stand-in for capacity: goodput (requests/s meeting both SLOs)
summed over a ladder of rates, each a factor of the tuned baseline's capacity on the instance,
divided by the baseline's. This script measures, for the tuned fixed-chunk baseline and a spread
of ingredient policies, both the true capacity gain and the ladder gain for a few ladders, per
scenario, and prints the Spearman rank correlation between them (and the SLO shares on the
ladder's top rung, which a gate's "no SLO metric regresses" rule would look at).

    python scripts/ladder_vs_capacity.py                  # ~5-10 min on 2 cores
    python scripts/ladder_vs_capacity.py --scenarios chat,multiturn
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from autotuner.policy import load_policy, read_policy_file, read_policy_source
from autotuner.proposers import ingredients as ing
from autotuner.resources import baseline_path
from autotuner.sim.engine import ClusterSpec, simulate
from autotuner.sim.metrics import SLO, capacity, per_request, probe_horizon
from autotuner.sim.workload import make_workload

# The campaign's default requests per instance.
REQUESTS = {"chat": 2000, "bursty": 2000, "summarize": 1000, "multiturn": 600, "mixed": 1000}
LADDERS = {
    "0.8-1.5 (default)": (0.8, 1.0, 1.25, 1.5),
    "0.8-2": (0.8, 1.0, 1.25, 1.5, 2.0),
    "1-3": (1.0, 1.5, 2.0, 3.0),
}
FACTORS = sorted({f for ladder in LADDERS.values() for f in ladder})
POLICIES = {
    "fixed_chunk@2048": ("baseline", {"chunk_size": 2048}),
    "fixed_chunk@512": ("baseline", {"chunk_size": 512}),
    "fcfs+fixed+least_outstanding": (("fcfs_order", "fixed_budget", "least_outstanding_route"), {}),
    "fcfs+fixed+least_work": (("fcfs_order", "fixed_budget", "least_work_route"), {}),
    "srpf_aging+fixed+least_work": (("srpf_aging_order", "fixed_budget", "least_work_route"), {}),
    "edf_slack+fixed+least_work": (("edf_slack_order", "fixed_budget", "least_work_route"), {}),
    "slack_srpf+pressure+least_work": (
        ("slack_srpf_order", "pressure_budget", "least_work_route"),
        {},
    ),
    "slack_srpf+fixed+least_work": (("slack_srpf_order", "fixed_budget", "least_work_route"), {}),
    "slack_srpf+kv_guard+least_work": (
        ("slack_srpf_order", "kv_guard_budget", "least_work_route"),
        {},
    ),
}


def _code(spec) -> str:
    if spec == "baseline":
        return read_policy_file(baseline_path("fixed_chunk")).code
    return ing.compose(*spec)


def _measure(job):
    name, scenario, seed, base_cap = job
    spec, params = POLICIES[name]
    source = read_policy_source(_code(spec))
    wl = make_workload(scenario, REQUESTS[scenario], seed=seed)
    cap = capacity(ClusterSpec(), wl, lambda: load_policy(source, params), SLO()).rate
    rungs = {}
    if base_cap:
        for f in FACTORS:
            w = wl.with_rate(f * base_cap)
            res = simulate(
                ClusterSpec(), w, load_policy(source, params), horizon=probe_horizon(w, SLO())
            )
            r = per_request(w, res)
            with np.errstate(invalid="ignore"):
                ttft = r["ttft"] <= SLO().ttft_s
                tpot = r["tpot"] <= SLO().tpot_s
            span = max(float(np.nanmax(res.finish)) if np.isfinite(res.finish).any() else 0, 1e-9)
            rungs[f] = {
                "goodput": float((ttft & tpot).sum()) / max(span, float(w.arrival[-1])),
                "ttft_share": float(ttft.mean()),
                "tpot_share": float(tpot.mean()),
            }
    return name, scenario, seed, cap, rungs


def _spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a))
    rb = np.argsort(np.argsort(b))
    if np.std(ra) == 0 or np.std(rb) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", default=",".join(REQUESTS))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--out", default="scripts/output")
    args = ap.parse_args(argv)
    scenarios = args.scenarios.split(",")
    with Pool(args.procs) as pool:
        base = {
            s: cap
            for _, s, _, cap, _ in pool.map(
                _measure, [("fixed_chunk@2048", s, args.seed, None) for s in scenarios]
            )
        }
        rows = pool.map(
            _measure, [(n, s, args.seed, base[s]) for n in POLICIES for s in scenarios], chunksize=1
        )
    data = {(n, s): (cap, rungs) for n, s, _, cap, rungs in rows}
    lines = [
        "# Does the goodput ladder track capacity?",
        "",
        f"Seed {args.seed}; requests per instance as the campaign's defaults; ladder rates are "
        "factors of fixed_chunk@2048's capacity on the instance. Per policy and scenario: "
        "capacity gain / ladder gain for each ladder.",
        "",
        "| policy | " + " | ".join(scenarios) + " |",
        "|---|" + "---|" * len(scenarios),
    ]
    corr = {label: [] for label in LADDERS}
    for n in POLICIES:
        cells = []
        for s in scenarios:
            cap, rungs = data[(n, s)]
            bcap, brungs = data[("fixed_chunk@2048", s)]
            parts = [f"cap {100 * (cap / bcap - 1):+.0f}%"]
            for label, ladder in LADDERS.items():
                g = sum(rungs[f]["goodput"] for f in ladder)
                bg = sum(brungs[f]["goodput"] for f in ladder)
                parts.append(f"{label.split()[0]} {100 * (g / bg - 1):+.0f}%")
            top = rungs[1.5]
            parts.append(f"@1.5x TTFT {top['ttft_share']:.2f} TPOT {top['tpot_share']:.2f}")
            cells.append(", ".join(parts))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Spearman rank correlation of ladder gain with capacity gain, per scenario:", ""]
    for label, ladder in LADDERS.items():
        per = []
        for s in scenarios:
            caps = [data[(n, s)][0] for n in POLICIES]
            lad = [sum(data[(n, s)][1][f]["goodput"] for f in ladder) for n in POLICIES]
            per.append(_spearman(caps, lad))
        corr[label] = per
        lines.append(
            f"- ladder {label}: "
            + ", ".join(f"{s} {c:.2f}" for s, c in zip(scenarios, per, strict=True))
            + f" (mean {statistics.fmean(per):.2f})"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ladder_vs_capacity.md").write_text(text)
    (out / "ladder_vs_capacity.json").write_text(
        json.dumps({f"{n}|{s}": v for (n, s), v in data.items()}, indent=1, default=str)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
