"""The catalogue's partition pieces: budgets (how many tokens an iteration runs) and orders
(which waiting requests get them first), and the stall-free fill that joins one of each.

Helper and state names carry the piece's prefix and tunable names are unique across the
catalogue, so any budget, order and route can live in one file.
"""

from __future__ import annotations

from autotuner.proposers.ingredients.piece import (
    DEFAULT_TPOT_S,
    DEFAULT_TTFT_S,
    Ingredient,
    tunable_spec,
)

PARTITION_TEMPLATE = """def partition(replica, params):
    # Decodes always run; the budget must cover them, and chunks get what is left.
    budget = max(int(_budget(replica, params)), replica.decodes)
    room = min(budget, replica.max_batch_tokens) - replica.decodes
    kv_room = replica.kv_free_tokens
    chunks = []
    for req in _order(replica, params):
        take = min(req.remaining, room, kv_room)
        if take <= 0:
            break
        chunks.append((req.id, take))
        room -= take
        kv_room -= take
    return (budget, tuple(chunks))
"""

# ------------------------------------------------------------------------------------------
# Budgets: how many tokens an iteration runs.

BUDGETS: tuple[Ingredient, ...] = (
    Ingredient(
        "fixed_budget",
        "budget",
        "a constant token budget per iteration (the tuned chunk)",
        """def _budget(replica, params):
    return params["chunk_size"]
""",
        {"chunk_size": tunable_spec("int", 64, 16384, 2048, log=True)},
        rank=10,
    ),
    Ingredient(
        "decode_shrink_budget",
        "budget",
        "the budget shrinks as the decode batch grows (Sarathi-Serve's shrinking chunk)",
        """def _budget(replica, params):
    hi = params["shrink_max_chunk"]
    lo = min(params["shrink_min_chunk"], hi)
    share = min(1.0, replica.decodes / params["shrink_decodes"])
    return int(hi - (hi - lo) * share)
""",
        {
            "shrink_max_chunk": tunable_spec("int", 256, 16384, 4096, log=True),
            "shrink_min_chunk": tunable_spec("int", 64, 8192, 1024, log=True),
            "shrink_decodes": tunable_spec("int", 8, 1024, 128, log=True),
        },
        rank=20,
    ),
    Ingredient(
        "tpot_budget",
        "budget",
        "AIMD on the chunk: shrink it when an iteration with decodes runs past a share of the "
        "TPOT target, grow it otherwise",
        """_tpot_chunk = {}


def _budget(replica, params):
    chunk = _tpot_chunk.get(replica.replica, params["tpot_max_chunk"])
    limit = params["tpot_share"] * params["tpot_target_s"]
    if replica.decodes and replica.last_iteration_s > limit:
        chunk = int(chunk * params["tpot_backoff"])
    else:
        chunk = chunk + params["tpot_step"]
    chunk = max(params["tpot_min_chunk"], min(params["tpot_max_chunk"], chunk))
    _tpot_chunk[replica.replica] = chunk
    return chunk
""",
        {
            "tpot_target_s": tunable_spec("float", 0.01, 1.0, DEFAULT_TPOT_S, log=True),
            "tpot_share": tunable_spec("float", 0.2, 2.0, 0.8),
            "tpot_backoff": tunable_spec("float", 0.3, 0.95, 0.7),
            "tpot_step": tunable_spec("int", 16, 2048, 256, log=True),
            "tpot_min_chunk": tunable_spec("int", 64, 4096, 512, log=True),
            "tpot_max_chunk": tunable_spec("int", 512, 16384, 4096, log=True),
        },
        rank=30,
    ),
    Ingredient(
        "pressure_budget",
        "budget",
        "queue pressure: a small chunk while little prefill waits, growing with the waiting "
        "prefill tokens up to a cap",
        """def _budget(replica, params):
    want = params["pressure_base"] + params["pressure_gain"] * replica.waiting_tokens
    return int(min(params["pressure_max"], want))
""",
        {
            "pressure_base": tunable_spec("int", 64, 8192, 1024, log=True),
            "pressure_gain": tunable_spec("float", 0.001, 2.0, 0.1, log=True),
            "pressure_max": tunable_spec("int", 256, 16384, 4096, log=True),
        },
        rank=40,
    ),
    Ingredient(
        "kv_guard_budget",
        "budget",
        "a fixed chunk, cut back when the free KV cache runs low so that running decodes are "
        "not preempted",
        """def _budget(replica, params):
    free = replica.kv_free_tokens / max(1, replica.kv_capacity_tokens)
    scale = min(1.0, free / params["kvb_low_share"])
    return int(max(params["kvb_min_chunk"], params["kvb_chunk"] * scale))
""",
        {
            "kvb_chunk": tunable_spec("int", 64, 16384, 2048, log=True),
            "kvb_low_share": tunable_spec("float", 0.01, 0.5, 0.1, log=True),
            "kvb_min_chunk": tunable_spec("int", 16, 2048, 256, log=True),
        },
        rank=35,
    ),
)

