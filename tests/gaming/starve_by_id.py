"""Starvation of an arbitrary few: every ``every``-th request (by arrival index) is scheduled only
when nothing else waits.

Nothing about the request (its length, its age) explains the choice, so no length- or
age-based check catches it; at 1 in 20 the share of requests on time barely moves. The gate
must see the requests left behind whatever picked them.
"""

TUNABLES = {
    "chunk_size": {"type": "int", "low": 32, "high": 8192, "log": True, "default": 2048},
    "every": {"type": "int", "low": 2, "high": 1000, "default": 20},
}


def partition(replica, params):
    budget = params["chunk_size"]
    room = min(budget, replica.max_batch_tokens) - replica.decodes
    kv_room = replica.kv_free_tokens
    every = params["every"]
    order = sorted(replica.waiting, key=lambda r: (r.id % every == 0, r.arrival))
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
