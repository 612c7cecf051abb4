"""SGLang: ``--chunked-prefill-size`` and ``--schedule-policy`` for the server, and the gateway's
``cache_aware`` policy with its three thresholds for routing.

Sources: SGLang ``docs/advanced_features/server_arguments.md`` (``--chunked-prefill-size``,
``--schedule-policy`` fcfs/lpm/..., ``--enable-mixed-chunk`` to run prefill chunks beside
decodes) and sgl-model-gateway ``src/policies/cache_aware.rs`` (``cache_threshold``,
``balance_abs_threshold``, ``balance_rel_threshold``: when the largest load exceeds the smallest
by more than the absolute threshold and by more than the relative factor, the least loaded
worker; otherwise the worker with the longest prefix match when its match rate exceeds
``cache_threshold``; otherwise the worker with the smallest cache tree). Launched as
``python -m sglang_router.launch_router --policy cache_aware --cache-threshold ...``.
"""

from __future__ import annotations

from typing import Any

from autotuner.export.probe import Observations
from autotuner.export.projection import (
    PREFILL_CHUNK_PARTITION,
    ROUND_ROBIN,
    Projection,
    Subject,
    agreement,
    best_rule,
    compile_rule,
    fit_budget,
    projection_file,
    routing_lines,
)

LABEL = "SGLang knobs"

CACHE_AWARE = '''
def route(request, cluster, params):
    """SGLang gateway cache_aware: load guard, then the longest prefix match, then the least
    loaded (the gateway takes the smallest cache tree there; the simulator has no tree)."""
    loads = cluster.replicas
    least = min(loads, key=lambda r: (r.outstanding, r.replica))
    most = max(r.outstanding for r in loads)
    if most - least.outstanding > BALANCE_ABS_THRESHOLD and \\
            most > BALANCE_REL_THRESHOLD * least.outstanding:
        return least.replica
    best = max(loads, key=lambda r: (r.prefix_hit_tokens, -r.outstanding, -r.replica))
    if best.prefix_hit_tokens > CACHE_THRESHOLD * max(1, request.prompt_tokens):
        return best.replica
    return least.replica
'''
# documented defaults first: 0.5, 32, 1.0001 (sgl-model-gateway CacheAwareConfig)
GRID = {"cache_threshold": (0.5, 0.1, 0.3, 0.7, 0.9),
        "balance_abs_threshold": (32, 1, 2, 4, 8, 16, 64),
        "balance_rel_threshold": (1.0001, 1.25, 1.5, 2.0, 3.0)}


def project(obs: Observations, subject: Subject, cfg: Any) -> Projection:
    fit = fit_budget(obs, "chunked_prefill_size")
    chunk = fit.prefill_room
    router, share = best_rule(CACHE_AWARE, "route", GRID, obs)
    rr_share = agreement(compile_rule(ROUND_ROBIN, {}, "route"), obs)
    policy, route = ("cache_aware", CACHE_AWARE) if share >= rr_share else \
        ("round_robin", ROUND_ROBIN)
    server = ("#!/bin/sh\n# one server per replica\n"
              f'MODEL="${{MODEL:?set MODEL to the checkpoint of {cfg.cluster.model}}}"\n'
              'exec python -m sglang.launch_server --model-path "$MODEL" \\\n'
              f"  --chunked-prefill-size {chunk} \\\n  --enable-mixed-chunk \\\n"
              f"  --schedule-policy fcfs \\\n  --tp-size {cfg.cluster.tp} \\\n"
              f"  --mem-fraction-static {cfg.cluster.gpu_memory_utilization:g}\n")
    gateway = ("#!/bin/sh\n# WORKER_URLS: the servers above, space separated\n"
               "exec python -m sglang_router.launch_router --worker-urls $WORKER_URLS \\\n"
               + (f"  --policy cache_aware \\\n"
                  f"  --cache-threshold {router['cache_threshold']:g} \\\n"
                  f"  --balance-abs-threshold {router['balance_abs_threshold']} \\\n"
                  f"  --balance-rel-threshold {router['balance_rel_threshold']:g}\n"
                  if policy == "cache_aware" else "  --policy round_robin\n"))
    lost = list(fit.lost)
    if fit.cap:
        lost.append(f"partition(): a per-request prefill cap of {fit.cap} tokens; SGLang has no "
                    "per-request cap beside --chunked-prefill-size")
    lost += routing_lines(obs, policy, max(share, rr_share))
    knobs = {"chunked_prefill_size": chunk, **(router if policy == "cache_aware" else {})}
    fit_lines = (f"chunked_prefill_size={chunk}: the policy's median prefill room per iteration "
                 "(budget net of decodes; SGLang with --enable-mixed-chunk runs decodes beside "
                 "it)", *fit.fit[1:],
                 f"gateway --policy {policy}: round_robin routes {rr_share:.0%} of observed "
                 f"arrivals as the policy did, cache_aware at its best thresholds {share:.0%}",
                 "--schedule-policy fcfs: the simulator's "
                 "waiting queue is in arrival order (lpm needs the radix tree it does not model)")
    code = projection_file("SGLang projection", subject, knobs, PREFILL_CHUNK_PARTITION, route)
    return Projection("sglang", LABEL, knobs, {"server.sh": server, "gateway.sh": gateway},
                      code, {}, tuple(lost), fit_lines)
