"""The vLLM production-stack router: its built-in routing logics (``roundrobin``, ``session``,
``prefixaware``, ``kvaware``) or a Python ``RoutingInterface`` that calls the policy's ``route()``
itself; the vLLM engines behind it take the fitted flags.

Sources: production-stack ``src/vllm_router/routers/routing_logic.py`` (``RoutingInterface``,
``route_request(endpoints, engine_stats, request_stats, request)``; ``initialize_routing_logic``
knows only its own ``RoutingLogic`` values, so a custom class is installed by replacing the
round-robin router's ``route_request`` before the router starts, and the router is run with
``--routing-logic roundrobin``), ``src/vllm_router/stats/engine_stats.py`` (``EngineStats``:
``num_running_requests``, ``num_queuing_requests``, ``gpu_cache_usage_perc``). The module is
written here but has not been run inside the production-stack router.

The module routes with the policy's own ``route()`` on the view a production-stack router has,
so the projection re-simulated is the policy's ``route()`` given that view (running and queued
requests and KV room per engine as scraped; waiting tokens estimated as queued requests times
this prompt's length; no prefix hits), with the engines' partitioning reduced to vLLM's flags.
The same routing with the simulator's exact view is re-simulated beside it (an upper bound).
"""

from __future__ import annotations

import json
from typing import Any

from autotuner.export.engine_flags import serve_script, vllm_args
from autotuner.export.probe import Observations
from autotuner.export.projection import (
    FIXED_BUDGET_PARTITION,
    ROUND_ROBIN,
    Alternative,
    Projection,
    Subject,
    agreement,
    compile_rule,
    with_own,
)
from autotuner.export.vllm import partition_knobs
from autotuner.sim.api import ClusterView, ReplicaLoad, RequestView

LABEL = "production-stack RoutingInterface"
MODULE_NAME = "autotuner_routing"
PREFIX_AWARE = '''
def route(request, cluster, params):
    best = max(cluster.replicas, key=lambda r: (r.prefix_hit_tokens, -r.outstanding, -r.replica))
    return best.replica
'''

_MODULE = '''"""production-stack routing logic that decides with an autotuner policy's route().

Written by `autotuner export` ({subject}); not run inside the production-stack router by its
authors. Install before the router starts, e.g. a sitecustomize.py on its PYTHONPATH containing

    import {module}; {module}.install()

and run the router with --routing-logic roundrobin: install() replaces RoundRobinRouter's
route_request with AutotunerRouter's. policy.py (tuned values baked in) sits beside this file.

The ClusterView is built from the router's scraped EngineStats: running and queued requests per
engine, KV room from gpu_cache_usage_perc and the simulated KV capacity; waiting prompt tokens
are estimated as queued requests x this prompt's length, prefix hits are not known (0), prompt
length is estimated as characters / 4. A failing route() falls back to the least loaded engine.
"""

import time
from collections import namedtuple

from vllm_router.routers import routing_logic

PARAMS = {params}
KV_CAPACITY_TOKENS = {kv_capacity}
POLICY_FILE = __file__.rsplit("/", 1)[0] + "/policy.py"
RequestView = namedtuple("RequestView", {request_fields!r})
ReplicaLoad = namedtuple("ReplicaLoad", {load_fields!r})
ClusterView = namedtuple("ClusterView", {cluster_fields!r})
_START = time.monotonic()


def _load_route():
    namespace = {{"__name__": "autotuner_policy"}}
    with open(POLICY_FILE, encoding="utf-8") as f:
        exec(compile(f.read(), POLICY_FILE, "exec"), namespace)
    route = namespace.get("route")
    params = dict(PARAMS)
    return None if route is None else (lambda req, cluster: route(req, cluster, params))


class AutotunerRouter(routing_logic.RoutingInterface):
    FALLBACKS = 0

    def __init__(self):
        if hasattr(self, "_initialized"):
            return
        self.route = _load_route()
        self.count = 0
        self._initialized = True

    def route_request(self, endpoints, engine_stats, request_stats, request, request_json=None):
        body = request_json or {{}}
        text = body.get("prompt") or " ".join(
            str(m.get("content", "")) for m in body.get("messages", []) or [])
        prompt = max(1, len(str(text)) // 4)
        ordered = sorted(endpoints, key=lambda e: e.url)
        loads = []
        for i, e in enumerate(ordered):
            s = engine_stats.get(e.url)
            running = int(getattr(s, "num_running_requests", 0) or 0)
            queued = int(getattr(s, "num_queuing_requests", 0) or 0)
            used = float(getattr(s, "gpu_cache_usage_perc", 0.0) or 0.0)
            used = used / 100.0 if used > 1.0 else used
            loads.append(ReplicaLoad(i, running, queued, queued * prompt, running + queued,
                                     int((1.0 - used) * KV_CAPACITY_TOKENS), KV_CAPACITY_TOKENS,
                                     0))
        self.count += 1
        req = RequestView(self.count - 1, time.monotonic() - _START, prompt, 0)
        try:
            if self.route is None:
                return ordered[req.id % len(ordered)].url
            return ordered[int(self.route(req, ClusterView(req.arrival, tuple(loads))))].url
        except Exception:  # noqa: BLE001 - the policy failed: least loaded, counted
            type(self).FALLBACKS += 1
            return min(zip(loads, ordered), key=lambda p: (p[0].outstanding, p[0].replica))[1].url


def install():
    routing_logic.RoundRobinRouter.route_request = (
        lambda self, *args, **kwargs: AutotunerRouter().route_request(*args, **kwargs))
'''


