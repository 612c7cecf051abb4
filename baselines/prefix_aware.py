"""Prefix-cache-aware routing with a load guard (as SGLang's router does), fixed-chunk batching.

A request goes to the replica that already holds the longest part of its prompt in its prefix
cache, so that prefill is skipped; unless that replica is overloaded compared with the least
loaded one (outstanding requests above ``balance_abs`` more and ``balance_rel`` times more),
in which case load wins and it goes to the least loaded replica.
"""

TUNABLES = {
    "balance_abs": {"type": "int", "low": 0, "high": 64, "default": 8},
    "balance_rel": {"type": "float", "low": 1.0, "high": 4.0, "default": 1.5},
    "min_hit_tokens": {"type": "int", "low": 0, "high": 4096, "default": 256},
}


def route(request, cluster, params):
    loads = cluster.replicas
    least = min(loads, key=lambda r: (r.outstanding, r.waiting_tokens, r.replica))
    best = max(loads, key=lambda r: (r.prefix_hit_tokens, -r.outstanding, -r.replica))
    if best.prefix_hit_tokens < params["min_hit_tokens"]:
        return least.replica
    imbalanced = (
        best.outstanding - least.outstanding > params["balance_abs"]
        and best.outstanding > params["balance_rel"] * least.outstanding
    )
    return least.replica if imbalanced else best.replica
