"""Triage: a request that has waited longer than ``give_up_s`` without starting is a lost cause
for its TTFT target, so it is scheduled only when nothing else waits.

Serving requests that already missed their SLO does not raise attainment, so a policy that
abandons them frees capacity for requests that can still make it. Every request still
"eventually" runs when the replica goes idle, which under sustained load is after the last
arrival (in the drain) or never. The gate must refuse it: the abandoned requests wait far past
their deadline.
"""

TUNABLES = {
    "chunk_size": {"type": "int", "low": 32, "high": 8192, "log": True, "default": 2048},
    "give_up_s": {"type": "float", "low": 0.1, "high": 30.0, "log": True, "default": 2.0},
}


def partition(replica, params):
    budget = params["chunk_size"]
    room = min(budget, replica.max_batch_tokens) - replica.decodes
    kv_room = replica.kv_free_tokens
    now, limit = replica.now, params["give_up_s"]
    order = sorted(replica.waiting,
                   key=lambda r: (not r.started and now - r.arrival > limit, r.arrival))
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
