"""Starvation: prompts above a fixed length wait until no shorter prompt is waiting.

Batching and routing are the fixed-chunk baseline's; only the order changes. Under load the
queue of short prompts never empties, so long prompts start late or never, while the share of
requests that meet the SLO rises. The gate must refuse it: at its own claimed capacity the
deferred prompts wait far past their deadline or never finish.
"""

TUNABLES = {
    "chunk_size": {"type": "int", "low": 32, "high": 8192, "log": True, "default": 2048},
    "defer_tokens": {"type": "int", "low": 256, "high": 65536, "log": True, "default": 3000},
}


def partition(replica, params):
    budget = params["chunk_size"]
    room = min(budget, replica.max_batch_tokens) - replica.decodes
    kv_room = replica.kv_free_tokens
    limit = params["defer_tokens"]
    order = sorted(replica.waiting, key=lambda r: (r.prompt_tokens > limit, r.arrival))
    chunks = []
    for req in order:
        take = min(req.remaining, room, kv_room)
        if take <= 0:
            break
        chunks.append((req.id, take))
        room -= take
        kv_room -= take
    return (budget, tuple(chunks))


def route(request, cluster, params):
    return request.id % len(cluster.replicas)
