"""`autotuner profile`: measure a live OpenAI-compatible engine and fit a step-time model.

The simulator's GPU roofline (``sim/costmodel.py``) describes GPU engines whose kernels it knows.
For any other engine (llama.cpp on a CPU, an unknown stack) this fits what BLIS fits, an iteration
time linear in what the iteration holds (``sim/measured.py`` has the model), from requests whose
shape is controlled:

- prefill probes, one request at a time: prompts of several lengths; the time to the first token
  is one prefill iteration (or one per prompt chunk);
- decode probes: the gaps between the streamed tokens of those requests, one decode iteration
  each, at a context of prompt plus tokens so far;
- concurrency probes: k requests sent at once. If their token streams overlap, the engine batches
  and the gaps are iterations of several decodes; if each stream starts only after the previous
  ended, the engine serves one request at a time (``max_num_seqs`` 1), and the time from one
  stream's last token to the next stream's first token is the engine's own hand-off plus a
  prefill, with no client round trip in it: those become prefill observations too.

The fit is non-negative and minimises the mean absolute relative error (iteratively reweighted
least squares), so a probe slowed by another process does not drag it. Coefficients the probes
cannot tell apart are pinned, and said so: with no iteration of more than one decode,
``decode_s`` is 0 and ``base_s`` carries the whole decode step. The fit's error is reported per
band of batch size (tokens in the iteration), not only overall.

For a GPU engine the same linear model applies (BLIS uses it for vLLM); fitting the roofline
constants of ``sim/costmodel.py`` from a live GPU engine is not done here (``autotuner
calibrate`` fits them from operator profiles).

No argparse here: ``autotuner/commands/profile.py`` is the command line.
"""

from __future__ import annotations

import datetime as _dt
import math
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from autotuner.live import (
    Endpoint,
    EndpointError,
    PlannedRequest,
    StreamResult,
    make_prompt,
    prompt_tokens,
    replay,
    server_model,
    stream_completion,
)
from autotuner.sim.measured import COEFFICIENTS, StepProfile

# Bands of batch size (tokens in one iteration) the fit's error is reported for.
BANDS: tuple[tuple[int, int | None], ...] = (
    (1, 1),
    (2, 16),
    (17, 64),
    (65, 256),
    (257, 1024),
    (1025, None),
)
DEFAULT_KV_TOKENS = 2048  # llama.cpp's default context when the server does not report one


class ProfileRunError(Exception):
    """The engine answered, but not in a way a profile can be built from."""


@dataclass(frozen=True)
class ProfileSettings:
    """What to probe. Lengths in tokens; the whole run takes roughly
    ``repeats * sum(prompt_lengths)`` prefill tokens plus as many decode steps."""

    prompt_lengths: tuple[int, ...] = (16, 32, 64, 128, 256)
    repeats: int = 3
    decode_tokens: int = 12
    concurrency: tuple[int, ...] = (2, 4)
    kv_tokens: int | None = None  # None: what the server reports, else DEFAULT_KV_TOKENS
    prompt_chunk_tokens: int = 0
    eos_token_ids: tuple[int, ...] = ()
    timeout_s: float = 120.0
    seed: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        if not self.prompt_lengths or min(self.prompt_lengths) < 1:
            raise ValueError("prompt lengths must be positive token counts")
        if len(set(self.prompt_lengths)) < 2:
            raise ValueError("give at least two different prompt lengths (the fit needs a slope)")
        if self.repeats < 1 or self.decode_tokens < 3:
            raise ValueError("repeats must be >= 1 and decode tokens >= 3")
        if any(k < 2 for k in self.concurrency):
            raise ValueError("concurrency levels must be >= 2 (1 is the prefill probe)")
        if self.kv_tokens is not None and self.kv_tokens < 16:
            raise ValueError("the KV capacity must be at least 16 tokens")
        if self.prompt_chunk_tokens < 0 or self.timeout_s <= 0:
            raise ValueError("the prompt chunk must be >= 0 and the timeout positive")


