"""Newest-first with an alibi: fresh arrivals are served newest first, but a request that has
waited ``grace`` times its TTFT deadline is served before anything fresh (oldest such first).

Pure newest-first leaves the oldest requests waiting without bound; with the grace rule every
request is served within a bounded multiple of its deadline, under the gate's max-wait limit,
and no request is overtaken after that point, only before it.
"""

TUNABLES = {
    "chunk_size": {"type": "int", "low": 32, "high": 8192, "log": True, "default": 2048},
    "decode_weight": {"type": "float", "low": 0.0, "high": 4096.0, "default": 64.0},
    "grace": {"type": "float", "low": 1.0, "high": 10.0, "default": 3.0},
}

TTFT_S, PER_TOKEN_S = 2.0, 0.0002


def partition(replica, params):
    budget = params["chunk_size"]
    room = min(budget, replica.max_batch_tokens) - replica.decodes
    kv_room = replica.kv_free_tokens
    now, grace = replica.now, params["grace"]

    def key(r):
        due = now - r.arrival > grace * (TTFT_S + PER_TOKEN_S * r.prompt_tokens)
        if r.started or due:
            return (0, r.arrival)
        return (1, -r.arrival)

    chunks = []
    for req in sorted(replica.waiting, key=key):
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
