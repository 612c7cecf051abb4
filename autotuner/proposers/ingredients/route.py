"""The catalogue's route pieces (which replica an arriving request goes to) and the route
wrappers, which compose with any existing router renamed ``_base_route``."""

from __future__ import annotations

from autotuner.proposers.ingredients.piece import Ingredient, tunable_spec

# ------------------------------------------------------------------------------------------
# Routes: which replica an arriving request goes to.

ROUTES: tuple[Ingredient, ...] = (
    Ingredient(
        "least_work_route",
        "route",
        "least prefill work: waiting prefill tokens plus this prompt minus what the replica's "
        "prefix cache already holds, plus running decodes at a weight",
        """def route(request, cluster, params):
    best = 0
    best_cost = None
    for load in cluster.replicas:
        cost = (
            load.waiting_tokens
            + request.prompt_tokens
            - params["work_hit_weight"] * load.prefix_hit_tokens
            + params["work_decode_weight"] * load.running
        )
        if best_cost is None or cost < best_cost:
            best, best_cost = load.replica, cost
    return best
""",
        {
            "work_hit_weight": tunable_spec("float", 0.0, 3.0, 1.0),
            "work_decode_weight": tunable_spec("float", 0.0, 2000.0, 20.0),
        },
        rank=1,
    ),
    Ingredient(
        "prefix_guard_route",
        "route",
        "prefix affinity with a load guard: the replica holding the most of the prompt, unless "
        "its waiting prefill exceeds the least loaded one's by more than a margin",
        """def route(request, cluster, params):
    loads = cluster.replicas
    least = min(loads, key=lambda r: (r.waiting_tokens, r.outstanding, r.replica))
    best = max(loads, key=lambda r: (r.prefix_hit_tokens, -r.waiting_tokens, -r.replica))
    if best.prefix_hit_tokens < params["affinity_min_hit"]:
        return least.replica
    saved = best.prefix_hit_tokens - least.prefix_hit_tokens
    extra = best.waiting_tokens - least.waiting_tokens
    if extra > params["affinity_slack_tokens"] + params["affinity_hit_credit"] * saved:
        return least.replica
    return best.replica
""",
        {
            "affinity_min_hit": tunable_spec("int", 0, 8192, 512),
            "affinity_slack_tokens": tunable_spec("int", 0, 200000, 4096),
            "affinity_hit_credit": tunable_spec("float", 0.0, 4.0, 1.0),
        },
        rank=2,
    ),
    Ingredient(
        "kv_guard_work_route",
        "route",
        "least prefill work among replicas with KV room for the prompt (all replicas if none "
        "has room)",
        """def route(request, cluster, params):
    need = request.prompt_tokens * params["kvr_headroom"]
    fits = [r for r in cluster.replicas if r.kv_free_tokens + r.prefix_hit_tokens >= need]
    pool = fits or list(cluster.replicas)

    def _kvr_cost(load):
        return (
            load.waiting_tokens
            - params["kvr_hit_weight"] * load.prefix_hit_tokens
            + params["kvr_decode_weight"] * load.running
        )

    return min(pool, key=lambda r: (_kvr_cost(r), r.replica)).replica
""",
        {
            "kvr_headroom": tunable_spec("float", 0.5, 20.0, 2.0, log=True),
            "kvr_hit_weight": tunable_spec("float", 0.0, 3.0, 1.0),
            "kvr_decode_weight": tunable_spec("float", 0.0, 2000.0, 20.0),
        },
        rank=3,
    ),
    Ingredient(
        "least_outstanding_route",
        "route",
        "fewest requests in flight, ties by fewer waiting prefill tokens",
        """def route(request, cluster, params):
    best = min(cluster.replicas, key=lambda r: (r.outstanding, r.waiting_tokens, r.replica))
    return best.replica
""",
        rank=8,
    ),
    Ingredient(
        "p2c_work_route",
        "route",
        "power of two choices on prefill work (seeded draw)",
        """_p2c_rng = []


def route(request, cluster, params):
    if not _p2c_rng:
        _p2c_rng.append(random.Random(params["p2c_seed"]))
    n = len(cluster.replicas)
    if n == 1:
        return 0
    a, b = _p2c_rng[0].sample(range(n), 2)
    ra, rb = cluster.replicas[a], cluster.replicas[b]
    cost_a = ra.waiting_tokens - params["p2c_hit_weight"] * ra.prefix_hit_tokens
    cost_b = rb.waiting_tokens - params["p2c_hit_weight"] * rb.prefix_hit_tokens
    return a if (cost_a, ra.outstanding) <= (cost_b, rb.outstanding) else b
""",
        {
            "p2c_seed": tunable_spec("int", 0, 1000, 0),
            "p2c_hit_weight": tunable_spec("float", 0.0, 3.0, 1.0),
        },
        imports=("import random",),
        rank=9,
    ),
)

ROUTE_WRAPPERS: tuple[Ingredient, ...] = (
    Ingredient(
        "load_guard_wrapper",
        "route",
        "load guard: the base router's choice, unless its waiting prefill exceeds the least "
        "loaded replica's by more than a margin",
        """def route(request, cluster, params):
    choice = _base_route(request, cluster, params)
    loads = cluster.replicas
    least = min(loads, key=lambda r: (r.waiting_tokens, r.outstanding, r.replica))
    if loads[choice].waiting_tokens - least.waiting_tokens > params["guard_tokens"]:
        return least.replica
    return choice
""",
        {"guard_tokens": tunable_spec("int", 0, 200000, 8192)},
    ),
    Ingredient(
        "prefix_override_wrapper",
        "route",
        "prefix affinity first: a replica holding a long prefix of the prompt wins unless it is "
        "much busier; otherwise the base router decides",
        """def route(request, cluster, params):
    loads = cluster.replicas
    best = max(loads, key=lambda r: (r.prefix_hit_tokens, -r.waiting_tokens, -r.replica))
    least = min(r.waiting_tokens for r in loads)
    if (
        best.prefix_hit_tokens >= params["override_min_hit"]
        and best.waiting_tokens - least <= params["override_slack_tokens"]
    ):
        return best.replica
    return _base_route(request, cluster, params)
""",
        {
            "override_min_hit": tunable_spec("int", 0, 8192, 1024),
            "override_slack_tokens": tunable_spec("int", 0, 200000, 16384),
        },
    ),
)
