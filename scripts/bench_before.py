"""Evaluations per second of this tree against an older git revision of it, in one run.

Issue 12's bar compares the campaign's evaluations per second with "today's main" when the issue
was filed, on the same machine in the same run. ``autotuner bench --campaign`` compares paths of
the *current* code (its one-worker-per-run path runs today's faster simulator and replay, so it
credits the old main with them); this script runs the older revision's own code instead: the
same job mix (ladder runs of fixed_chunk at three chunk sizes on the default training instances,
at the rungs' rates: identical work in both trees) through each tree's own ``Evaluator`` in its
default configuration, in alternating passes so that machine load hits both alike.

    python scripts/bench_before.py 4ec7a4d [--rounds 3] [--requests 500] [--parallelism 1]

4ec7a4d is main when issue 12 was filed (the commit before its first change, 7cce4c3). Each pass
is a fresh process (``python -c DRIVER`` with the tree on PYTHONPATH), so imports are each
tree's own; the figures are simulations (one per run) over the wall seconds of ``evaluate``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs in either tree: only APIs both revisions have (Job, Evaluator, NoCache, split_instances,
# build_workload, CampaignConfig, baseline_path).
DRIVER = r"""
import json, sys, time
from autotuner.config import CampaignConfig
from autotuner.resources import baseline_path
from autotuner.scoring import Evaluator, Job, NoCache, build_workload, split_instances
from dataclasses import replace
requests, trials, parallelism, repeat = (int(a) for a in sys.argv[1:5])
cfg = CampaignConfig()
insts = [replace(i, requests=min(i.requests, requests)) for i in split_instances(cfg)["train"]]
code = baseline_path("fixed_chunk").read_text()
rates = {i.label: build_workload(i).rate for i in insts}
jobs = [Job(code, {"chunk_size": 256 * (n + 1)}, i, "run", rates[i.label] * f, cfg.cluster,
            cfg.slo, cfg.sandbox, name="fixed_chunk.py")
        for n in range(trials) for i in insts for f in cfg.objective.ladder]
ev = Evaluator(NoCache(), parallelism=parallelism)
t0 = time.perf_counter()
try:
    results = [r for _ in range(repeat) for r in ev.evaluate(jobs)]  # no cache: each runs
finally:
    wall = time.perf_counter() - t0
    close = getattr(ev, "close", None)
    if close:
        close()
print(json.dumps({"wall_s": wall, "evaluations": ev.sims, "jobs": len(jobs),
                  "errors": sum(1 for r in results if r.get("error"))}))
"""


def checkout(revision: str, into: Path) -> Path:
    """The revision's files (``git archive``) in ``into``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        sys.exit(f"bench_before: {revision}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def one_pass(tree: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", DRIVER, str(args.requests), str(args.trials),
                           str(args.parallelism), str(args.repeat)], cwd=tree, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        sys.exit(f"bench_before: the pass in {tree} failed: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revision", help="the older git revision, e.g. 4ec7a4d")
    parser.add_argument("--rounds", type=int, default=3, help="alternating pass pairs")
    parser.add_argument("--requests", type=int, default=500,
                        help="each training instance capped at this many requests")
    parser.add_argument("--trials", type=int, default=3, help="chunk sizes (256, 512, ...)")
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1,
                        help="each pass evaluates the job mix this many times (nothing is cached, "
                             "so every run runs): a longer window, in which a tree's one-time "
                             "start-up weighs as little as in a campaign")
    args = parser.parse_args()
    totals = {"before": [0.0, 0, 0], "now": [0.0, 0, 0]}
    with tempfile.TemporaryDirectory(prefix="bench-before-") as tmp:
        trees = {"before": checkout(args.revision, Path(tmp)), "now": ROOT}
        for k in range(args.rounds):
            for arm in ("before", "now") if k % 2 == 0 else ("now", "before"):
                row = one_pass(trees[arm], args)
                totals[arm][0] += row["wall_s"]
                totals[arm][1] += row["evaluations"]
                totals[arm][2] += row["errors"]
                print(f"round {k + 1} {arm:6s}: {row['evaluations']} evaluations in "
                      f"{row['wall_s']:.2f} s = {row['evaluations'] / row['wall_s']:.2f}/s "
                      f"(load {os.getloadavg()[0]:.2f})", flush=True)
    rate = {arm: n / wall for arm, (wall, n, _) in totals.items()}
    print(f"evaluations/s: before ({args.revision}) {rate['before']:.2f}, now "
          f"{rate['now']:.2f}: {rate['now'] / rate['before']:.2f}x "
          f"(errors: before {totals['before'][2]}, now {totals['now'][2]})")


if __name__ == "__main__":
    main()
