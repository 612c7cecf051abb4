"""Periodic prefill blackouts: for ``blackout_s`` out of every ``period_s`` seconds no new
request is admitted to prefill (started ones continue), so decodes run in small fast iterations;
in between, FCFS at the full chunk. Routing is the honest cache-aware router.

Decode-heavy phases keep every running request's token gaps short and its TPOT low; the
requests that arrive during a blackout simply wait for it to end, every period, at any load.
"""

TUNABLES = {
    "chunk_size": {"type": "int", "low": 32, "high": 8192, "log": True, "default": 2048},
    "decode_weight": {"type": "float", "low": 0.0, "high": 4096.0, "default": 64.0},
    "period_s": {"type": "float", "low": 0.5, "high": 60.0, "default": 6.0},
    "blackout_s": {"type": "float", "low": 0.0, "high": 30.0, "default": 1.5},
}


def partition(replica, params):
    budget = params["chunk_size"]
    room = min(budget, replica.max_batch_tokens) - replica.decodes
    kv_room = replica.kv_free_tokens
    dark = replica.now % params["period_s"] < params["blackout_s"]
    chunks = []
    for req in replica.waiting:
        if dark and not req.started:
            continue
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
