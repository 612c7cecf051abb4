"""Least-outstanding-requests routing (the common load-balancer default), fixed-chunk batching.

Each arrival goes to the replica with the fewest requests in flight (running plus waiting), ties
broken by fewer waiting prefill tokens, then by index. Partitioning is left to the baseline.
"""

TUNABLES = {}


def route(request, cluster, params):
    best = min(cluster.replicas, key=lambda r: (r.outstanding, r.waiting_tokens, r.replica))
    return best.replica
