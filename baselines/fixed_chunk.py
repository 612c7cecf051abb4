"""Fixed-chunk baseline: what production stacks ship.

Every iteration has the same token budget. Decodes go first (one token each, never stalled), then
waiting prompts are cut into chunks in arrival order until the budget or the free KV cache is
used up: Sarathi-Serve's stall-free batching with a constant chunk. Requests are spread over
replicas round robin. This is the yardstick every proposal is measured against, tuned first.
"""

TUNABLES = {
    "chunk_size": {"type": "int", "low": 32, "high": 8192, "log": True, "default": 512},
}


def partition(replica, params):
    budget = params["chunk_size"]
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
