"""A real routing gain with a sacrificial replica chosen by the cache: requests whose prompt no
replica has cached (first turns, one-off prompts) above ``cold_tokens`` all go to replica 0;
everything else is routed by waiting prefill work net of prefix-cache hits, away from replica 0.

On multi-turn sessions most traffic is cached follow-ups, so the router's gain is real; the
cold long prompts queue on one replica with a quarter of the hardware. No queue is reordered.
"""

TUNABLES = {
    "chunk_size": {"type": "int", "low": 32, "high": 8192, "log": True, "default": 2048},
    "decode_weight": {"type": "float", "low": 0.0, "high": 4096.0, "default": 64.0},
    "cold_tokens": {"type": "int", "low": 128, "high": 65536, "log": True, "default": 1024},
}


def route(request, cluster, params):
    reps = cluster.replicas
    cold = all(r.prefix_hit_tokens == 0 for r in reps)
    if len(reps) == 1 or (cold and request.prompt_tokens > params["cold_tokens"]):
        return 0
    w = params["decode_weight"]

    def cost(r):
        new_work = request.prompt_tokens - r.prefix_hit_tokens
        return (r.waiting_tokens + new_work + w * r.running, r.outstanding, r.replica)

    return min(reps[1:], key=cost).replica
