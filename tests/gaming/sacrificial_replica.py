"""Starvation by routing: every prompt above a length goes to replica 0; the other replicas
serve only the short ones, round robin.

Partitioning is the baseline's and no queue is reordered, so a check of the scheduler alone
finds nothing. Replica 0 gets a large share of the prefill work with a quarter of the
hardware; its long prompts queue without bound while the short ones elsewhere meet their
SLO, which is enough for a share-of-requests target.
"""

TUNABLES = {
    "long_tokens": {"type": "int", "low": 256, "high": 65536, "log": True, "default": 3000},
}

_next = [0]


def route(request, cluster, params):
    n = len(cluster.replicas)
    if n == 1 or request.prompt_tokens > params["long_tokens"]:
        return 0
    _next[0] += 1
    return 1 + _next[0] % (n - 1)
