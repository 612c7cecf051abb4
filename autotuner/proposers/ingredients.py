"""Known-good heuristic pieces as policy-file code, for the offline proposer to insert and combine.

A partition here is always the same stall-free fill (``PARTITION_TEMPLATE``: decodes first, then
prefill chunks in some order until the budget or the free KV cache runs out) split into two
pluggable pieces, so that the proposer can recombine them independently:

- a **budget** piece defines ``_budget(replica, params)``: how many tokens this iteration runs;
- an **order** piece defines ``_order(replica, params)``: which waiting requests get them first.

A **route** piece defines ``route(request, cluster, params)`` itself.

Each piece is ordinary policy code (it passes ``autotuner.check``), declares its numeric knobs as
tunables with ranges wide enough for Optuna to matter, and keeps its helper and state names
prefixed by the piece so that any budget, order and route can live in one file. Tunable names are
unique across the whole library for the same reason (a test checks both).

Why these pieces (figures from ``scripts/explore_heuristics.py``: capacity under SLO, 4 replicas
of Llama-3-8B on H100, TTFT 2 s, TPOT 100 ms, 90 % of requests): routing by waiting prefill work
net of prefix-cache hits is worth +2..3 % on chat and summarization and +70..140 % on multiturn
and mixed traffic (a 100k-token prompt behind round robin stalls a replica for seconds, and every
turn of a session that lands elsewhere re-prefills its history); ordering the queue shortest
remaining prefill first, with requests that can no longer meet their TTFT target moved last, is
worth another +10..35 % (mostly by deferring the longest prompts, which the 90 % share allows:
``scripts/output/FINDINGS.md`` has the caveats); the budget shape matters little once the chunk
is large (per-token cost is flat above ~512 tokens and the 100 ms TPOT target leaves room), so
budgets are the weakest pieces and are here for diversity.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SLOTS = ("budget", "order", "route")
# The function each slot's piece defines.
SLOT_FUNCTION = {"budget": "_budget", "order": "_order", "route": "route"}

COMPOSED_TITLE = "Offline proposal composed from known-good heuristic pieces."

# Defaults of the SLO-aware pieces; the proposer overrides them with the campaign's own targets.
DEFAULT_TTFT_S = 2.0
DEFAULT_TPOT_S = 0.1


@dataclass(frozen=True)
class Ingredient:
    """One piece: code defining its slot's function (plus prefixed helpers and state)."""

    name: str
    slot: str  # "budget", "order" or "route"
    summary: str  # one line for the policy file's docstring
    code: str  # top-level statements, no imports, no TUNABLES
    tunables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    imports: tuple[str, ...] = ()  # import statements the code needs, e.g. "import random"
    rank: int = 50  # lower = stronger in the research figures; the proposer's early bias


