"""Power-of-two-choices routing, fixed-chunk batching.

Two replicas drawn at random; the request goes to the one with fewer outstanding requests.
Near least-outstanding quality with only two probes, which is why large fleets use it. The draw
is seeded, so a simulation stays deterministic.
"""

import random

TUNABLES = {
    "seed": {"type": "int", "low": 0, "high": 1000, "default": 0},
}

_rng = None


def route(request, cluster, params):
    global _rng
    if _rng is None:
        _rng = random.Random(params["seed"])
    n = len(cluster.replicas)
    if n == 1:
        return 0
    a, b = _rng.sample(range(n), 2)
    ra, rb = cluster.replicas[a], cluster.replicas[b]
    return a if (ra.outstanding, ra.waiting_tokens) <= (rb.outstanding, rb.waiting_tokens) else b
