"""vLLM: the fitted budget as ``vllm serve`` flags, a routing choice for the balancer in front,
and a ``--scheduler-cls`` module that asks the policy's ``partition()`` every step.

Sources: vLLM 0.11 ``vllm/config/scheduler.py`` (``max_num_batched_tokens``,
``long_prefill_token_threshold``, ``scheduler_cls``), ``vllm/v1/core/sched/scheduler.py``. vLLM
serves one replica; spreading requests over replicas is the balancer's job in front of it, so the
routing choice is between what any balancer offers: round robin or least outstanding requests
(Envoy's ``LEAST_REQUEST``, nginx's ``least_conn``).
"""

from __future__ import annotations

from typing import Any

from autotuner.export.engine_flags import serve_script, vllm_args
from autotuner.export.probe import Observations
from autotuner.export.projection import (
    FIXED_BUDGET_PARTITION,
    LEAST_OUTSTANDING,
    ROUND_ROBIN,
    SCHEDULER_STEP_PARTITION,
    Alternative,
    Projection,
    Subject,
    agreement,
    compile_rule,
    fit_budget,
    projection_file,
    routing_lines,
    with_own,
)
from autotuner.export.vllm_module import MODULE_NAME, VLLM_VERSION, scheduler_module

LABEL = "vLLM knobs"
BALANCERS = {"round robin": ROUND_ROBIN, "least outstanding requests": LEAST_OUTSTANDING}


def closest_balancer(obs: Observations) -> tuple[str, str, float]:
    """(name, rule text, agreement) of the balancer rule closest to the policy's routing."""
    scored = [(name, text, agreement(compile_rule(text, {}, "route"), obs))
              for name, text in BALANCERS.items()]
    return max(scored, key=lambda s: s[2])


def partition_knobs(obs: Observations) -> tuple[dict[str, int], Any]:
    fit = fit_budget(obs)
    return {"max_num_batched_tokens": fit.budget, "long_prefill_token_threshold": fit.cap}, fit


def project(obs: Observations, subject: Subject, cfg: Any) -> Projection:
    knobs, fit = partition_knobs(obs)
    name, route, share = closest_balancer(obs)
    files = {
        "serve.sh": serve_script(vllm_args(fit, cfg), cfg),
        "serve-with-scheduler.sh": serve_script(
            vllm_args(fit, cfg, budget=fit.largest), cfg,
            [f"--scheduler-cls {MODULE_NAME}.AutotunerScheduler"]),
        f"{MODULE_NAME}.py": scheduler_module(subject.origin, subject.params),
        "balancer.txt": f"route requests over the {cfg.cluster.replicas} engines by {name}\n",
    }
    lost = (*fit.lost, *routing_lines(obs, f"{name} balancing", share))
    fit_lines = (*fit.fit, f"balancer: {name}, the closest of "
                 f"{', '.join(BALANCERS)} ({share:.0%} of observed arrivals routed alike)",
                 f"{MODULE_NAME}.py (serve-with-scheduler.sh, --max-num-batched-tokens "
                 f"{fit.largest}: the largest budget observed): written for vllm=={VLLM_VERSION},"
                 " not run against vLLM")
    code = projection_file("vLLM projection", subject, knobs, FIXED_BUDGET_PARTITION, route)
    return Projection("vllm", LABEL, {**knobs, "balancer": name}, files, code, {}, lost,
                      fit_lines, scheduler_alternative(obs, subject, fit.largest, route))


def scheduler_alternative(obs: Observations, subject: Subject, largest: int, route: str
                          ) -> tuple[Alternative, ...]:
    """The --scheduler-cls module's step as a policy file: the policy's own partition() for
    budget and cap, vLLM's fill, the balancer's routing (none when the policy has no
    partition of its own: the module then leaves every step to vLLM)."""
    if "partition" not in obs.defines:
        return ()
    code = with_own(subject, ["partition", "route"], {"max_num_batched_tokens": largest},
                    SCHEDULER_STEP_PARTITION, route)
    return (Alternative("vLLM --scheduler-cls module", code, dict(subject.params)),)