def tunable_spec(
    kind: str, low: float, high: float, default: float, log: bool = False
) -> dict[str, Any]:
    """A TUNABLES entry, keys in the order a reader expects."""
    spec: dict[str, Any] = {"type": kind, "low": low, "high": high}
    if log:
        spec["log"] = True
    spec["default"] = default
    return spec


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
        '''def _order(replica, params):
    now = replica.now
    credit = params["aging_tokens_per_s"]
    return sorted(
        replica.waiting, key=lambda req: (req.remaining - credit * (now - req.arrival), req.id)
    )
''',
        {"aging_tokens_per_s": tunable_spec("float", 1.0, 100000.0, 200.0, log=True)},
        rank=4,
    ),
    Ingredient(
        "hrrn_order",
        "order",
        "highest response ratio next (Brinch Hansen): (waited + estimated prefill time) / "
        "estimated prefill time, so short prompts go first and long ones gain priority as they "
        "wait",
        '''def _order(replica, params):
    now = replica.now
    per_token = params["hrrn_s_per_token"]

    def _ratio(req):
        service = max(req.remaining, 1) * per_token
        return -(now - req.arrival + service) / service

    return sorted(replica.waiting, key=lambda req: (_ratio(req), req.id))
''',
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

ALL: tuple[Ingredient, ...] = BUDGETS + ORDERS + ROUTES
BY_NAME: dict[str, Ingredient] = {i.name: i for i in ALL + ROUTE_WRAPPERS}

# What the research found strongest, in order: the proposer's first proposals from a parent
# that lacks them. (order, budget, route)
STRONG_COMBINATIONS: tuple[tuple[str, str, str], ...] = (
    ("slack_srpf_order", "fixed_budget", "least_work_route"),  # the best overall
    ("srpf_aging_order", "fixed_budget", "least_work_route"),  # bounded wait, less starvation
    ("slack_srpf_order", "kv_guard_budget", "least_work_route"),  # best on multiturn
    ("srpf_order", "fixed_budget", "prefix_guard_route"),
    ("aged_srpf_order", "fixed_budget", "kv_guard_work_route"),
    ("slack_srpf_order", "fixed_budget", "least_outstanding_route"),  # best on mixed
    ("edf_slack_order", "tpot_budget", "least_work_route"),
    ("fcfs_order", "fixed_budget", "least_work_route"),  # routing alone: an ablation point
)


def get(name: str) -> Ingredient:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no ingredient {name!r}; known: {', '.join(sorted(BY_NAME))}") from None


def slot_pieces(slot: str) -> tuple[Ingredient, ...]:
    return {"budget": BUDGETS, "order": ORDERS, "route": ROUTES}[slot]


def with_slo_defaults(
    spec: Mapping[str, Any], name: str, ttft_s: float, tpot_s: float
) -> dict[str, Any]:
    """A tunable spec whose default follows the campaign's SLO, for the SLO-aware knobs."""
    out = dict(spec)
    target = ttft_s if name in ("slack_ttft_s", "edf_ttft_s") else None
    if name == "tpot_target_s":
        target = tpot_s
    if target is not None and out["low"] <= target <= out["high"]:
        out["default"] = float(target)
    return out


def render_tunables(tunables: Mapping[str, Mapping[str, Any]]) -> str:
    """``TUNABLES = {...}`` with one tunable per line, keys in a fixed order."""
    if not tunables:
        return "TUNABLES = {}\n"
    lines = ["TUNABLES = {"]
    for name, spec in tunables.items():
        keys = [k for k in ("type", "low", "high", "log", "default") if k in spec]
        body = ", ".join(f"{k!r}: {spec[k]!r}" for k in keys).replace("'", '"')
        lines.append(f'    "{name}": {{{body}}},')
    lines.append("}")
    return "\n".join(lines) + "\n"


def compose(
    order: str,
    budget: str,
    route: str,
    *,
    ttft_s: float = DEFAULT_TTFT_S,
    tpot_s: float = DEFAULT_TPOT_S,
    title: str = "",
) -> str:
    """A whole policy file from one budget, one order and one route piece."""
    pieces = [get(budget), get(order), get(route)]
    for piece, slot in zip(pieces, ("budget", "order", "route"), strict=True):
        if piece.slot != slot:
            raise ValueError(f"{piece.name} is a {piece.slot} piece, not a {slot} piece")
    imports = sorted({imp for p in pieces for imp in p.imports})
    tunables: dict[str, Any] = {}
    for p in pieces:
        for name, spec in p.tunables.items():
            tunables[name] = with_slo_defaults(spec, name, ttft_s, tpot_s)
    doc = [title or COMPOSED_TITLE, ""]
    for p in pieces:
        doc += textwrap.wrap(
            f"{p.slot}: {p.name}: {p.summary}.", 96, initial_indent="- ", subsequent_indent="  "
        )
    out = ['"""' + "\n".join(doc) + '\n"""\n']
    if imports:
        out.append("\n".join(imports) + "\n")
    out.append(render_tunables(tunables))
    for code in (pieces[0].code, pieces[1].code, PARTITION_TEMPLATE, pieces[2].code):
        out.append("\n" + code)
    return "\n".join(out)
