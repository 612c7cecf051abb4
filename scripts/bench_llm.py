"""Benchmark the LLM proposer against a real endpoint: N proposals, what each cost and gave.

Not a test: it prints figures. Per proposal: prompt and completion tokens (the server's count),
seconds, whether a reply parsed into a policy file, whether it passed the static check, whether
it survived the campaign's sandboxed dry run (part of the repair loop, as in a campaign), whether
it ran (``autotuner evaluate``'s function: sandbox, trusted replay) and a cheap score; per call:
the server's prompt tokens beside our estimate, and what became of the reply.

The request is shaped like the default campaign's first one: a reference seed as the parent
with scores on the five training workloads, other seeds beside it (the prompt cap decides how
many are shown). The score is the evaluated file's goodput relative to the fixed-chunk baseline's
on one workload, both at their default parameters: an indicator that the file does something,
not the campaign's tuned, laddered score.

    python -m llama_cpp.server --model SmolLM2-135M-Instruct.Q4_1.gguf --n_threads 1 --port 8765
    PYTHONPATH=. python scripts/bench_llm.py --base-url http://127.0.0.1:8765/v1 --proposals 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autotuner.campaign.proposers import sandbox_dry_run  # noqa: E402
from autotuner.check import check_reasons  # noqa: E402
from autotuner.config import CampaignConfig  # noqa: E402
from autotuner.proposers.base import (  # noqa: E402
    CheckFn,
    ClusterInfo,
    Objective,
    ParentInfo,
    Proposal,
    ProposalRequest,
    WorkloadInfo,
)
from autotuner.proposers.edits import parse_reply  # noqa: E402
from autotuner.proposers.llm import LLMConfig, LLMProposer  # noqa: E402
from autotuner.proposers.llm.proposer import REPEATED  # noqa: E402
from autotuner.proposers.prompt import PromptBuilder, strip_docstrings  # noqa: E402
from autotuner.resources import baseline_path  # noqa: E402

SEEDS = ("sarathi_shrinking", "prefix_aware", "power_of_two", "least_outstanding")


def campaign_like_request(cfg: CampaignConfig, parent: str = SEEDS[0],
                          others: tuple[str, ...] = SEEDS[1:3]) -> ProposalRequest:
    """A first request as the default campaign builds one (see Campaign._request)."""
    labels = [f"{s}/{cfg.workloads.train_seeds[0]}" for s in sorted(cfg.workloads.scenarios)]

    def info(name: str, score: float) -> ParentInfo:
        gains = {label: round(score + 0.01 * i, 4) for i, label in enumerate(labels)}
        return ParentInfo(name, baseline_path(name).read_text(), score, gains)

    o, c = cfg.objective, cfg.cluster
    objective = Objective(dataclasses.asdict(cfg.slo), cfg.slo.share, tuple(o.ladder),
                          o.goodput, cfg.gate.margin, "fixed_chunk")
    return ProposalRequest(
        info(parent, 0.03), tuple(info(n, 0.02 - 0.005 * i) for i, n in enumerate(others)),
        objective, tuple(WorkloadInfo(label, 3.0) for label in labels),
        ClusterInfo(c.replicas, c.model, c.gpu, c.tp, c.max_batch_tokens),
        baseline_params={"chunk_size": 512})


class StageLog:
    """Which stage refused each attempt of the proposal in progress: the static check, or the
    campaign's sandboxed dry run (what the model is told before a full evaluation)."""

    def __init__(self, dry_run: CheckFn | None) -> None:
        self.dry_run_fn = dry_run
        self.stages: list[tuple[str, bool]] = []
        self.seen: list[tuple[str, str, list[str]]] = []  # (stage, file, reasons), for --save

    def check(self, code: str) -> list[str]:
        reasons = check_reasons(code)
        self.stages.append(("check", not reasons))
        self.seen.append(("check", code, list(reasons)))
        return reasons

    def dry_run(self, code: str) -> list[str]:
        assert self.dry_run_fn is not None
        reasons = self.dry_run_fn(code)
        self.stages.append(("dry run", not reasons))
        self.seen.append(("dry run", code, list(reasons)))
        return reasons

    def survived_dry_run(self) -> bool:
        return ("dry run", True) in self.stages


