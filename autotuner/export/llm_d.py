"""llm-d (the Gateway API Inference Extension's endpoint picker): a YAML of scorer plugins and
their weights, picked by ``max-score-picker``; the vLLM engines behind it take the fitted flags.

Sources: gateway-api-inference-extension ``site-src/guides/epp-configuration/config-text.md``
(``apiVersion: inference.networking.x-k8s.io/v1alpha1``, ``kind: EndpointPickerConfig``,
``plugins`` with ``type``, ``schedulingProfiles`` with ``pluginRef`` and ``weight``), and the
scorers' docs: ``queue-scorer`` (waiting queue, min-max normalised: the shortest scores 1),
``kv-cache-utilization-scorer`` (1 - KV usage), ``prefix-cache-scorer`` (share of the prompt's
blocks found on the endpoint).
"""

from __future__ import annotations

from typing import Any

from autotuner.export.engine_flags import serve_script, vllm_args
from autotuner.export.probe import Observations
from autotuner.export.projection import (
    FIXED_BUDGET_PARTITION,
    Projection,
    Subject,
    best_rule,
    projection_file,
    routing_lines,
)
from autotuner.export.vllm import partition_knobs

LABEL = "llm-d scorer weights"

SCORERS = '''
def route(request, cluster, params):
    """llm-d endpoint picker: weighted queue, KV-utilisation and prefix-cache scores, max wins."""
    loads = cluster.replicas
    lo = min(r.waiting for r in loads)
    hi = max(r.waiting for r in loads)

    def score(r):
        queue = 1.0 if hi == lo else (hi - r.waiting) / (hi - lo)
        kv = r.kv_free_tokens / max(1, r.kv_capacity_tokens)
        prefix = min(1.0, r.prefix_hit_tokens / max(1, request.prompt_tokens))
        return (QUEUE_WEIGHT * queue + KV_WEIGHT * kv + PREFIX_WEIGHT * prefix, -r.replica)

    return max(loads, key=score).replica
'''
# llm-d's guides' default profile first (queue 2, kv 2, prefix 3)
GRID = {"queue_weight": (2, 0, 1, 3, 5), "kv_weight": (2, 0, 1, 3, 5),
        "prefix_weight": (3, 0, 1, 2, 5)}


def epp_yaml(w: dict[str, int]) -> str:
    plugins = [("queue-scorer", w["queue_weight"]), ("kv-cache-utilization-scorer",
                                                     w["kv_weight"]),
               ("prefix-cache-scorer", w["prefix_weight"])]
    used = [(n, wt) for n, wt in plugins if wt > 0]
    return ("apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: EndpointPickerConfig\n"
            "plugins:\n" + "".join(f"- type: {n}\n" for n, _ in used) +
            "- type: max-score-picker\n- type: single-profile-handler\n"
            "schedulingProfiles:\n- name: default\n  plugins:\n" +
            "".join(f"  - pluginRef: {n}\n    weight: {wt}\n" for n, wt in used) +
            "  - pluginRef: max-score-picker\n")


def project(obs: Observations, subject: Subject, cfg: Any) -> Projection:
    knobs, fit = partition_knobs(obs)
    weights, share = best_rule(SCORERS, "route", GRID, obs)
    if not any(weights.values()):
        weights = dict.fromkeys(weights, 1)
    files = {"epp-config.yaml": epp_yaml(weights), "engine.sh": serve_script(vllm_args(fit, cfg),
                                                                             cfg)}
    lost = (*fit.lost, *routing_lines(obs, "the weighted scorer sum", share),
            "ties between endpoints: the picker chooses at random, the projection the lowest "
            "index")
    fit_lines = (*fit.fit, f"scorer weights: the grid point (0..5 each) routing {share:.0%} of "
                 "observed arrivals as the policy did")
    code = projection_file("llm-d projection", subject, {**knobs, **weights},
                           FIXED_BUDGET_PARTITION, SCORERS)
    return Projection("llm-d", LABEL, {**knobs, **weights}, files, code, {}, lost, fit_lines)
