"""`autotuner profile --endpoint URL`: the command line of ``autotuner.profile``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from autotuner.commands.common import EXIT_OK, EXIT_USAGE, number_list, print_json
from autotuner.live import EndpointError, parse_endpoint
from autotuner.profile import ProfileRunError, ProfileSettings, format_profile_run, run_profile

HELP = "drive a live OpenAI-compatible server and fit its step-time model"


int_list = number_list(int)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Probe a live server with controlled requests (prompt lengths, concurrent "
        "streams) and write a step-time profile the simulator loads with --profile FILE."
    )
    p.add_argument(
        "--endpoint",
        action="append",
        required=True,
        metavar="URL",
        help="server base URL; repeat for replicas of one engine, probed at once "
        "(servers sharing a machine are then measured sharing it)",
    )
    p.add_argument(
        "--out",
        default="step_profile.json",
        metavar="FILE",
        help="profile file to write (default step_profile.json)",
    )
    p.add_argument("--name", default="", help="profile name (default: the server's model)")
    p.add_argument(
        "--prompt-lengths",
        type=int_list,
        default=(16, 32, 64, 128, 256),
        metavar="N,N,...",
        help="prompt lengths probed, tokens",
    )
    p.add_argument("--repeats", type=int, default=3, help="requests per prompt length")
    p.add_argument("--decode-tokens", type=int, default=12, help="tokens generated per probe")
    p.add_argument(
        "--concurrency",
        type=int_list,
        default=(2, 4),
        metavar="K,K,...",
        help="concurrent streams sent at once to see whether the engine batches",
    )
    p.add_argument(
        "--kv-tokens",
        type=int,
        help="KV capacity, tokens (default: what the "
        "server reports, else 2048, llama.cpp's default context)",
    )
    p.add_argument(
        "--prompt-chunk",
        type=int,
        default=0,
        metavar="TOKENS",
        help="the engine's prompt chunk (llama.cpp's n_batch; 0: whole prompts)",
    )
    p.add_argument(
        "--eos-token-id",
        type=int_list,
        action="append",
        default=[],
        metavar="ID",
        help="token id to suppress so outputs reach their length (repeatable; "
        "for servers that ignore ignore_eos, e.g. llama-cpp-python)",
    )
    p.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the profile run as JSON")


def write_atomically(path: Path, text: str) -> None:
    """All or nothing: a half-written profile must never be left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> int:
    try:
        endpoints = [parse_endpoint(u) for u in args.endpoint]
        settings = ProfileSettings(
            prompt_lengths=tuple(args.prompt_lengths),
            repeats=args.repeats,
            decode_tokens=args.decode_tokens,
            concurrency=tuple(args.concurrency),
            kv_tokens=args.kv_tokens,
            prompt_chunk_tokens=args.prompt_chunk,
            eos_token_ids=tuple(i for ids in args.eos_token_id for i in ids),
            timeout_s=args.timeout,
            seed=args.seed,
            name=args.name,
        )
        out = Path(args.out)
        if out.is_dir():
            raise ValueError(f"--out {out}: is a directory")
        result = run_profile(endpoints, settings)
        write_atomically(out, result.profile.to_json())
    except (EndpointError, ProfileRunError, ValueError, OSError) as exc:
        print(f"autotuner profile: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print_json(
            {
                "file": str(out),
                "profile": json.loads(result.profile.to_json()),
                "notes": result.notes,
                "failed_requests": result.failed_requests,
            }
        )
    else:
        print(format_profile_run(result, str(out)))
    return EXIT_OK
