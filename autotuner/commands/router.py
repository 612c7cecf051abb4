"""``autotuner router``: serve a policy's route() in front of real OpenAI-compatible servers."""

from __future__ import annotations

import argparse
import asyncio
import sys

from autotuner.commands.common import (
    EXIT_OK,
    CLIError,
    add_param_option,
    add_sandbox_option,
    parse_params,
    resolve_policy_path,
)

HELP = "an OpenAI-compatible HTTP router that routes each request with a policy's route()"

DESCRIPTION = """\
Forwards POST /v1/chat/completions and /v1/completions (streaming passed through unchanged) to
one of the --backend servers, chosen by the policy's route() from a live ClusterView: requests
in flight per backend (waiting = no response byte yet, running = streaming), prompt tokens
waiting, and prefix-cache hits estimated from 16-token block hashes of the prompts sent to each
backend. Prompt tokens are ESTIMATED from the prompt's characters, never counted on a request's
path: the characters-per-token ratio is learnt in the background from the first backend with a
tokenize endpoint (llama-cpp-python's /extras/tokenize, vLLM's /tokenize; one sampled prompt per
0.25 s); without one, and with --no-tokenize, it is 4 (the chat template's tokens are not
counted either way). The event loop is uvloop's where uvloop is installed (--no-uvloop:
asyncio's). KV capacity cannot be observed: --kv-capacity-tokens sets it. Where a backend's
/metrics has vLLM's or llama.cpp's gauges, its own running/waiting counts (every client's) raise
the router's, and its KV use bounds the free room. The policy runs in one long-lived sandboxed
worker; a decision later than --policy-timeout-ms, or one that fails, falls back to
least-outstanding routing (counted at GET /metrics), and a dead worker is restarted. GET
/v1/models is answered by the first backend that responds; GET /router/status shows the live
view as JSON."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = DESCRIPTION
    p.add_argument("--policy", required=True, help="policy file (or a shipped baseline's name)")
    add_param_option(p)
    p.add_argument("--backend", action="append", required=True, metavar="URL",
                   help="an OpenAI-compatible server, e.g. http://127.0.0.1:8001 (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--policy-timeout-ms", type=float, default=50.0,
                   help="longest wait for one route() decision before the fallback (default 50)")
    p.add_argument("--kv-capacity-tokens", type=int, default=65_536,
                   help="each backend's KV cache in tokens, as the policy is told (default 65536)")
    p.add_argument("--no-tokenize", action="store_true",
                   help="never ask a backend to tokenize; estimate prompt tokens as chars/4")
    p.add_argument("--no-uvloop", action="store_true",
                   help="run on asyncio's own event loop even where uvloop is installed")
    p.add_argument("--engine-metrics-s", type=float, default=1.0,
                   help="read each backend's /metrics this often (vLLM's or llama.cpp's gauges: "
                   "running, waiting, KV use; 0: never; default 1)")
    p.add_argument("--read-timeout-s", type=float, default=600.0,
                   help="longest silence from a backend mid-response (default 600)")
    add_sandbox_option(p, help_text="isolation backend for the policy worker (bwrap or process; "
                       "default: the strongest that works here)")


def _config(args: argparse.Namespace):
    from autotuner.router.proxy import RouterConfig

    for url in args.backend:
        if not url.startswith(("http://", "https://")):
            raise CLIError(f"--backend {url!r}: give a URL such as http://127.0.0.1:8001")
    if not 0 <= args.port < 65536:
        raise CLIError(f"--port {args.port}: not a port number")
    if args.engine_metrics_s < 0:
        raise CLIError("--engine-metrics-s must be 0 (never) or positive")
    if args.policy_timeout_ms <= 0 or args.kv_capacity_tokens < 1 or args.read_timeout_s <= 0:
        raise CLIError("--policy-timeout-ms, --kv-capacity-tokens and --read-timeout-s must be "
                       "positive")
    return RouterConfig(tuple(args.backend), policy_timeout_s=args.policy_timeout_ms / 1000,
                        kv_capacity_tokens=args.kv_capacity_tokens, tokenize=not args.no_tokenize,
                        read_timeout_s=args.read_timeout_s,
                        engine_metrics_s=args.engine_metrics_s)


def run(args: argparse.Namespace) -> int:
    try:
        from autotuner.router.proxy import serve
        from autotuner.router.runner import PolicyRefused, build_router, uvloop_factory
    except ImportError as exc:  # aiohttp is the optional extra `router`
        raise CLIError(f"the router needs aiohttp: pip install 'autotuner[router]' ({exc})") \
            from exc
    from autotuner.isolation import WorkerFault

    config = _config(args)
    try:
        router = build_router(resolve_policy_path(args.policy), config,
                              parse_params(args.param), args.sandbox)
    except PolicyRefused as exc:
        raise CLIError(str(exc)) from exc
    except WorkerFault as exc:  # the policy failed to load in its worker, or the sandbox
        raise CLIError(f"the policy worker did not start: {exc}") from exc
    loop_factory = None if args.no_uvloop else uvloop_factory()
    print(f"autotuner router: http://{args.host}:{args.port} -> {', '.join(config.backends)} "
          f"(policy {args.policy}, worker pid {router.policy.pid()}, "
          f"{'uvloop' if loop_factory else 'asyncio'} event loop)", file=sys.stderr)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve(router, args.host, args.port))
    finally:
        router.policy.close()
    return EXIT_OK
