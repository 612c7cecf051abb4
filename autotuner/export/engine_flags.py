"""The vLLM engine flags every target that fronts vLLM engines shares (vLLM itself, and the
routers llm-d, Dynamo and the production-stack put in front of vLLM workers).

Flag names from vLLM 0.11's ``vllm/config/scheduler.py`` (``max_num_batched_tokens``,
``max_num_seqs``, ``long_prefill_token_threshold``; ``max_num_partial_prefills`` is ignored by
the V1 engine, so it is not emitted) and ``vllm serve --help`` (engine arguments are the config
fields in kebab case).
"""

from __future__ import annotations

from typing import Any

from autotuner.export.projection import BudgetFit


def vllm_args(fit: BudgetFit, cfg: Any, budget: int | None = None) -> list[str]:
    """``vllm serve`` arguments for the fitted budget (or ``budget``) on the campaign's
    cluster."""
    args = ["--enable-chunked-prefill", "--enable-prefix-caching",
            f"--max-num-batched-tokens {budget or fit.budget}",
            f"--tensor-parallel-size {cfg.cluster.tp}", f"--block-size {cfg.cluster.block_size}",
            f"--gpu-memory-utilization {cfg.cluster.gpu_memory_utilization:g}"]
    if fit.cap:
        args.append(f"--long-prefill-token-threshold {fit.cap}")
    return args  # --max-num-seqs: vLLM's default; the simulated cluster caps no running count


def serve_script(args: list[str], cfg: Any, extra: list[str] = ()) -> str:
    """A shell script starting one engine (MODEL: the checkpoint of the simulated model)."""
    lines = " \\\n  ".join([*args, *extra])
    return ("#!/bin/sh\n# One engine per replica; the campaign simulated "
            f"{cfg.cluster.replicas} x {cfg.cluster.model} on {cfg.cluster.gpu}.\n"
            f'MODEL="${{MODEL:?set MODEL to the checkpoint of {cfg.cluster.model}}}"\n'
            f'exec vllm serve "$MODEL" \\\n  {lines}\n')
