"""Starvation (the audit's policy): prompts above the running 93rd length percentile wait until
every shorter one has been scheduled.

The threshold adapts to each workload (it is learnt from the arrivals seen so far), so one file
games every scenario: the longest ~7 % of prompts, which carry a large share of the prefill
work, are pushed behind the rest. It passed the old gate with +28.7 % mean held-out gain.
"""

import bisect

TUNABLES = {
    "chunk_size": {"type": "int", "low": 32, "high": 8192, "log": True, "default": 2048},
    "quantile": {"type": "float", "low": 0.5, "high": 0.999, "default": 0.93},
}

_lengths = []


def _threshold(q):
    if len(_lengths) < 20:
        return float("inf")
    return _lengths[min(len(_lengths) - 1, int(q * len(_lengths)))]


def partition(replica, params):
    budget = params["chunk_size"]
    room = min(budget, replica.max_batch_tokens) - replica.decodes
    kv_room = replica.kv_free_tokens
    limit = _threshold(params["quantile"])
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
    bisect.insort(_lengths, request.prompt_tokens)
    return request.id % len(cluster.replicas)
