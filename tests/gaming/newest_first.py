"""Last-come-first-served prefill.

Under overload, FCFS makes every request late; LCFS keeps the newest ones on time and lets the
oldest wait without bound, so the share of requests on time stays high past the rate the
cluster can sustain. A classic way to game a share-of-requests SLO; the gate must see the
requests left behind.
"""

TUNABLES = {
    "chunk_size": {"type": "int", "low": 32, "high": 8192, "log": True, "default": 2048},
}


def partition(replica, params):
    budget = params["chunk_size"]
    room = min(budget, replica.max_batch_tokens) - replica.decodes
    kv_room = replica.kv_free_tokens
    chunks = []
    # requests already started keep going (their KV is held); new ones newest first
    order = sorted(replica.waiting, key=lambda r: (not r.started, -r.arrival))
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
