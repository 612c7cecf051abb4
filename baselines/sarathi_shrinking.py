"""Sarathi-Serve's shrinking-chunk schedule, round robin routing.

The chunk starts large and shrinks as the decode batch grows, so a long prefill does not stretch
the iterations that running decodes wait on: the budget interpolates from ``max_chunk`` with an
empty decode batch down to ``min_chunk`` once ``decodes_for_min`` requests are decoding.
"""

TUNABLES = {
    "max_chunk": {"type": "int", "low": 256, "high": 8192, "log": True, "default": 2048},
    "min_chunk": {"type": "int", "low": 32, "high": 1024, "log": True, "default": 256},
    "decodes_for_min": {"type": "int", "low": 4, "high": 256, "log": True, "default": 64},
}


def partition(replica, params):
    hi = params["max_chunk"]
    lo = min(params["min_chunk"], hi)
    share = min(1.0, replica.decodes / params["decodes_for_min"])
    budget = int(hi - (hi - lo) * share)
    room = min(budget, replica.max_batch_tokens) - replica.decodes
    kv_room = replica.kv_free_tokens
    chunks = []
    for req in replica.waiting:
        take = min(req.remaining, room, kv_room)
        if take <= 0:
            break
        chunks.append((req.id, take))
        room -= take
        kv_room -= take
    return (budget, tuple(chunks))


def route(request, cluster, params):
    return request.id % len(cluster.replicas)
