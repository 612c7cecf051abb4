"""The control: an honest improvement the gate must still promote.

Routing by waiting prefill work net of prefix-cache hits: each arrival goes to the replica where
it would add the least prefill work behind what is already queued there, counting the part of
its prompt that replica's prefix cache already holds as free. On multi-turn sessions this keeps
a conversation on the replica holding its history (no recomputation) unless that replica is
already the busiest, and it balances load by work, not by request count. Partitioning is the
fixed-chunk baseline's (FCFS, no request is ever reordered or deferred).
"""

TUNABLES = {
    "chunk_size": {"type": "int", "low": 32, "high": 8192, "log": True, "default": 2048},
    "decode_weight": {"type": "float", "low": 0.0, "high": 4096.0, "default": 64.0},
}


def route(request, cluster, params):
    w = params["decode_weight"]

    def cost(r):
        new_work = request.prompt_tokens - r.prefix_hit_tokens
        return (r.waiting_tokens + new_work + w * r.running, r.outstanding, r.replica)

    return min(cluster.replicas, key=cost).replica