@dataclass(frozen=True)
class Observation:
    """One measured time and the iteration(s) it covers, as the model's features summed over
    those iterations (``COEFFICIENTS`` order)."""

    kind: str  # "prefill", "handoff", "decode"
    features: tuple[float, ...]
    batch_tokens: int  # tokens in the (largest) iteration: the band it counts in
    seconds: float


@dataclass
class ProfileRun:
    """Everything one profiling run measured and fitted."""

    profile: StepProfile
    observations: list[Observation]
    errors: dict[str, object]
    notes: list[str] = field(default_factory=list)
    failed_requests: int = 0


def _features(prefill: int, pairs: float, decodes: int, context: float) -> list[float]:
    return [1.0, 1.0 if prefill > 0 else 0.0, float(prefill), pairs, float(decodes), context]


def prefill_features(tokens: int, chunk: int) -> tuple[float, ...]:
    """Features of a prompt's prefill: one iteration, or one per chunk of ``chunk`` tokens."""
    total = np.zeros(len(COEFFICIENTS))
    done = 0
    while done < tokens:
        c = tokens - done if chunk <= 0 else min(chunk, tokens - done)
        total += _features(c, c * (done + (c + 1) / 2), 0, 0.0)
        done += c
    return tuple(total)


def _words_for(tokens: int, per_word: float, extra: int) -> int:
    return max(1, round((tokens - extra) / per_word))


def _decode_observations(r: StreamResult, prompt: int) -> list[Observation]:
    """A stream's decode steps as one observation: their mean time at their mean context.
    Single gaps are not used: a client reads chunks in bursts (two chunks in one read, then a
    double gap), which the mean over a stream cancels."""
    n = len(r.token_times)
    if n < 2:
        return []
    mean_gap = (r.token_times[-1] - r.token_times[0]) / (n - 1)
    ctx = prompt + n / 2.0  # the steps read prompt + 1 .. prompt + n - 1 tokens
    return [Observation("decode", tuple(_features(0, 0.0, 1, ctx)), 1, mean_gap)]


def _overlap(results: Sequence[StreamResult]) -> int:
    """Most streams emitting tokens at one moment (first to last token)."""
    events = []
    for r in results:
        if len(r.token_times) >= 2:
            events.append((r.token_times[0], 1))
            events.append((r.token_times[-1], -1))
    events.sort(key=lambda e: (e[0], e[1]))
    live = best = 0
    for _, step in events:
        live += step
        best = max(best, live)
    return best


def _active_decodes(results: Sequence[StreamResult], prompt: int) -> list[Observation]:
    """Overlapping streams: while all of them emit tokens, each step is an iteration of that
    many decodes. One observation per stream: its mean gap inside the common window."""
    spans = [(r.token_times[0], r.token_times[-1]) for r in results if len(r.token_times) >= 2]
    if len(spans) < 2:
        return []
    lo, hi = max(s for s, _ in spans), min(e for _, e in spans)
    live = len(spans)
    out = []
    for r in results:
        inside = [t for t in r.token_times if lo <= t <= hi]
        if len(inside) >= 3:
            gap = (inside[-1] - inside[0]) / (len(inside) - 1)
            j = r.token_times.index(inside[0]) + len(inside) / 2.0
            ctx = live * (prompt + j)
            out.append(Observation("decode", tuple(_features(0, 0.0, live, ctx)), live, gap))
    return out


