"""``autotuner calibrate``: how well the cost model's constants fit a measured GPU profile, and
the constants fitted to it (the fit itself is ``autotuner.sim.calibrate``)."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from autotuner.commands.common import EXIT_OK, EXIT_USAGE
from autotuner.sim.calibrate import FIT_PARAMS, calibrate
from autotuner.sim.costmodel import PROFILE_OPS
from autotuner.sim.hardware import GPUS, UnknownNameError, get_gpu

HELP = "fit the cost model to a measured GPU profile"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        action="append",
        required=True,
        metavar="FILE",
        help="Vidur-format operator profile (mlp.csv); repeat to fit one constant set over "
        "several models on the same GPU",
    )
    parser.add_argument(
        "--gpu",
        metavar="NAME",
        help=f"GPU the profile was measured on ({', '.join(GPUS)}); default: guessed from the "
        "folder name (h100_..., a100_...)",
    )
    parser.add_argument(
        "--model",
        metavar="NAME",
        help="label for the report only; the shape always comes from the profile's columns",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    """0 on success, 2 with one error line."""
    try:
        gpu = get_gpu(args.gpu) if args.gpu else None
        result = calibrate(list(args.profile), gpu)
    except (ValueError, UnknownNameError) as exc:
        print(f"autotuner calibrate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.model:
        result["model"] = args.model
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_report(result, args.model))
    return EXIT_OK


def _pct(x: float) -> str:
    return f"{100 * x:6.1f}"


def format_report(result: dict, model_label: str | None = None) -> str:
    lines = []
    for prof in result["profiles"]:
        s = prof["shape"]
        label = model_label or Path(prof["path"]).parent.name
        lines.append(f"Profile  {prof['path']}")
        lines.append(
            f"  model {label}: hidden {s['hidden']}, heads {s['heads']} ({s['kv_heads']} KV), "
            f"intermediate {s['intermediate']}{' gated' if s['gated_mlp'] else ''}, "
            f"vocab {s['vocab']}"
        )
        lines.append(
            f"  {prof['rows']} rows, tokens {prof['tokens'][0]}-{prof['tokens'][1]}, "
            f"TP {', '.join(map(str, prof['tp']))}; GPU {result['gpu']}"
        )
        lines.append("")
        lines.append(f"  {'MAPE, %':<28}{'shipped':>9}{'fitted':>9}")
        for op in PROFILE_OPS:
            a, b = prof["shipped"]["per_op_mape"][op], prof["fitted"]["per_op_mape"][op]
            lines.append(f"  {op:<28}{_pct(a):>9}{_pct(b):>9}")
        for tp in prof["tp"]:
            a = prof["shipped"]["overall_mape_by_tp"][tp]
            b = prof["fitted"]["overall_mape_by_tp"][tp]
            lines.append(f"  {f'layer sum, TP {tp}':<28}{_pct(a):>9}{_pct(b):>9}")
        a, b = prof["shipped"]["overall_mape"], prof["fitted"]["overall_mape"]
        lines.append(f"  {'OVERALL (layer sum)':<28}{_pct(a):>9}{_pct(b):>9}")
        a, b = prof["shipped"]["overall_bias"], prof["fitted"]["overall_bias"]
        lines.append(f"  {'  bias (mean signed error)':<28}{_pct(a):>9}{_pct(b):>9}")
        lines.append("")
        lines.extend(_band_lines(prof))
        lines.append("")
    lines.extend(textwrap.wrap("OVERALL = " + result["error_definition"] + ".", 98))
    lines.append("")
    sh, ft = result["shipped"], result["fitted"]
    lines.append(f"  {'constant':<28}{'shipped':>11}{'fitted':>11}")
    for k in (*FIT_PARAMS, "gemm_tile_m"):
        lines.append(f"  {k:<28}{sh[k]:>11.4g}{ft[k]:>11.4g}")
    lines.append(
        f"  {'layer_overhead_s (not fitted)':<28}{sh['layer_overhead_s']:>11.4g}"
        f"{ft['layer_overhead_s']:>11.4g}"
    )
    lines.append("")
    lines.append("Fitted constants, to paste:")
    args = ", ".join(f"{k}={ft[k]!r}" for k in (*FIT_PARAMS, "gemm_tile_m"))
    lines.append(f'  dataclasses.replace(get_gpu("{result["gpu"]}"), {args})')
    return "\n".join(lines)


def _band_lines(prof: dict) -> list[str]:
    """The layer-sum error per band of iteration size: capacity is decided in the mid-size bands,
    so an overall figure alone would hide the band the model gets most wrong."""
    lines = [
        f"  {'by iteration size, tokens':<28}{'rows':>6}{'MAPE, %':>17}{'bias, %':>17}",
        f"  {'':<28}{'':>6}{'shipped':>9}{'fitted':>8}{'shipped':>9}{'fitted':>8}",
    ]
    for band, sh_band in prof["shipped"]["overall_mape_by_band"].items():
        ft_band = prof["fitted"]["overall_mape_by_band"][band]
        lines.append(
            f"  {band:<28}{sh_band['rows']:>6}{_pct(sh_band['mape']):>9}"
            f"{_pct(ft_band['mape']):>8}{_pct(sh_band['bias']):>9}{_pct(ft_band['bias']):>8}"
        )
    return lines
