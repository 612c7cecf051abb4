"""Research: which heuristic pieces buy capacity under SLO in the simulator, and how much.

Measures, in process, the capacity (highest request rate at which >= 90 % of requests meet both
the TTFT and the TPOT target, bisected by ``autotuner.sim.metrics.capacity``) of

- the fixed-chunk baseline at a grid of chunk sizes (its best is the tuned baseline), and
- policies composed from ``autotuner.proposers.ingredients``: each order piece with the fixed
  budget and the least-work router, each budget with the strongest order and router, each
  router with the strongest order and budget, and the proposer's strong combinations,

on each built-in scenario, 4 replicas of Llama-3-8B on H100, the default SLO. Gains are against
the tuned baseline *per scenario* (the best chunk for that scenario, which is kinder to the
baseline than one chunk for all). Writes a Markdown table (and JSON) under ``--out``.

    python scripts/explore_heuristics.py                       # full study, ~10 min on 2 cores
    python scripts/explore_heuristics.py --quick               # fewer policies, one seed
    python scripts/explore_heuristics.py --scenarios chat,mixed --seeds 1,2,3
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from multiprocessing import Pool
from pathlib import Path

from autotuner.policy import load_policy, read_policy_file, read_policy_source
from autotuner.proposers import ingredients as ing
from autotuner.resources import baseline_path
from autotuner.sim.engine import ClusterSpec
from autotuner.sim.metrics import SLO, capacity
from autotuner.sim.workload import make_workload

# Requests per scenario: long enough that the run at capacity lasts ~40-100 s of simulated time
# (capacity measured on a few seconds of traffic is a transient, not a sustained rate: chat's
# baseline reads 139 req/s with 500 requests, 92 with 4000, 78 with 16000).
REQUESTS = {"chat": 4000, "bursty": 4000, "summarize": 2000, "multiturn": 1500, "mixed": 2000}
CHUNKS = (256, 512, 1024, 2048, 4096, 8192)

_WORKLOADS: dict = {}


def _workload(scenario: str, seed: int, scale: float):
    key = (scenario, seed, scale)
    if key not in _WORKLOADS:
        _WORKLOADS[key] = make_workload(
            scenario, max(50, int(REQUESTS[scenario] * scale)), seed=seed
        )
    return _WORKLOADS[key]


def _capacity(job: tuple) -> float | str:
    code, params, scenario, seed, scale = job
    source = read_policy_source(code)
    result = capacity(
        ClusterSpec(), _workload(scenario, seed, scale), lambda: load_policy(source, params), SLO()
    )
    return f"error: {result.error}" if result.error else result.rate


def candidates(quick: bool) -> dict[str, tuple[str, dict]]:
    """Name -> (policy code, params) of everything measured besides the baseline grid."""
    best_order, best_budget, best_route = ing.STRONG_COMBINATIONS[0]
    out: dict[str, tuple[str, dict]] = {}
    orders = [o.name for o in ing.ORDERS]
    budgets = [b.name for b in ing.BUDGETS]
    routes = [r.name for r in ing.ROUTES]
    if quick:
        orders = [best_order, "srpf_aging_order", "fcfs_order"]
        budgets, routes = [best_budget], [best_route, "prefix_guard_route"]
    for order in orders:
        out[f"{order} + {best_budget} + {best_route}"] = (
            ing.compose(order, best_budget, best_route),
            {},
        )
    for budget in budgets:
        out[f"{best_order} + {budget} + {best_route}"] = (
            ing.compose(best_order, budget, best_route),
            {},
        )
    for route in routes:
        out[f"{best_order} + {best_budget} + {route}"] = (
            ing.compose(best_order, best_budget, route),
            {},
        )
    if not quick:
        for combo in ing.STRONG_COMBINATIONS:
            out[" + ".join(combo)] = (ing.compose(*combo), {})
        # Routing alone, with the baseline's partition and its tuned chunk swept below.
        for route in routes:
            for chunk in (2048, 8192):
                out[f"fcfs_order + fixed_budget@{chunk} + {route}"] = (
                    ing.compose("fcfs_order", "fixed_budget", route),
                    {"chunk_size": chunk},
                )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", default=",".join(REQUESTS))
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply requests per scenario")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument(
        "--only", default="", help="comma-separated substrings: measure matching policies only"
    )
    ap.add_argument("--out", default="scripts/output")
    args = ap.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    seeds = [int(s) for s in args.seeds.split(",") if s]

    base = read_policy_file(baseline_path("fixed_chunk")).code
    policies: dict[str, tuple[str, dict]] = {
        f"fixed_chunk@{c}": (base, {"chunk_size": c}) for c in CHUNKS
    }
    extra = candidates(args.quick)
    if args.only:
        wanted = args.only.split(",")
        extra = {k: v for k, v in extra.items() if any(w in k for w in wanted)}
    policies.update(extra)
    jobs = [(n, s, seed) for n in policies for s in scenarios for seed in seeds]
    started = time.time()
    with Pool(args.procs) as pool:
        values = pool.map(
            _capacity,
            [(*policies[n], s, seed, args.scale) for n, s, seed in jobs],
            chunksize=1,
        )
    elapsed = time.time() - started
    table: dict[str, dict[str, list]] = {}
    for (name, scenario, _seed), value in zip(jobs, values, strict=True):
        table.setdefault(name, {}).setdefault(scenario, []).append(value)

    def mean(name: str, scenario: str) -> float:
        vals = table[name][scenario]
        return statistics.fmean(vals) if all(isinstance(v, float) for v in vals) else float("nan")

    tuned = {s: max(mean(f"fixed_chunk@{c}", s) for c in CHUNKS) for s in scenarios}
    tuned_chunk = {
        s: max(CHUNKS, key=lambda c, s=s: mean(f"fixed_chunk@{c}", s)) for s in scenarios
    }
    lines = [
        "# Capacity under SLO: tuned fixed chunk vs heuristic pieces",
        "",
        f"4 x Llama-3-8B on H100 (TP1), SLO TTFT {SLO().ttft_s} s and TPOT {SLO().tpot_s} s "
        f"met by >= 90 % of requests; seeds {seeds}; requests per scenario "
        + ", ".join(f"{s} {max(50, int(REQUESTS[s] * args.scale))}" for s in scenarios)
        + f"; {elapsed:.0f} s on {args.procs} processes.",
        "",
        "Cells: capacity in requests/s (gain over the tuned baseline of that scenario). "
        "Tuned baseline = best fixed chunk per scenario: "
        + ", ".join(f"{s} {tuned_chunk[s]}" for s in scenarios)
        + ".",
        "",
        "| policy | " + " | ".join(scenarios) + " | geo-mean gain |",
        "|---|" + "---|" * (len(scenarios) + 1),
    ]
    for name in policies:
        cells, ratios = [], []
        for s in scenarios:
            m = mean(name, s)
            if m != m:  # NaN: an error
                cells.append("error")
                continue
            ratios.append(m / tuned[s])
            cells.append(f"{m:.2f} ({(m / tuned[s] - 1) * 100:+.0f}%)")
        geo = statistics.geometric_mean(ratios) if ratios and len(ratios) == len(scenarios) else 0
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {(geo - 1) * 100:+.0f}% |")
    errors = {n: v for n, d in table.items() for v in d.values() for x in v if isinstance(x, str)}
    if errors:
        lines += ["", "Errors:", *(f"- {n}: {v}" for n, v in errors.items())]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "explore_quick" if args.quick else "explore"
    if args.only:
        stem += "_only_" + re.sub(r"[^a-z0-9]+", "_", args.only.lower()).strip("_")
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps({"seeds": seeds, "table": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