def routing_module(subject: Subject, kv_capacity: int) -> str:
    return _MODULE.format(subject=subject.origin, module=MODULE_NAME,
                          params=json.dumps(dict(subject.params), sort_keys=True),
                          kv_capacity=kv_capacity, request_fields=RequestView._fields,
                          load_fields=ReplicaLoad._fields, cluster_fields=ClusterView._fields)


def kv_capacity_tokens(cfg: Any) -> int:
    cluster = cfg.cluster.spec()
    return int(cluster.cost_model().kv_capacity_tokens(cluster.gpu_memory_utilization,
                                                       cluster.block_size))


def live_view_route() -> str:
    """A route() that hands the policy's own (``_policy_route``) the view the module builds."""
    return (
        "from collections import namedtuple\n\n"
        f"LiveLoad = namedtuple('ReplicaLoad', {ReplicaLoad._fields!r})\n"
        f"LiveCluster = namedtuple('ClusterView', {ClusterView._fields!r})\n\n\n"
        "def route(request, cluster, params):\n"
        '    """The policy\'s route() on what the production-stack router sees: running and '
        "queued\n    requests and KV room per engine; waiting tokens as queued requests x this "
        'prompt;\n    no prefix hits."""\n'
        "    live = tuple(LiveLoad(r.replica, r.running, r.waiting, r.waiting * "
        "request.prompt_tokens,\n                          r.outstanding, r.kv_free_tokens, "
        "r.kv_capacity_tokens, 0)\n                 for r in cluster.replicas)\n"
        "    return _policy_route(request, LiveCluster(cluster.now, live), params)\n")


def project(obs: Observations, subject: Subject, cfg: Any) -> Projection:
    knobs, fit = partition_knobs(obs)
    builtin = {name: agreement(compile_rule(text, {}, "route"), obs)
               for name, text in (("roundrobin", ROUND_ROBIN), ("prefixaware", PREFIX_AWARE))}
    values = ("routerSpec:\n  routingLogic: roundrobin  # replaced by "
              f"{MODULE_NAME}.install()\n  extraArgs: []\nservingEngineSpec:\n  modelSpec:\n"
              "  - name: autotuner\n    vllmConfig:\n      extraArgs: "
              f"{json.dumps(vllm_args(fit, cfg))}\n")
    files = {f"{MODULE_NAME}.py": routing_module(subject, kv_capacity_tokens(cfg)),
             "values.yaml": values, "engine.sh": serve_script(vllm_args(fit, cfg), cfg)}
    lost = (*fit.lost,
            "route(): the router's view is estimated (waiting tokens as queued requests x prompt"
            " length, no prefix hits; prompt length as characters/4 and KV room from "
            "gpu_cache_usage_perc at the scrape interval, both exact in the re-simulation); the "
            "policy's routing on the simulator's exact view is the second line")
    fit_lines = (*fit.fit, "routing: the policy's own route() in a RoutingInterface; built-in "
                 "logics for comparison: " + ", ".join(f"{k} {v:.0%}" for k, v in builtin.items())
                 + " of observed arrivals routed alike")
    if "route" in obs.defines:
        code = with_own(subject, ["partition", "route"], knobs, FIXED_BUDGET_PARTITION,
                        live_view_route())
        exact = with_own(subject, ["partition"], knobs, FIXED_BUDGET_PARTITION)
        alternatives = (Alternative("the same with the simulator's exact view (upper bound)",
                                    exact, dict(subject.params)),)
    else:  # the policy routes round robin (the baseline's), and so does the module
        code = with_own(subject, ["partition"], knobs, FIXED_BUDGET_PARTITION, ROUND_ROBIN)
        alternatives = ()
    return Projection("production-stack", LABEL, {**knobs, "routing": "policy route()"}, files,
                      code, dict(subject.params), lost, fit_lines, alternatives)
