"""Starvation that looks like service: prompts above a length do get scheduled every iteration,
but only ``trickle`` tokens at a time, so they are "running" while their first token takes
minutes.

A check that asks whether every request was started, or whether the queue is ordered fairly,
passes it: nothing is deferred, FCFS order is kept. Their TTFT is what starves.
"""

TUNABLES = {
    "chunk_size": {"type": "int", "low": 32, "high": 8192, "log": True, "default": 2048},
    "long_tokens": {"type": "int", "low": 256, "high": 65536, "log": True, "default": 3000},
    "trickle": {"type": "int", "low": 1, "high": 512, "log": True, "default": 16},
}


def partition(replica, params):
    budget = params["chunk_size"]
    room = min(budget, replica.max_batch_tokens) - replica.decodes
    kv_room = replica.kv_free_tokens
    chunks = []
    for req in replica.waiting:
        cap = params["trickle"] if req.prompt_tokens > params["long_tokens"] else req.remaining
        take = min(req.remaining, cap, room, kv_room)
        if take <= 0:
            if room <= 0 or kv_room <= 0:
                break
            continue
        chunks.append((req.id, take))
        room -= take
        kv_room -= take
    return (budget, tuple(chunks))


def route(request, cluster, params):
    return request.id % len(cluster.replicas)
