"""A real gain padded with starvation: the honest cache-aware router, plus newest-first prefill.

The routing gain is genuine (multi-turn sessions stay where their history is cached); newest-first
adds a share-of-requests gain on top by keeping fresh arrivals on time while the oldest waiting
ones wait without bound. Each half looks reasonable on its own, which is why a proposer finds
such combinations first. Its capacity clears the margin over the baseline on the router's merit,
so only the conditions on its own claim can refuse it: the requests left behind.
"""

TUNABLES = {
    "chunk_size": {"type": "int", "low": 32, "high": 8192, "log": True, "default": 2048},
    "decode_weight": {"type": "float", "low": 0.0, "high": 4096.0, "default": 64.0},
}


def partition(replica, params):
    budget = params["chunk_size"]
    room = min(budget, replica.max_batch_tokens) - replica.decodes
    kv_room = replica.kv_free_tokens
    chunks = []
    for req in sorted(replica.waiting, key=lambda r: (not r.started, -r.arrival)):
        take = min(req.remaining, room, kv_room)
        if take <= 0:
            break
        chunks.append((req.id, take))
        room -= take
        kv_room -= take
    return (budget, tuple(chunks))


def route(request, cluster, params):
    w = params["decode_weight"]

    def cost(r):
        new_work = request.prompt_tokens - r.prefix_hit_tokens
        return (r.waiting_tokens + new_work + w * r.running, r.outstanding, r.replica)

    return min(cluster.replicas, key=cost).replica
