"""The vLLM scheduler class an export writes: the policy's ``partition()`` asked every step.

Written against vLLM 0.11.0 (``VLLM_VERSION``), from its sources: ``vllm/config/scheduler.py``
(``scheduler_cls``: "the scheduler class to use ... or the path to a class of form
mod.custom_class"; ``long_prefill_token_threshold``; ``max_num_batched_tokens``) and
``vllm/v1/core/sched/scheduler.py`` (``Scheduler.schedule()`` starts from
``token_budget = self.max_num_scheduled_tokens`` and cuts a prefill at
``long_prefill_token_threshold`` when that is above 0; ``self.running`` and ``self.waiting``
hold the requests; ``vllm/v1/core/sched/async_scheduler.py`` subclasses it for
``--async-scheduling``). The interface is not public and changes between releases: the module
warns when the installed vLLM is another version.

What it can and cannot do: before each step it builds the same ``ReplicaView`` the simulator
gives the policy, from the scheduler's running and waiting requests, and asks ``partition()``;
the answer's budget becomes this step's token budget and its largest chunk this step's
per-request prefill cap; vLLM's own ``schedule()`` then picks the requests, first come first
served. A policy that reorders or defers waiting prompts is therefore not reproduced here (the
export's notes say where the policy does so).

It has NOT been run against vLLM (no GPU where it was written); the tests import it against
stub vLLM modules and check the budget and cap it hands to ``schedule()``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from autotuner.sim.api import ReplicaView, WaitingView

VLLM_VERSION = "0.11.0"
MODULE_NAME = "autotuner_scheduler"

_TEMPLATE = '''"""vLLM scheduler that asks an autotuner policy's partition() before every step.

Written by `autotuner export` for vllm=={version} ({subject}). NOT run against vLLM by its
authors: try it on a staging server first.

    PYTHONPATH=$PWD vllm serve MODEL --scheduler-cls {module}.AutotunerScheduler ...
    (with --async-scheduling: {module}.AutotunerAsyncScheduler)

Each step: the policy's partition() sees a ReplicaView built from this scheduler's requests; its
budget becomes the step's token budget (max_num_scheduled_tokens), its largest chunk the step's
long_prefill_token_threshold, and vLLM's schedule() then picks the requests first come, first
served. A failing policy falls back to vLLM's own step (counted in FALLBACKS).
"""

import time
import warnings
from collections import namedtuple

import vllm
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.scheduler import Scheduler

VLLM_VERSION = "{version}"
POLICY_FILE = __file__.rsplit("/", 1)[0] + "/policy.py"
PARAMS = {params}
WaitingView = namedtuple("WaitingView", {waiting_fields!r})
ReplicaView = namedtuple("ReplicaView", {replica_fields!r})

if not str(getattr(vllm, "__version__", "")).startswith(VLLM_VERSION.rsplit(".", 1)[0] + "."):
    warnings.warn(f"{module} was written for vllm=={{VLLM_VERSION}}, this is "
                  f"{{getattr(vllm, '__version__', '?')}}: the scheduler interface may differ")


def _load_partition():
    namespace = {{"__name__": "autotuner_policy"}}
    with open(POLICY_FILE, encoding="utf-8") as f:
        exec(compile(f.read(), POLICY_FILE, "exec"), namespace)
    partition = namespace.get("partition")
    if partition is None:
        return None
    params = dict(PARAMS)
    return lambda view: partition(view, params)


class _PolicyStep:
    FALLBACKS = 0

    def _autotuner_view(self):
        cfg = self.scheduler_config
        pool = self.kv_cache_manager.block_pool
        block = getattr(self, "block_size", None) or self.cache_config.block_size
        now = time.monotonic()
        last = getattr(self, "_autotuner_last", now)
        self._autotuner_last = now
        decodes, context, waiting, ids = 0, 0, [], {{}}
        for req in list(self.running) + list(self.waiting):
            left = req.num_prompt_tokens - req.num_computed_tokens
            if left <= 0:
                decodes += 1
                context += req.num_tokens
                continue
            ids[len(ids)] = req.request_id
            waiting.append(WaitingView(
                len(ids) - 1, req.arrival_time, req.num_prompt_tokens, req.num_computed_tokens,
                left, max(0, getattr(req, "num_cached_tokens", 0)), req.num_computed_tokens > 0,
                getattr(req, "num_preemptions", 0)))
        waiting.sort(key=lambda w: (w.arrival, w.id))
        free = pool.get_num_free_blocks() * block
        view = ReplicaView(0, now, decodes, context, tuple(waiting[:256]), len(waiting),
                           sum(w.remaining for w in waiting), free, pool.num_gpu_blocks * block,
                           cfg.max_num_batched_tokens, now - last)
        return view, ids

    def schedule(self):
        if not hasattr(self, "_autotuner_partition"):
            self._autotuner_partition = _load_partition()
        if self._autotuner_partition is None:
            return super().schedule()
        try:
            view, _ = self._autotuner_view()
            if not view.waiting_count:
                return super().schedule()
            budget, chunks = self._autotuner_partition(view)
            # decodes always run, as in the simulator: the step's budget covers them
            budget = max(1, view.decodes,
                         min(int(budget), self.scheduler_config.max_num_batched_tokens))
            cap = max((int(t) for _, t in chunks), default=0)
        except Exception:  # noqa: BLE001 - the policy failed: vLLM's own step, counted
            type(self).FALLBACKS += 1
            return super().schedule()
        saved = (self.max_num_scheduled_tokens,
                 self.scheduler_config.long_prefill_token_threshold)
        self.max_num_scheduled_tokens = budget
        self.scheduler_config.long_prefill_token_threshold = cap
        try:
            return super().schedule()
        finally:
            self.max_num_scheduled_tokens = saved[0]
            self.scheduler_config.long_prefill_token_threshold = saved[1]


class AutotunerScheduler(_PolicyStep, Scheduler):
    pass


class AutotunerAsyncScheduler(_PolicyStep, AsyncScheduler):
    pass
'''


def scheduler_module(subject: str, params: Mapping[str, Any]) -> str:
    """The module's text; ``policy.py`` (the policy, tuned values baked in) sits beside it."""
    return _TEMPLATE.format(version=VLLM_VERSION, subject=subject, module=MODULE_NAME,
                            params=json.dumps(dict(params), sort_keys=True),
                            waiting_fields=WaitingView._fields,
                            replica_fields=ReplicaView._fields)

