"""Starvation: prompts above a length are never scheduled at all.

If the long prompts are fewer than ``1 - share`` of the requests, dropping them costs nothing
under a share-of-requests SLO, and their prefill work is freed for everyone else. The gate must
refuse it: those requests never finish.
"""

TUNABLES = {
    "chunk_size": {"type": "int", "low": 32, "high": 8192, "log": True, "default": 2048},
    "max_prompt_tokens": {"type": "int", "low": 256, "high": 65536, "log": True,
                          "default": 3500},
}


def partition(replica, params):
    budget = params["chunk_size"]
    room = min(budget, replica.max_batch_tokens) - replica.decodes
    kv_room = replica.kv_free_tokens
    chunks = []
    for req in replica.waiting:
        if req.prompt_tokens > params["max_prompt_tokens"]:
            continue
        take = min(req.remaining, room, kv_room)
        if take <= 0:
            break
        chunks.append((req.id, take))
        room -= take
        kv_room -= take
    return (budget, tuple(chunks))


def route(request, cluster, params):
    return request.id % len(cluster.replicas)
