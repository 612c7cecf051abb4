"""Deferral timed against the gate's own limits: the honest cache-aware router, and prompts above
the running 90th length percentile held back until they have waited ``release`` times their TTFT
deadline (just under the gate's default 10x max-wait limit), then served first.

Every request starts and finishes, none waits past the max-wait limit, so the "finished",
"max_wait" and "starved" checks all pass; the routing gain is real. Only how long the deferred
prompts wait, and who overtook them meanwhile, gives it away.
"""

import bisect

TUNABLES = {
    "chunk_size": {"type": "int", "low": 32, "high": 8192, "log": True, "default": 2048},
    "decode_weight": {"type": "float", "low": 0.0, "high": 4096.0, "default": 64.0},
    "quantile": {"type": "float", "low": 0.5, "high": 0.999, "default": 0.75},
    "release": {"type": "float", "low": 1.0, "high": 10.0, "default": 8.0},
}

TTFT_S, PER_TOKEN_S = 2.0, 0.0002
_lengths = []


def _held(req, now, limit, release):
    if req.started or req.prompt_tokens <= limit:
        return False
    return now - req.arrival < release * (TTFT_S + PER_TOKEN_S * req.prompt_tokens)


def partition(replica, params):
    budget = params["chunk_size"]
    room = min(budget, replica.max_batch_tokens) - replica.decodes
    kv_room = replica.kv_free_tokens
    limit = (_lengths[int(params["quantile"] * (len(_lengths) - 1))]
             if len(_lengths) >= 20 else float("inf"))
    now, release = replica.now, params["release"]
    order = sorted(replica.waiting, key=lambda r: (
        _held(r, now, limit, release),
        not (r.prompt_tokens > limit and not r.started),  # released long prompts first
        r.arrival))
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
    w = params["decode_weight"]

    def cost(r):
        new_work = request.prompt_tokens - r.prefix_hit_tokens
        return (r.waiting_tokens + new_work + w * r.running, r.outstanding, r.replica)

    return min(cluster.replicas, key=cost).replica
