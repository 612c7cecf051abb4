"""The promotion gate on the starvation corpus and the reference policies, per workload.

For each workload (three held-out seeds) and each policy, the gate's verdict against fixed-chunk
batching with round robin at the same chunk (so only scheduling and routing differ): the
geometric-mean capacity gain, the conditions that refuse it, and the figures the claim
conditions look at (worst p99 TTFT/deadline against the baseline's, worst wait over deadline,
requests overtaken while overdue per instance). Trusted files only: runs in process.

    PYTHONPATH=. python scripts/gate_corpus.py --workloads chat:2000,multiturn:600,mixed:2000
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from autotuner.config import load_config
from autotuner.gate import PolicyRef, run_gate
from autotuner.policy import read_policy_file
from autotuner.resources import baseline_path
from autotuner.scoring import Evaluator, Instance, in_process

ROOT = Path(__file__).resolve().parents[1]
REFERENCES = ("least_outstanding", "prefix_aware", "power_of_two", "sarathi_shrinking")


class _Memory:
    def __init__(self) -> None:
        self.results: dict[str, dict] = {}

    def get_evaluations(self, keys):
        return {k: self.results[k] for k in keys if k in self.results}

    def put_evaluation(self, key, **kwargs):
        self.results[key] = kwargs["result"]


def _params(path: Path, chunk: int) -> dict:
    """The file's defaults, with the baseline's chunk where it uses (or inherits) one."""
    defaults = read_policy_file(path).defaults()
    return {**defaults, "chunk_size": chunk} if "chunk_size" in defaults else defaults


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", default="chat:2000,multiturn:600,mixed:2000",
                   help="SCENARIO:REQUESTS,... (three held-out seeds each)")
    p.add_argument("--chunk", type=int, default=2048, help="the baseline's chunk size")
    p.add_argument("policies", nargs="*", type=Path, help="policy files (default: the corpus, "
                   "the audit subjects, the held-back corpus and the reference policies)")
    args = p.parse_args()
    gaming = ROOT / "tests" / "gaming"
    files = args.policies or (sorted(gaming.glob("*.py")) + sorted((ROOT / "baselines" / "audit")
                                                                    .glob("*.py"))
                              + sorted((gaming / "heldout").glob("*.py"))
                              + [baseline_path(r) for r in REFERENCES])
    ev = Evaluator(_Memory(), 1, in_process)
    base = PolicyRef("fixed_chunk.py", baseline_path("fixed_chunk").read_text(),
                     {"chunk_size": args.chunk})
    print(f"{'workload':<10} {'policy':<28} {'gain':>7} {'tail':>7} {'wait':>6}  "
          f"{'inversions':<14} refused by")
    for spec in args.workloads.split(","):
        scen, n = spec.split(":")
        cfg = load_config(**{"workloads.scenarios": [scen], "workloads.screen": [],
                             "gate.bootstrap": 1000, "gate.capacity_rel_tol": 0.04,
                             "gate.references": []})
        insts = [Instance(scen, seed, int(n)) for seed in (1001, 1002, 1003)]
        for f in files:
            t0 = time.perf_counter()
            res = run_gate(ev, cfg, f.stem, PolicyRef(f.name, f.read_text(),
                                                      _params(f, args.chunk)), base, insts)
            cond = {c.name: c for c in res.conditions}
            tails = cond["tail"].detail
            tail = max((c / b - 1 for c, b in tails.values() if b > 0), default=math.nan)
            wait = max(cond["max_wait"].detail.values(), default=math.nan)
            inv = [r["candidate"].get("priority_inversions") for r in res.at_claim.values()]
            print(f"{scen:<10} {f.stem:<28} {res.baseline.mean_gain:>+7.1%} {tail:>+7.0%} "
                  f"{wait:>6.2f}  {str(inv):<14} {', '.join(res.failed()) or 'PASSES'}"
                  f"  ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