# ------------------------------------------------------------------------------------------
# Orders: which waiting requests get the budget first. ``replica.waiting`` lists the oldest
# MAX_WAITING_VIEW waiting requests, oldest first.

ORDERS: tuple[Ingredient, ...] = (
    Ingredient(
        "slack_srpf_order",
        "order",
        "SLO slack: requests that can still meet the TTFT target go first, shortest remaining "
        "prefill first; those that cannot (waited plus estimated prefill time past the target) "
        "go last",
        """def _order(replica, params):
    now = replica.now
    target = params["slack_ttft_s"]
    per_token = params["slack_s_per_token"]

    def _slack_key(req):
        late = now - req.arrival + req.remaining * per_token > target
        return (late, req.remaining, req.arrival)

    return sorted(replica.waiting, key=_slack_key)
""",
        {
            "slack_ttft_s": tunable_spec("float", 0.1, 30.0, DEFAULT_TTFT_S, log=True),
            "slack_s_per_token": tunable_spec("float", 1e-6, 1e-3, 3e-5, log=True),
        },
        rank=1,
    ),
    Ingredient(
        "srpf_order",
        "order",
        "shortest remaining prefill first (SRPT on prefill work)",
        """def _order(replica, params):
    return sorted(replica.waiting, key=lambda req: (req.remaining, req.arrival))
""",
        rank=2,
    ),
    Ingredient(
        "srpf_aging_order",
        "order",
        "shortest remaining prefill first within a slack bound: a request that has waited "
        "longer than srpf_max_wait_s goes ahead in arrival order, so no prompt starves",
        """def _order(replica, params):
    now = replica.now
    bound = params["srpf_max_wait_s"]

    def _aging_key(req):
        if now - req.arrival > bound:
            return (0, req.arrival)
        return (1, req.remaining)

    return sorted(replica.waiting, key=_aging_key)
""",
        {"srpf_max_wait_s": tunable_spec("float", 0.5, 120.0, 8.0, log=True)},
        rank=3,
    ),
    Ingredient(
        "edf_slack_order",
        "order",
        "earliest TTFT deadline first among requests that can still make it; the ones that "
        "cannot go last",
        """def _order(replica, params):
    now = replica.now
    target = params["edf_ttft_s"]
    per_token = params["edf_s_per_token"]

    def _edf_key(req):
        late = now - req.arrival + req.remaining * per_token > target
        return (late, req.arrival)

    return sorted(replica.waiting, key=_edf_key)
""",
        {
            "edf_ttft_s": tunable_spec("float", 0.1, 30.0, DEFAULT_TTFT_S, log=True),
            "edf_s_per_token": tunable_spec("float", 1e-6, 1e-3, 3e-5, log=True),
        },
        rank=6,
    ),
    Ingredient(
        "aged_srpf_order",
        "order",
        "shortest remaining prefill first with linear aging: each second waited counts as "
        "aging_tokens_per_s tokens less work, a smooth bound on how long a long prompt waits",
        """def _order(replica, params):
    now = replica.now
    credit = params["aging_tokens_per_s"]
    return sorted(
        replica.waiting, key=lambda req: (req.remaining - credit * (now - req.arrival), req.id)
    )
""",
        {"aging_tokens_per_s": tunable_spec("float", 1.0, 100000.0, 200.0, log=True)},
        rank=4,
    ),
    Ingredient(
        "hrrn_order",
        "order",
        "highest response ratio next (Brinch Hansen): (waited + estimated prefill time) / "
        "estimated prefill time, so short prompts go first and long ones gain priority as they "
        "wait",
        """def _order(replica, params):
    now = replica.now
    per_token = params["hrrn_s_per_token"]

    def _ratio(req):
        service = max(req.remaining, 1) * per_token
        return -(now - req.arrival + service) / service

    return sorted(replica.waiting, key=lambda req: (_ratio(req), req.id))
""",
        {"hrrn_s_per_token": tunable_spec("float", 1e-6, 1e-3, 3e-5, log=True)},
        rank=7,
    ),
    Ingredient(
        "started_first_order",
        "order",
        "finish prefills already under way first (they hold KV), then shortest remaining first",
        """def _order(replica, params):
    return sorted(replica.waiting, key=lambda req: (not req.started, req.remaining))
""",
        rank=5,
    ),
    Ingredient(
        "fcfs_order",
        "order",
        "arrival order (the baseline's)",
        """def _order(replica, params):
    return replica.waiting
""",
        rank=60,
    ),
)

# Wrappers compose with any existing decision function, renamed ``_base_partition`` /
# ``_base_route``: the base keeps deciding what the wrapper does not override.
ORDER_WRAPPER = """def partition(replica, params):
    # The base partition decides the budget and how many chunk tokens; _order decides who.
    budget, picked = _base_partition(replica, params)
    room = sum(pair[1] for pair in picked)
    chunks = []
    for req in _order(replica, params):
        take = min(req.remaining, room)
        if take <= 0:
            break
        chunks.append((req.id, take))
        room -= take
    return (budget, tuple(chunks))
"""
