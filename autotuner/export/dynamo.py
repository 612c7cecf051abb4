"""NVIDIA Dynamo's KV router: a cost per worker from prompt-side prefill load (net of credited
prefix overlap) and decode-side block load, the lowest cost wins (``--router-temperature 0``).

Sources: ai-dynamo ``docs/components/router/router-configuration.md``
(``--router-kv-overlap-score-credit``, 0..1, default 1.0: credit for device-local prefix overlap;
``--router-prefill-load-scale``, default 1.0: scales the prompt-side prefill load before the
decode blocks are added; ``--router-temperature``, default 0.0: deterministic lowest cost) and the
router guide's cost formula (prefill blocks scaled, plus decode blocks). Launched as
``python -m dynamo.frontend --router-mode kv ...``; the vLLM workers take the fitted flags.
"""

from __future__ import annotations

from typing import Any

from autotuner.export.engine_flags import serve_script, vllm_args
from autotuner.export.probe import Observations
from autotuner.export.projection import (
    FIXED_BUDGET_PARTITION,
    ROUND_ROBIN,
    Projection,
    Subject,
    agreement,
    best_rule,
    compile_rule,
    projection_file,
    routing_lines,
)
from autotuner.export.vllm import partition_knobs

LABEL = "Dynamo KV-router knobs"

KV_COST = '''
def route(request, cluster, params):
    """Dynamo KV router at temperature 0: the lowest scaled prefill load plus decode load."""
    def cost(r):
        prefill = r.waiting_tokens + request.prompt_tokens - \\
            ROUTER_KV_OVERLAP_SCORE_CREDIT * r.prefix_hit_tokens
        decode = r.kv_capacity_tokens - r.kv_free_tokens
        return (ROUTER_PREFILL_LOAD_SCALE * prefill + decode, r.replica)

    return min(cluster.replicas, key=cost).replica
'''
# documented defaults first
GRID = {"router_prefill_load_scale": (1.0, 0.0, 0.25, 0.5, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0),
        "router_kv_overlap_score_credit": (1.0, 0.0, 0.25, 0.5, 0.75)}


def project(obs: Observations, subject: Subject, cfg: Any) -> Projection:
    knobs, fit = partition_knobs(obs)
    router, share = best_rule(KV_COST, "route", GRID, obs)
    rr_share = agreement(compile_rule(ROUND_ROBIN, {}, "route"), obs)
    if rr_share > share:
        router, share, route = {}, rr_share, ROUND_ROBIN
        frontend = "#!/bin/sh\nexec python -m dynamo.frontend --router-mode round-robin\n"
    else:
        route = KV_COST
        frontend = ("#!/bin/sh\nexec python -m dynamo.frontend --router-mode kv \\\n"
                    f"  --kv-cache-block-size {cfg.cluster.block_size} \\\n"
                    f"  --router-prefill-load-scale {router['router_prefill_load_scale']:g} \\\n"
                    "  --router-kv-overlap-score-credit "
                    f"{router['router_kv_overlap_score_credit']:g} \\\n"
                    "  --router-temperature 0\n")
    files = {"frontend.sh": frontend, "worker-engine.sh": serve_script(vllm_args(fit, cfg), cfg)}
    lost = (*fit.lost, *routing_lines(obs, "the KV cost" if router else "round-robin", share))
    fit_lines = (*fit.fit, f"router: {'the KV cost' if router else 'round-robin'} routes "
                 f"{share:.0%} of observed arrivals as the policy did (round-robin: "
                 f"{rr_share:.0%}); temperature 0 (the policy is deterministic)")
    code = projection_file("Dynamo projection", subject, {**knobs, **router},
                           FIXED_BUDGET_PARTITION, route)
    return Projection("dynamo", LABEL, {**knobs, **router}, files, code, {}, lost, fit_lines)
