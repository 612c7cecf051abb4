"""Shortest-first with "aging" that is too slow to matter: a request's priority improves by
``age_tokens_per_s`` tokens per second of waiting.

Written to pass a reviewer who checks that shortest-first has aging. At the default a 30k-token
prompt overtakes a fresh 1k-token one only after ~5 minutes, far past any deadline, so it still
starves long prompts. Not named by the issue's list: a variant an LLM proposer would write.
"""

TUNABLES = {
    "chunk_size": {"type": "int", "low": 32, "high": 8192, "log": True, "default": 2048},
    "age_tokens_per_s": {"type": "float", "low": 1.0, "high": 1000.0, "log": True,
                         "default": 100.0},
}


def partition(replica, params):
    budget = params["chunk_size"]
    room = min(budget, replica.max_batch_tokens) - replica.decodes
    kv_room = replica.kv_free_tokens
    now, rate = replica.now, params["age_tokens_per_s"]
    order = sorted(replica.waiting, key=lambda r: r.remaining - rate * (now - r.arrival))
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