def served_model(base_url: str) -> str:
    with urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=10) as reply:
        return json.load(reply)["data"][0]["id"]


def evaluated(code: str, scenario: str, requests: int) -> tuple[bool, float | None, str]:
    """(ran ok, goodput, why not) with ``autotuner evaluate``'s function."""
    from autotuner.evaluate import evaluate
    from autotuner.simulation import WorkloadSpec

    ev = evaluate(code, workload=WorkloadSpec(scenario, requests=requests))
    if not ev.ok or not ev.metrics:
        return False, None, "; ".join(ev.reasons)[:160]
    return True, float(ev.metrics["goodput_rps"]), ""


def save_dialogue(folder: Path, n: int, proposal: Proposal, stages: StageLog,
                  why: str) -> None:
    """One proposal's replies, each file checked and its reasons, as one JSON file."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "reason": proposal.reason or why,
        "ok": proposal.ok,
        "replies": list(proposal.raw_replies),
        "calls": [dataclasses.asdict(c) for c in proposal.calls],
        "checked": [{"stage": s, "code": c, "reasons": r} for s, c, r in stages.seen],
    }
    (folder / f"proposal{n:02d}.json").write_text(json.dumps(record, indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", required=True, help="the endpoint's .../v1 URL")
    p.add_argument("--model", help="model name (default: the first the server lists)")
    p.add_argument("--proposals", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=768, help="cap on one reply")
    p.add_argument("--temperature", type=float, default=LLMConfig().temperature)
    p.add_argument("--retries", type=int, default=2, help="max_check_retries")
    p.add_argument("--cap", type=int, default=LLMConfig().prompt_token_cap,
                   help="prompt_token_cap (0: none)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds one call may take")
    p.add_argument("--scenario", default="mixed", help="workload the score is measured on")
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--no-evaluate", action="store_true", help="skip the sandboxed run")
    p.add_argument("--no-dry-run", action="store_true",
                   help="leave out the campaign's sandboxed dry run from the repair loop")
    p.add_argument("--save", type=Path,
                   help="folder to write each proposal's replies and what was refused, whole")
    args = p.parse_args(argv)

    model = args.model or served_model(args.base_url)
    config = LLMConfig(model=model, base_url=args.base_url, max_tokens=args.max_tokens,
                       temperature=args.temperature, max_check_retries=args.retries,
                       prompt_token_cap=args.cap, timeout_s=args.timeout, max_retries=1)
    cfg = CampaignConfig()
    stages = StageLog(None if args.no_dry_run else sandbox_dry_run(cfg))
    llm = LLMProposer(config, env={},
                      dry_run=None if args.no_dry_run else stages.dry_run)
    request = campaign_like_request(cfg)
    fitted = PromptBuilder().fit(request, args.cap or None)
    print(f"model {model} at {args.base_url}")
    print(f"first prompt: ~{fitted.tokens} tokens estimated (cap {args.cap or 'none'}); "
          f"left out: {', '.join(fitted.dropped) or 'nothing'}")
    baseline = None
    if not args.no_evaluate:
        _, baseline, why = evaluated(baseline_path("fixed_chunk").read_text(), args.scenario,
                                     args.requests)
        print(f"fixed_chunk on {args.scenario} ({args.requests} requests): goodput "
              f"{baseline:.3f} req/s" if baseline else f"baseline failed: {why}")
    print()
    header = (f"{'#':>2} {'prompt':>7} {'compl':>6} {'secs':>6} {'calls':>5} {'parsed':>6} "
              f"{'check':>5} {'dry':>4} {'ran':>4} {'score':>7}  reason")
    print(header)
    shown_parent = strip_docstrings(request.parent.code)
    totals = {"prompt": 0, "completion": 0, "seconds": 0.0, "parsed": 0, "checked": 0,
              "dry": 0, "ran": 0, "repair_given": 0, "repaired": 0, "by_tool": 0,
              "by_model": 0, "by_both": 0, "repeats": 0, "after_repeat": 0}
    for n in range(1, args.proposals + 1):
        stages.stages, stages.seen = [], []
        t0 = time.monotonic()
        proposal: Proposal = llm.propose(request, stages.check)
        seconds = time.monotonic() - t0
        parsed = any(parse_reply(r, shown_parent)[0] is not None for r in proposal.raw_replies)
        ran, score, why = False, None, ""
        if proposal.ok and proposal.code and not args.no_evaluate:
            ran, goodput, why = evaluated(proposal.code, args.scenario, args.requests)
            if ran and goodput is not None and baseline:
                score = goodput / baseline - 1.0
        reason = proposal.reason or why
        print(f"{n:>2} {proposal.prompt_tokens:>7} {proposal.completion_tokens:>6} "
              f"{seconds:>6.1f} {len(proposal.calls):>5} {'yes' if parsed else 'no':>6} "
              f"{'yes' if proposal.ok else 'no':>5} "
              f"{'yes' if stages.survived_dry_run() else 'no':>4} {'yes' if ran else 'no':>4} "
              f"{'' if score is None else format(score, '+.3f'):>7}  {reason[:90]}")
        if args.save:
            save_dialogue(args.save, n, proposal, stages, why)
        for call in proposal.calls:
            print(f"     call {call.attempt}: prompt {call.prompt_tokens} (estimate "
                  f"{call.estimated_prompt_tokens}), completion {call.completion_tokens}, "
                  f"{call.seconds:.1f} s: {call.outcome[:80]}")
            if call.fixes:
                print(f"       the tool fixed: {'; '.join(call.fixes)[:150]}")
        totals["prompt"] += proposal.prompt_tokens
        totals["completion"] += proposal.completion_tokens
        totals["seconds"] += seconds
        totals["parsed"] += parsed
        totals["checked"] += proposal.ok
        totals["ran"] += ran
        totals["dry"] += stages.survived_dry_run()
        outcomes = [call.outcome for call in proposal.calls]
        calls = proposal.calls
        if calls and (calls[0].outcome != "ok" or calls[0].fixes):
            # The first reply was refused: the tool's fixes and then the model were given it.
            # Recovered means it then evaluated ok, not only that it passed the check.
            totals["repair_given"] += 1
            totals["repaired"] += ran
            if ran:
                how = ("by_tool" if len(calls) == 1 else
                       "by_both" if calls[-1].fixes else "by_model")
                totals[how] += 1
        repeats = [i for i, o in enumerate(outcomes) if o == REPEATED]
        totals["repeats"] += len(repeats)
        totals["after_repeat"] += len(outcomes) - 1 - repeats[0] if repeats else 0
    n = args.proposals
    print(f"\n{n} proposals: {totals['prompt']} prompt + {totals['completion']} completion "
          f"tokens (server), {totals['seconds']:.0f} s; parsed {totals['parsed']}/{n}, passed "
          f"the check {totals['checked']}/{n}, survived the dry run {totals['dry']}/{n}, ran "
          f"{totals['ran']}/{n}; proposer's own total "
          f"{llm.spent.prompt_tokens + llm.spent.completion_tokens} tokens in "
          f"{llm.spent.calls} calls")
    print(f"repair loop: given {totals['repair_given']} proposals whose first reply was refused, "
          f"recovered {totals['repaired']} (evaluated ok): {totals['by_tool']} by the tool's "
          f"fixes alone, {totals['by_model']} by the model, {totals['by_both']} by the model with "
          f"the tool's fixes; repeated replies {totals['repeats']}, calls paid after a repeat "
          f"{totals['after_repeat']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
