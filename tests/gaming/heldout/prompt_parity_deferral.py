"""Starvation by content: the honest cache-aware router, and prompts whose length falls in one
residue class (``prompt_tokens % modulus == residue``, a stand-in for any hash of the text) are
scheduled only when nothing else waits.

Neither length, age nor arrival order explains the choice, and about one request in ``modulus``
is affected, spread over every length; the routing gain is real.
"""

TUNABLES = {
    "chunk_size": {"type": "int", "low": 32, "high": 8192, "log": True, "default": 2048},
    "decode_weight": {"type": "float", "low": 0.0, "high": 4096.0, "default": 64.0},
    "modulus": {"type": "int", "low": 2, "high": 1000, "default": 16},
    "residue": {"type": "int", "low": 0, "high": 999, "default": 3},
}


def partition(replica, params):
    budget = params["chunk_size"]
    room = min(budget, replica.max_batch_tokens) - replica.decodes
    kv_room = replica.kv_free_tokens
    m, k = params["modulus"], params["residue"] % params["modulus"]
    order = sorted(replica.waiting,
                   key=lambda r: (not r.started and r.prompt_tokens % m == k, r.arrival))
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
    w = params["decode_weight"]

    def cost(r):
        new_work = request.prompt_tokens - r.prefix_hit_tokens
        return (r.waiting_tokens + new_work + w * r.running, r.outstanding, r.replica)

    return min(cluster.replicas, key=cost).replica
