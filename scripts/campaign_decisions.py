"""Run a tiny offline campaign with a fixed seed and print its archive's decisions as canonical
JSON, so that two trees can be compared (same seed -> same decisions).

A refactoring that must not change behaviour is checked by running this on the tree before and
after it and diffing the two files:

    PYTHONPATH=<tree> python scripts/campaign_decisions.py OUT.json [--backend B]

The campaign: offline proposer, the real sandbox (process backend by default), parallelism 1,
one proposal in flight (two would race: which comes back first decides the ids),
budget.proposals bounds the search (the wall-time budget is far away so speed does not decide).
"""
from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL"):
    os.environ.pop(var, None)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autotuner.archive import Archive  # noqa: E402
from autotuner.campaign import Campaign  # noqa: E402
from autotuner.config import load_config  # noqa: E402

CONFIG = {
    "workloads.scenarios": ["multiturn"], "workloads.screen": ["multiturn"],
    "workloads.requests": 150, "workloads.scenario_requests": {},
    "workloads.heldout_seeds": [1001, 1002], "objective.ladder": [1.0, 1.4],
    "budget.trials": 2, "budget.proposals": 5, "budget.min_proposals": 5,
    "budget.wall_time_s": 36000.0, "search.seeds": ["least_outstanding"],
    "search.islands": 2, "search.finalists": 2, "search.in_flight": 1, "gate.bootstrap": 500,
    "gate.capacity_rel_tol": 0.05, "parallelism": 1, "seed": 7,
}


TIMINGS = {"seconds", "elapsed_s", "eval_seconds"}


def rounded(x: Any) -> Any:
    if isinstance(x, float):
        return float(f"{x:.12g}")
    if isinstance(x, dict):  # wall-clock timings are not decisions
        return {k: rounded(v) for k, v in x.items() if k not in TIMINGS}
    if isinstance(x, (list, tuple)):
        return [rounded(v) for v in x]
    return x


def decisions(folder: Path) -> dict[str, Any]:
    with Archive(folder / "archive.sqlite") as archive:
        cands = []
        for c in archive.candidates():
            cands.append({
                "id": c.id, "parent": c.parent_id, "island": c.island, "origin": c.origin,
                "proposer": c.proposer, "status": c.status, "code_sha": c.code_sha,
                "params": c.params, "screen": c.screen_score, "train": c.train_score,
                "validation": c.validation_score,
                "failure": (c.failure.splitlines() or [""])[0],
                "gate": c.gate,
                "scores": {phase: {w: score for w, (score, _detail) in by.items()}
                           for phase, by in archive.scores(c.id).items()},
            })
        meta = {k: archive.get_meta(k) for k in ("phase", "promoted", "baseline")}
        promotions = sorted(p.name for p in (folder / "promotions").glob("*.json")) \
            if (folder / "promotions").is_dir() else []
    return rounded({"candidates": cands, "meta": meta, "promotion_files": promotions})


def main() -> int:
    out = Path(sys.argv[1])
    backend = sys.argv[sys.argv.index("--backend") + 1] if "--backend" in sys.argv else "process"
    with tempfile.TemporaryDirectory(prefix="decisions-") as tmp:
        cfg = load_config(**CONFIG, name="d", results_dir=str(Path(tmp) / "results"),
                          **{"sandbox.backend": backend})
        stream = io.StringIO()
        t0 = time.monotonic()
        rc = Campaign(cfg, stream=stream, tty=False).run()
        if rc != 0:
            print(stream.getvalue(), file=sys.stderr)
            return rc
        data = decisions(cfg.campaign_dir)
    out.write_text(json.dumps(data, sort_keys=True, indent=1) + "\n")
    print(f"{out}: {len(data['candidates'])} candidates, promoted "
          f"{data['meta']['promoted']!r}, {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
