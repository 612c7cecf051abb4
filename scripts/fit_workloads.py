"""Fit the built-in workload scenarios' figures to the real traces; write autotuner/sim/fitted.py.

The package must not ship third-party traces, only figures derived from them; this script is
how those figures are reproduced. It reads ``../shared/data/traces`` (or
``$AUTOTUNER_SHARED_DATA/traces``), prints a summary, and with ``--write`` rewrites fitted.py.

    python scripts/fit_workloads.py            # print the traces' headline figures
    python scripts/fit_workloads.py --write    # also rewrite autotuner/sim/fitted.py

Figures:
- length tables: a prompt quantile table (marginal) and an output quantile table per
  prompt-quantile bin, so the prompt/output correlation survives (arXiv summaries: log-correlation
  -0.48);
- multiturn sessions from the Mooncake conversation trace: sessions are chains in which a
  request's hash_ids extend an earlier request's (longest shared block prefix beyond the shared
  system block); from them the turns per session, the first turn's prompt, the new tokens a turn
  adds beyond the previous prompt and output, the gap between turns, and the shared system
  blocks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "autotuner" / "sim" / "fitted.py"

# Quantile levels. Dense tails keep the means right for heavy-tailed lengths.
TAIL = (0.001, 0.005, 0.01, 0.99, 0.995, 0.999)
MARGINAL_LEVELS = tuple(sorted({round(float(x), 4) for x in np.linspace(0, 1, 51)} | set(TAIL)))
COND_LEVELS = tuple(sorted({round(float(x), 4) for x in np.linspace(0, 1, 21)} | {0.01, 0.99}))
# Prompt-quantile bins for the conditional output tables; finer at the low end, where short
# prompts carry most of the prompt/output correlation (arXiv: log-corr -0.53 in the lowest tenth).
PROMPT_BIN_LEVELS = (0.0, 0.01, 0.03, 0.06, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
BLOCK = 512


def data_dir() -> Path:
    env = os.environ.get("AUTOTUNER_SHARED_DATA")
    return Path(env) if env else REPO / ".." / "shared" / "data"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def quantiles(x: np.ndarray, levels, digits: int = 0) -> tuple:
    q = np.quantile(np.asarray(x, dtype=np.float64), levels, method="linear")
    q = np.maximum.accumulate(q)  # guard against float noise
    if digits == 0:
        return tuple(int(round(v)) for v in q)
    return tuple(round(float(v), digits) for v in q)


def joint_table(prompt: np.ndarray, output: np.ndarray) -> dict:
    """Prompt marginal plus output quantiles per prompt-quantile bin (rank-based, ties split
    stably, so a bin is exactly the samples whose prompt rank falls in it)."""
    order = np.argsort(prompt, kind="stable")
    cuts = np.rint(np.asarray(PROMPT_BIN_LEVELS) * len(order)).astype(int)
    bins = [order[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    return {
        "prompt_q": quantiles(prompt, MARGINAL_LEVELS),
        "output_q": tuple(quantiles(output[b], COND_LEVELS) for b in bins),
    }


def stats(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=np.float64)
    return {"mean": round(float(x.mean()), 1), "median": round(float(np.median(x)), 1)}


def fit_csv_lengths(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    with path.open() as f:
        header = f.readline().strip().split(",")
    data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    col = {name: data[:, i] for i, name in enumerate(header)}
    arrival = col.get("arrived_at")
    return col["num_prefill_tokens"].astype(np.int64), col["num_decode_tokens"].astype(
        np.int64
    ), arrival


def mooncake_sessions(path: Path) -> dict:
    rows = [json.loads(line) for line in path.open() if line.strip()]
    ids = [tuple(r["hash_ids"]) for r in rows]
    inp = np.array([r["input_length"] for r in rows], dtype=np.int64)
    out = np.array([r["output_length"] for r in rows], dtype=np.int64)
    ts = np.array([r["timestamp"] for r in rows], dtype=np.float64) / 1000.0

    # The system prompt: block ids at the head of (nearly) every request.
    first = {}
    for h in ids:
        first[h[0]] = first.get(h[0], 0) + 1
    system_ids = [k for k, v in first.items() if v >= 0.01 * len(ids)]
    sys_blocks = 1
    while all(len(h) > sys_blocks for h in ids) and len({h[:sys_blocks + 1] for h in ids}) == len(
        {h[:sys_blocks] for h in ids}
    ):
        sys_blocks += 1

    # Parent = the latest earlier request holding the longest shared block prefix beyond the
    # system blocks; the request extends that conversation.
    owner: dict[tuple, int] = {}
    parent = np.full(len(ids), -1)
    lcp = np.zeros(len(ids), dtype=np.int64)
    seen: set[int] = set()
    repeated = total = 0
    for j, h in enumerate(ids):
        k = 0
        while k < len(h) and h[: k + 1] in owner:
            k += 1
        lcp[j] = k
        if k > sys_blocks:
            parent[j] = owner[h[:k]]
        for i in range(1, len(h) + 1):
            owner[h[:i]] = j
        for b in h:
            total += 1
            repeated += b in seen
            seen.add(b)
    child = np.flatnonzero(parent >= 0)
    par = parent[child]
    root = np.arange(len(ids))
    for j in range(len(ids)):
        if parent[j] >= 0:
            root[j] = root[parent[j]]
    sizes = np.bincount(np.unique(root, return_counts=True)[1])
    pmf = sizes / sizes.sum()
    roots = np.flatnonzero(parent < 0)
    delta = inp[child] - inp[par] - out[par]
    think = ts[child] - ts[par]
    span = ts.max() - ts.min()
    return {
        "fig": {
            "system_prompts": len(system_ids),
            "system_blocks": sys_blocks,
            "first_prompt_q": quantiles(inp[roots], MARGINAL_LEVELS),
            "output_q": quantiles(out, MARGINAL_LEVELS),
            "delta_q": quantiles(delta, MARGINAL_LEVELS),
            "think_q": quantiles(think, MARGINAL_LEVELS, digits=1),
            "turns_pmf": tuple(round(float(p), 5) for p in pmf[1:]),
            "max_prompt": int(inp.max()),
        },
        "stats": {
            "requests": len(rows),
            "rate": round(float(len(rows) / span), 3),
            "prompt": stats(inp),
            "output": stats(out),
            "first_prompt": stats(inp[roots]),
            "block_reuse": round(repeated / total, 4),
            "sessions": int(len(roots)),
            "turns_mean": round(len(rows) / len(roots), 3),
            "think": stats(think),
            "delta": stats(delta),
            "delta_negative_share": round(float(np.mean(delta < 0)), 4),
        },
    }


def fmt(name: str, value, indent: int = 0) -> str:
    """A Python literal, wrapped at 100 columns, so fitted.py stays ruff clean and diffable."""
    pad = " " * indent
    if isinstance(value, dict):
        lines = [f"{pad}{name}{{" if name else f"{pad}{{"]
        for k, v in value.items():
            lines.append(fmt(f'"{k}": ', v, indent + 4))
        lines.append(f"{pad}}}" + ("," if indent else ""))
        return "\n".join(lines)
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        lines = [f"{pad}{name}("]
        for v in value:
            lines.append(fmt("", v, indent + 4))
        lines.append(f"{pad})" + ("," if indent else ""))
        return "\n".join(lines)
    if isinstance(value, tuple):
        items = [repr(v) for v in value]
        one = f"{pad}{name}({', '.join(items)}{',' if len(items) == 1 else ''})"
        if len(one) + 1 <= 100:
            return one + ("," if indent else "")
        lines = [f"{pad}{name}("]
        cur = pad + "    "
        for it in items:
            piece = it + ", "
            if len(cur) + len(piece.rstrip()) > 100:
                lines.append(cur.rstrip())
                cur = pad + "    "
            cur += piece
        lines.append(cur.rstrip())
        lines.append(f"{pad})" + ("," if indent else ""))
        return "\n".join(lines)
    text = f'"{value}"' if isinstance(value, str) else repr(value)
    return f"{pad}{name}{text}" + ("," if indent else "")


def render(traces: Path) -> tuple[str, dict]:
    """The text of fitted.py and the traces' headline figures, from the trace folder."""
    azure = traces / "azure_conv_2023.csv"
    arxiv = traces / "arxiv_summarization_lengths.csv"
    moon = traces / "mooncake_conversation.jsonl"
    for p in (azure, arxiv, moon):
        if not p.is_file():
            raise FileNotFoundError(f"missing trace {p}")
    ap_, ao, aa = fit_csv_lengths(azure)
    assert aa is not None
    gaps = np.diff(aa)
    sp, so, _ = fit_csv_lengths(arxiv)
    moonfit = mooncake_sessions(moon)

    trace_stats = {
        "azure_conv_2023": {
            "requests": len(ap_),
            "rate": round(len(ap_) / float(aa.max()), 3),
            "gap_cv": round(float(gaps.std() / gaps.mean()), 3),
            "prompt": stats(ap_),
            "output": stats(ao),
            "log_corr": round(float(np.corrcoef(np.log(ap_), np.log(ao))[0, 1]), 3),
        },
        "arxiv_summarization_lengths": {
            "requests": len(sp),
            "prompt": stats(sp),
            "output": stats(so),
            "log_corr": round(float(np.corrcoef(np.log(sp), np.log(so))[0, 1]), 3),
        },
        "mooncake_conversation": moonfit["stats"],
    }
    sources = {
        "azure_conv_2023.csv": sha(azure),
        "arxiv_summarization_lengths.csv": sha(arxiv),
        "mooncake_conversation.jsonl": sha(moon),
    }
    parts = [
        '"""Figures fitted to the real traces in ../shared/data/traces (see its SOURCES.md).',
        "",
        "Generated by scripts/fit_workloads.py --write; do not edit by hand. The package ships",
        "these figures, never the traces. Quantile tables are sampled by inverse CDF with linear",
        "interpolation between levels; output tables are per prompt-quantile bin (joint fit).",
        '"""',
        "",
        f"BLOCK_TOKENS = {BLOCK}",
        fmt("MARGINAL_LEVELS = ", MARGINAL_LEVELS),
        fmt("COND_LEVELS = ", COND_LEVELS),
        fmt("PROMPT_BIN_LEVELS = ", PROMPT_BIN_LEVELS),
        "",
        "# Azure LLM inference trace 2023, conversation: prompt/output joint table.",
        fmt("CHAT = ", joint_table(ap_, ao)),
        "",
        "# arXiv summarization lengths: prompt/output joint table.",
        fmt("SUMMARIZE = ", joint_table(sp, so)),
        "",
        "# Mooncake conversation trace: sessions (see scripts/fit_workloads.py for the detection).",
        fmt("MULTITURN = ", moonfit["fig"]),
        "",
        "# The traces' own headline figures, which the scenarios are tested against.",
        fmt("TRACE_STATS = ", trace_stats),
        "",
        "# sha256[:16] of the trace files the figures come from.",
        fmt("SOURCES = ", sources),
        "",
    ]
    return "\n".join(parts), trace_stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help=f"rewrite {OUT.relative_to(REPO)}")
    ap.add_argument("--data", type=Path, default=None, help="shared data folder")
    args = ap.parse_args(argv)
    try:
        text, trace_stats = render((args.data or data_dir()) / "traces")
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(json.dumps(trace_stats, indent=1))
    print(f"fitted.py: {len(text)} bytes")
    if args.write:
        OUT.write_text(text)
        print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