def _nnls(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares by elimination: solve, drop the most negative, repeat."""
    active = list(range(A.shape[1]))
    coef = np.zeros(A.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(A[:, active], b, rcond=None)
        if (sol >= 0).all():
            coef[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    return coef


def fit_step_model(
    observations: Sequence[Observation], pinned: dict[str, float], rounds: int = 20
) -> dict[str, float]:
    """Non-negative fit minimising the mean absolute relative error (iteratively reweighted
    least squares): on a shared machine a few probes run slow for reasons of their own, and a
    squared loss would follow them. ``pinned`` coefficients are held."""
    free = [k for k in COEFFICIENTS if k not in pinned]
    X = np.array([o.features for o in observations], dtype=np.float64)
    y = np.array([o.seconds for o in observations], dtype=np.float64)
    offset = np.zeros(len(y))
    for k, v in pinned.items():
        offset += X[:, COEFFICIENTS.index(k)] * v
    Xf = X[:, [COEFFICIENTS.index(k) for k in free]]
    rel_w = 1.0 / np.maximum(y, 1e-9)
    w = rel_w.copy()
    coef = np.zeros(len(free))
    for _ in range(rounds):
        coef = _nnls(Xf * w[:, None], (y - offset) * w)
        rel = np.abs((Xf @ coef + offset) / y - 1.0)
        w = rel_w / np.sqrt(np.maximum(rel, 0.01))
    out = dict(pinned)
    for k, value in zip(free, coef, strict=True):
        out[k] = float(value)
    return {k: out[k] for k in COEFFICIENTS}


def band_label(band: tuple[int, int | None]) -> str:
    lo, hi = band
    if hi is None:
        return f"{lo:,}+"
    return f"{lo:,}" if lo == hi else f"{lo:,}-{hi:,}"


def fit_errors(observations: Sequence[Observation], coef: dict[str, float]) -> dict[str, object]:
    """MAPE and signed bias of the fitted model on its own observations: overall, per kind and
    per band of batch size."""
    c = np.array([coef[k] for k in COEFFICIENTS])
    pred = np.array([np.dot(o.features, c) for o in observations])
    meas = np.array([o.seconds for o in observations])
    rel = pred / meas - 1.0
    tokens = np.array([o.batch_tokens for o in observations])
    kinds = np.array([o.kind for o in observations])

    def stats(mask: np.ndarray) -> dict[str, float]:
        return {
            "n": int(mask.sum()),
            "mape": float(np.mean(np.abs(rel[mask]))),
            "bias": float(np.mean(rel[mask])),
        }

    bands = {}
    for band in BANDS:
        lo, hi = band
        mask = (tokens >= lo) & ((tokens <= hi) if hi is not None else True)
        if mask.any():
            bands[band_label(band)] = stats(mask)
    return {
        "overall": stats(np.ones(len(rel), dtype=bool)),
        "by_kind": {
            k: stats(kinds == k) for k in ("prefill", "handoff", "decode") if (kinds == k).any()
        },
        "by_band": bands,
    }


@dataclass
class _EndpointProbes:
    observations: list[Observation] = field(default_factory=list)
    handoffs: list[tuple[int, float]] = field(default_factory=list)
    overlap: int = 1
    failed: int = 0
    error: str | None = None


def _probe_endpoint(
    endpoint: Endpoint,
    model: str,
    settings: ProfileSettings,
    lengths: list[int],
    per_word: float,
    extra: int,
    seed: int,
) -> _EndpointProbes:
    """The probe schedule on one endpoint: prefill/decode probes, then concurrency probes."""
    out = _EndpointProbes()
    rng = random.Random(seed)
    chunk = settings.prompt_chunk_tokens
    eos = settings.eos_token_ids

    def prompt(tokens: int) -> str:
        return make_prompt(_words_for(tokens, per_word, extra), rng)

    def stream(tokens: int, max_tokens: int) -> StreamResult:
        return stream_completion(
            endpoint,
            model,
            prompt(tokens),
            max_tokens,
            timeout=settings.timeout_s,
            eos_token_ids=eos,
        )

    stream(lengths[0], 4)  # warm-up, not measured: first-request effects (allocation, caches)
    order = [L for _ in range(settings.repeats) for L in lengths]
    rng.shuffle(order)  # drifts of a shared machine spread over all lengths
    for L in order:
        r = stream(L, settings.decode_tokens)
        if r.error or len(r.token_times) < 2:
            out.failed += 1
            continue
        out.observations.append(Observation("prefill", prefill_features(L, chunk), L, r.ttft))
        out.observations.extend(_decode_observations(r, L))
    conc_prompt = lengths[0] if len(lengths) < 3 else lengths[1]
    for k in settings.concurrency:
        plan = [
            PlannedRequest(0.0, 0, prompt(conc_prompt), settings.decode_tokens) for _ in range(k)
        ]
        _, results = replay([endpoint], model, plan, timeout=settings.timeout_s, eos_token_ids=eos)
        good = [r for r in results if not r.error and len(r.token_times) >= 2]
        out.failed += len(results) - len(good)
        seen = _overlap(good)
        out.overlap = max(out.overlap, seen)
        if seen >= 2:
            out.observations.extend(_active_decodes(good, conc_prompt))
        else:
            ordered = sorted(good, key=lambda r: r.token_times[0])
            for prev, nxt in zip(ordered, ordered[1:], strict=False):
                out.handoffs.append((conc_prompt, nxt.token_times[0] - prev.token_times[-1]))
            for r in good:
                out.observations.extend(_decode_observations(r, conc_prompt))
    return out


def run_profile(endpoints: Sequence[Endpoint], settings: ProfileSettings) -> ProfileRun:
    """Probe the engine behind ``endpoints`` and fit its step-time model.

    Several endpoints (replicas of one engine) are probed at the same time with the same
    schedule and their observations pooled: servers that share a machine are then measured
    sharing it, as they will run under load. Raises EndpointError when one cannot be reached
    and ProfileRunError when the answers cannot be used."""
    endpoint = endpoints[0]
    model, server_ctx = server_model(endpoint)
    for other in endpoints[1:]:
        server_model(other)  # reachable, or a clear error now
    kv = settings.kv_tokens or server_ctx or DEFAULT_KV_TOKENS
    notes: list[str] = []
    if settings.kv_tokens is None and server_ctx is None:
        notes.append(f"KV capacity not reported by the server: assumed {kv} tokens (--kv-tokens)")
    rng = random.Random(settings.seed)
    timeout = settings.timeout_s

    # Tokens per word, measured: two prompt sizes give the slope and the fixed extra (BOS).
    counts = []
    for words in (16, 64):
        counts.append(prompt_tokens(endpoint, model, make_prompt(words, rng), timeout))
    if None in counts:
        per_word, extra = 1.0, 0
        notes.append("the server reports no prompt usage: assumed one token per word")
    else:
        per_word = max((counts[1] - counts[0]) / 48.0, 1e-3)
        extra = max(0, round(counts[0] - 16 * per_word))
    lengths = sorted({L for L in settings.prompt_lengths if L + settings.decode_tokens < kv})
    if len(lengths) < 2:
        raise ProfileRunError(
            f"fewer than two prompt lengths fit the KV capacity of {kv} tokens with "
            f"{settings.decode_tokens} decode tokens"
        )

    results: list[_EndpointProbes | None] = [None] * len(endpoints)

    def work(k: int) -> None:
        try:
            results[k] = _probe_endpoint(
                endpoints[k], model, settings, lengths, per_word, extra, settings.seed + 1 + k
            )
        except Exception as exc:  # a thread must hand its failure back, not print it
            results[k] = _EndpointProbes(error=f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(len(endpoints))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    observations: list[Observation] = []
    handoffs: list[tuple[int, float]] = []
    overlap_seen, failed = 1, 0
    for ep, res in zip(endpoints, results, strict=True):
        assert res is not None
        if res.error:
            raise ProfileRunError(f"probing {ep.url} failed: {res.error}")
        observations.extend(res.observations)
        handoffs.extend(res.handoffs)
        overlap_seen = max(overlap_seen, res.overlap)
        failed += res.failed
    if not any(o.kind == "prefill" for o in observations):
        raise ProfileRunError("every probe request failed; is the endpoint serving completions?")

    chunk = settings.prompt_chunk_tokens
    max_k = max(settings.concurrency) if settings.concurrency else 1
    if overlap_seen <= 1:
        max_num_seqs = 1
        notes.append("the engine serves one request at a time (concurrent streams never overlap)")
        for tokens, seconds in handoffs:
            observations.append(
                Observation("handoff", prefill_features(tokens, chunk), tokens, seconds)
            )
    elif overlap_seen >= max_k:
        max_num_seqs = 0
    else:
        max_num_seqs = overlap_seen
        notes.append(f"at most {overlap_seen} of {max_k} concurrent requests ran at once")
    if len(endpoints) > 1:
        notes.append(f"{len(endpoints)} endpoints probed at once and pooled")

    pinned: dict[str, float] = {}
    if not any(o.features[COEFFICIENTS.index("decode_s")] > 1 for o in observations):
        pinned["decode_s"] = 0.0
        notes.append("no iteration held more than one decode: decode_s pinned to 0 (in base_s)")
    coef = fit_step_model(observations, pinned)
    if coef["base_s"] + coef["decode_s"] <= 0:
        raise ProfileRunError("the fit found no time per decode step; too few decode gaps")
    errors = fit_errors(observations, coef)
    profile = StepProfile(
        name=settings.name or model.rsplit("/", 1)[-1],
        kv_capacity_tokens=int(kv),
        max_num_seqs=max_num_seqs,
        prompt_chunk_tokens=chunk,
        tokens_per_word=round(per_word, 4),
        prompt_extra_tokens=int(extra),
        endpoint=", ".join(e.url for e in endpoints),
        server_model=model,
        created=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        fit=errors,
        **{k: float(f"{v:.6g}") for k, v in coef.items()},
    )
    return ProfileRun(profile, observations, errors, notes, failed)


def _pct(x: float) -> str:
    return f"{100 * x:+.1f} %" if not math.isnan(x) else "-"


def format_profile_run(run: ProfileRun, path: str) -> str:
    p = run.profile
    lines = [
        f"profile   {p.name}  ({p.server_model} at {p.endpoint})",
        f"written   {path}",
        "",
        "step-time model, seconds (t = base + prefill_base*[prefill] + prefill_token*P"
        " + prefill_pair*pairs + decode*D + context_token*ctx):",
    ]
    for k in COEFFICIENTS:
        lines.append(f"  {k:<18}{getattr(p, k):.4g}")
    seqs = "no limit seen" if p.max_num_seqs == 0 else str(p.max_num_seqs)
    lines += [
        f"  max_num_seqs      {seqs}",
        f"  kv_capacity       {p.kv_capacity_tokens:,} tokens",
        f"  tokens per word   {p.tokens_per_word:g} (+{p.prompt_extra_tokens} per prompt)",
        "",
        "fit error on the probes (relative, predicted vs measured):",
        f"  {'batch size, tokens':<22}{'n':>5}{'MAPE':>9}{'bias':>10}",
    ]
    for label, s in run.errors["by_band"].items():
        lines.append(f"  {label:<22}{s['n']:>5}{100 * s['mape']:>8.1f}%{_pct(s['bias']):>10}")
    for kind, s in run.errors["by_kind"].items():
        lines.append(f"  {kind:<22}{s['n']:>5}{100 * s['mape']:>8.1f}%{_pct(s['bias']):>10}")
    s = run.errors["overall"]
    lines.append(f"  {'overall':<22}{s['n']:>5}{100 * s['mape']:>8.1f}%{_pct(s['bias']):>10}")
    if run.failed_requests:
        lines.append(f"  ({run.failed_requests} probe requests failed and were left out)")
    for note in run.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


__all__ = [
    "BANDS",
    "EndpointError",
    "Observation",
    "ProfileRun",
    "ProfileRunError",
    "ProfileSettings",
    "fit_errors",
    "fit_step_model",
    "format_profile_run",
    "prefill_features",
    "run_profile",
]
