"""Check and re-fit a GPU's cost-model constants on a measured profile (`autotuner calibrate`).

Input is Vidur's operator profile format (``mlp.csv``): one row per (``num_tokens``,
``num_tensor_parallel_workers``) with ``time_stats.<op>.median`` in milliseconds for the ten
operators in ``costmodel.PROFILE_OPS``, and the model's shape in the columns ``n_head``,
``n_kv_head``, ``n_embd``, ``n_expanded_embd``, ``vocab_size``, ``use_gated_mlp``. The model comes
from those columns, so a user's own model needs no catalogue entry; the GPU comes from ``--gpu``
or the folder name (``h100_...``, ``a100_...``).

Error measure ("overall"): for each row, the sum of the nine per-layer operators (all but
``emb``, which runs once per forward pass) as predicted, against the same sum measured (medians);
the overall figure is the mean absolute percentage error of that sum over all rows, i.e. every
token count and TP degree in the file counts once. Per-operator MAPEs are reported alongside;
small elementwise operators take a few microseconds, where timer resolution and launch jitter
make their relative errors large without mattering to an iteration's time.

The same error is reported per band of batch size (``BANDS``: 1-64, 65-256, 257-1,024,
1,025-4,096 and more tokens), because an overall figure can hide a band where the model is
consistently wrong: before the GEMM shape terms the 65-1,024 token iterations, where a decode
batch of hundreds of requests decides capacity, were predicted 10-37 % too fast.

The fit minimises the mean, over the profiles, of that overall error, over the continuous
constants in ``FIT_PARAMS`` (efficiencies, the fixed cost per GEMM, the pipeline ramp and the
roofline knee) by a shrinking coordinate search from the shipped values, once per GEMM tile
height in ``TILE_CHOICES``; the best tile wins. No scipy. ``layer_overhead_s`` covers work the
profile does not contain, so it is reported but not fitted.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .costmodel import GEMM_OPS, LAYER_OPS, PROFILE_OPS, CostModel
from .hardware import GPU, GPUS, Model, get_gpu

# The four GEMMs in profile order: the columns ``Evaluator`` computes with ``gemm_time``.
GEMM_OPS_ORDERED = tuple(op for op in PROFILE_OPS if op in GEMM_OPS)
SHAPE_COLUMNS = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp")
ROW_COLUMNS = ("num_tokens", "num_tensor_parallel_workers")
FIT_PARAMS = (
    "compute_eff",
    "mem_eff",
    "ew_mem_eff",
    "op_overhead_s",
    "gemm_ramp_rows",
    "roofline_knee",
)
TILE_CHOICES = (0, 64, 128, 256)
# Search box and first step of the fit; the upper memory bound allows for L2-cache hits on small
# weights. A knee above ~50 is a sharp max in all but name.
_BOUNDS = {
    "compute_eff": (0.2, 1.0),
    "mem_eff": (0.2, 1.2),
    "ew_mem_eff": (0.2, 1.2),
    "op_overhead_s": (0.0, 50e-6),
    "gemm_ramp_rows": (0.0, 256.0),
    "roofline_knee": (1.0, 64.0),
}
_FIRST_STEP = {
    "compute_eff": 0.05,
    "mem_eff": 0.05,
    "ew_mem_eff": 0.05,
    "op_overhead_s": 4e-6,
    "gemm_ramp_rows": 16.0,
    "roofline_knee": 1.0,
}
# Bands of iteration size (tokens) the error is reported for; None: no upper end.
BANDS: tuple[tuple[int, int | None], ...] = (
    (1, 64),
    (65, 256),
    (257, 1024),
    (1025, 4096),
    (4097, None),
)


# Share of the fit's objective given to the mean over bands (the rest: the overall MAPE). With
# none, the A100 fit buys 0.3 points overall with a 65-256 token band 4 points worse.
_BAND_WEIGHT = 0.1


def band_label(band: tuple[int, int | None]) -> str:
    lo, hi = band
    return f"{lo:,}+" if hi is None else f"{lo:,}-{hi:,}"


def band_mask(tokens: np.ndarray, band: tuple[int, int | None]) -> np.ndarray:
    lo, hi = band
    return (tokens >= lo) & (tokens <= hi) if hi is not None else tokens >= lo


def gpu_constants(gpu: GPU) -> dict[str, float]:
    """The fitted constants of a GPU as the fit sees them (tile height included)."""
    out = {k: float(getattr(gpu, k)) for k in FIT_PARAMS}
    out["ew_mem_eff"] = gpu.elementwise_eff
    out["gemm_tile_m"] = gpu.gemm_tile_m
    return out


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file, line and column."""


def median_column(op: str) -> str:
    return f"time_stats.{op}.median"


@dataclass(frozen=True)
class Profile:
    """One parsed profile: the model shape and, per row, token count, TP degree and the measured
    median time of each operator in seconds (columns in ``PROFILE_OPS`` order)."""

    path: str
    model: Model
    num_tokens: np.ndarray  # int, per row
    tp: np.ndarray  # int, per row
    measured: np.ndarray  # seconds, shape (rows, len(PROFILE_OPS))


def _parse_bool(text: str) -> bool | None:
    low = text.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    return None


def _parse_row(
    path: str, line: int, row: list[str], col: dict[str, int]
) -> tuple[list[float], tuple, int, int]:
    """One data row: operator medians in seconds, model shape, num_tokens, TP degree."""

    def where(name: str) -> str:
        return f"{path}:{line}: column {col[name] + 1} ({name})"

    def number(name: str) -> float:
        raw = row[col[name]].strip()
        try:
            value = float(raw)
        except ValueError:
            raise ProfileError(f"{where(name)}: expected a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise ProfileError(f"{where(name)}: expected a finite number, got {raw!r}")
        return value

    def count(name: str) -> int:
        value = number(name)
        if value < 1 or value != int(value):
            raise ProfileError(f"{where(name)}: expected a positive integer, got {value:g}")
        return int(value)

    vals = []
    for op in PROFILE_OPS:
        name = median_column(op)
        v = number(name)
        if v <= 0:
            raise ProfileError(f"{where(name)}: expected a positive time in ms, got {v:g}")
        vals.append(v * 1e-3)
    gated = _parse_bool(row[col["use_gated_mlp"]])
    if gated is None:
        raw = row[col["use_gated_mlp"]]
        raise ProfileError(f"{where('use_gated_mlp')}: expected True or False, got {raw!r}")
    row_shape = tuple(count(c) for c in SHAPE_COLUMNS[:-1]) + (gated,)
    return vals, row_shape, count("num_tokens"), count("num_tensor_parallel_workers")


def load_profile(path: str | os.PathLike) -> Profile:
    """Parse a Vidur mlp.csv; anything unusable raises ProfileError naming line and column."""
    path = str(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{path}: not a UTF-8 text file ({exc.reason})") from None

    reader = csv.reader(text.splitlines())
    try:
        header = next(reader)
    except StopIteration:
        raise ProfileError(f"{path}:1: empty file, expected a CSV header row") from None
    except csv.Error as exc:
        raise ProfileError(f"{path}:1: malformed CSV header: {exc}") from None
    header = [h.strip() for h in header]
    col = {name: i for i, name in enumerate(header)}
    needed = [median_column(op) for op in PROFILE_OPS] + list(SHAPE_COLUMNS) + list(ROW_COLUMNS)
    for name in needed:
        if name not in col:
            raise ProfileError(
                f"{path}:1: missing column {name!r} (a Vidur mlp.csv profile needs "
                f"time_stats.<op>.median for {', '.join(PROFILE_OPS)} and the columns "
                f"{', '.join(SHAPE_COLUMNS + ROW_COLUMNS)})"
            )

    shape: tuple | None = None
    shape_line = 0
    tokens: list[int] = []
    tps: list[int] = []
    times: list[list[float]] = []
    line = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ProfileError(f"{path}:{reader.line_num}: malformed CSV: {exc}") from None
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise ProfileError(
                f"{path}:{line}: expected {len(header)} fields like the header, got {len(row)}"
            )

        vals, row_shape, n_tok, n_tp = _parse_row(path, line, row, col)
        if shape is None:
            shape, shape_line = row_shape, line
        elif row_shape != shape:
            raise ProfileError(
                f"{path}:{line}: model shape columns differ from line {shape_line}; "
                "a profile holds one model"
            )
        tokens.append(n_tok)
        tps.append(n_tp)
        times.append(vals)

    if shape is None:
        raise ProfileError(f"{path}:{line}: no data rows after the header")
    n_head, n_kv, hidden, inter, vocab, gated = shape
    where0 = f"{path}:{shape_line}"
    if hidden % n_head:
        raise ProfileError(f"{where0}: n_embd {hidden} is not a multiple of n_head {n_head}")
    if n_head % n_kv:
        raise ProfileError(f"{where0}: n_head {n_head} is not a multiple of n_kv_head {n_kv}")
    bad_tp = sorted({t for t in tps if n_head % t})
    if bad_tp:
        raise ProfileError(f"{path}: num_tensor_parallel_workers {bad_tp} do not divide n_head")
    model = Model(
        name=Path(path).parent.name or Path(path).stem,
        num_layers=1,
        hidden=hidden,
        heads=n_head,
        kv_heads=n_kv,
        head_dim=hidden // n_head,
        intermediate=inter,
        vocab=vocab,
        gated_mlp=gated,
    )
    return Profile(
        path=path,
        model=model,
        num_tokens=np.array(tokens, dtype=np.int64),
        tp=np.array(tps, dtype=np.int64),
        measured=np.array(times, dtype=np.float64),
    )


def guess_gpu(path: str) -> GPU | None:
    """The GPU a profile's folder (or file) name starts with, as Vidur names them."""
    p = Path(path)
    for name in (p.parent.name, p.name):
        low = name.lower()
        for key in ("a100", "h100", "h200", "b200"):
            if low.startswith(key):
                return get_gpu(key)
    return None


class Evaluator:
    """Per-row operator work of a profile, so predictions for many constant sets are cheap.

    ``predict`` is ``CostModel.op_times`` vectorised over rows (the tests check they agree).
    """

    def __init__(self, profile: Profile, gpu: GPU):
        self.profile = profile
        self.gpu = gpu
        n = len(profile.num_tokens)
        self.gemm_cols = np.array([PROFILE_OPS.index(op) for op in GEMM_OPS_ORDERED])
        self.ew_cols = np.array([j for j, op in enumerate(PROFILE_OPS) if op not in GEMM_OPS])
        self.rows = profile.num_tokens.astype(np.float64)[:, None]
        self.flops = np.zeros((n, len(self.gemm_cols)))  # per row of the GEMM
        self.weight_bytes = np.zeros_like(self.flops)
        self.act_bytes = np.zeros_like(self.flops)  # per row of the GEMM
        self.ew_bytes = np.zeros((n, len(self.ew_cols)))
        models: dict[int, CostModel] = {}
        for i, (tokens, tp) in enumerate(zip(profile.num_tokens, profile.tp, strict=True)):
            cm = models.get(int(tp))
            if cm is None:
                cm = models[int(tp)] = CostModel(profile.model, gpu, int(tp))
            gemms = cm.gemm_work(int(tokens))
            for j, op in enumerate(GEMM_OPS_ORDERED):
                self.flops[i, j], self.weight_bytes[i, j], self.act_bytes[i, j] = gemms[op]
            work = cm.op_work(int(tokens))
            for j, col in enumerate(self.ew_cols):
                self.ew_bytes[i, j] = work[PROFILE_OPS[col]][1]
        self.layer_cols = np.array([PROFILE_OPS.index(op) for op in LAYER_OPS])
        self.measured_layer = profile.measured[:, self.layer_cols].sum(axis=1)
        self.band_masks = [m for m in (band_mask(profile.num_tokens, b) for b in BANDS) if m.any()]

    def predict(self, params: dict[str, float]) -> np.ndarray:
        """Seconds per row and operator (``PROFILE_OPS`` order) under the constants ``params``
        (the keys of ``gpu_constants``)."""
        g = self.gpu
        pc = g.peak_flops * params["compute_eff"]
        bm = g.hbm_bandwidth * params["mem_eff"]
        bew = g.hbm_bandwidth * (params["ew_mem_eff"] or params["mem_eff"])
        tile, knee = int(params["gemm_tile_m"]), params["roofline_knee"]
        T = self.rows
        rows = np.where(T > tile, np.ceil(T / tile) * tile, T) if tile else T
        ct = self.flops / pc * (rows + params["gemm_ramp_rows"])
        mt = (self.weight_bytes + self.act_bytes * T) / bm
        if knee:
            hi, lo = np.maximum(ct, mt), np.minimum(ct, mt)
            gemm = hi * (1.0 + (lo / hi) ** knee) ** (1.0 / knee)
        else:
            gemm = np.maximum(ct, mt)
        out = np.empty((len(T), len(PROFILE_OPS)))
        out[:, self.gemm_cols] = gemm + params["op_overhead_s"]
        out[:, self.ew_cols] = self.ew_bytes / bew
        return out

    def layer_rel_error(self, pred: np.ndarray) -> np.ndarray:
        return pred[:, self.layer_cols].sum(axis=1) / self.measured_layer - 1.0

    def report(self, params: dict[str, float]) -> dict:
        pred = self.predict(params)
        rel = pred / self.profile.measured - 1.0
        layer = self.layer_rel_error(pred)
        tokens = self.profile.num_tokens
        by_tp = {
            int(tp): float(np.mean(np.abs(layer[self.profile.tp == tp])))
            for tp in np.unique(self.profile.tp)
        }
        by_band = {}
        for band in BANDS:
            mask = band_mask(tokens, band)
            if mask.any():
                by_band[band_label(band)] = {
                    "rows": int(mask.sum()),
                    "mape": float(np.mean(np.abs(layer[mask]))),
                    "bias": float(np.mean(layer[mask])),
                }
        return {
            "overall_mape": float(np.mean(np.abs(layer))),
            "overall_bias": float(np.mean(layer)),
            "per_op_mape": {
                op: float(np.mean(np.abs(rel[:, j]))) for j, op in enumerate(PROFILE_OPS)
            },
            "overall_mape_by_tp": by_tp,
            "overall_mape_by_band": by_band,
        }


def _objective(evals: list[Evaluator], params: dict[str, float]) -> float:
    """The worst profile's layer-sum error: its overall MAPE, with ``_BAND_WEIGHT`` of the
    weight on the mean of its per-band MAPEs. The worst, because one constant set per GPU has to
    serve every model; the bands, so that one with few rows (65-256 tokens holds a twentieth of
    them) cannot be traded away for a slightly better overall figure."""
    worst = 0.0
    for ev in evals:
        err = np.abs(ev.layer_rel_error(ev.predict(params)))
        bands = [float(np.mean(err[mask])) for mask in ev.band_masks]
        score = (1 - _BAND_WEIGHT) * float(np.mean(err)) + _BAND_WEIGHT * sum(bands) / len(bands)
        worst = max(worst, score)
    return worst


def _coordinate_search(
    evals: list[Evaluator], start: dict[str, float]
) -> tuple[dict[str, float], float]:
    """Shrinking coordinate search over ``FIT_PARAMS`` with the tile height held fixed."""
    best = dict(start)
    best_val = _objective(evals, best)
    step = dict(_FIRST_STEP)
    for _ in range(16):
        improved = True
        while improved:
            improved = False
            for k in FIT_PARAMS:
                lo, hi = _BOUNDS[k]
                for sign in (-1.0, 1.0):
                    cand = dict(best)
                    cand[k] = min(hi, max(lo, best[k] + sign * step[k]))
                    v = _objective(evals, cand)
                    if v < best_val - 1e-12:
                        best, best_val, improved = cand, v, True
        step = {k: s / 2 for k, s in step.items()}
    return best, best_val


def fit_constants(evals: list[Evaluator], start: dict[str, float]) -> dict[str, float]:
    """The constants (tile height included) minimising ``_objective``, searched from ``start``
    (the shipped constants) once per tile height; rounded as they are printed."""
    first = dict(start)
    first["ew_mem_eff"] = first["ew_mem_eff"] or first["mem_eff"]
    lo, hi = _BOUNDS["roofline_knee"]
    first["roofline_knee"] = min(hi, max(lo, first["roofline_knee"] or hi))
    best: dict[str, float] | None = None
    best_val = math.inf
    for tile in TILE_CHOICES:
        found, val = _coordinate_search(evals, {**first, "gemm_tile_m": tile})
        if val < best_val:
            best, best_val = found, val
    assert best is not None
    knee = round(best["roofline_knee"], 1)
    return {
        "compute_eff": round(best["compute_eff"], 3),
        "mem_eff": round(best["mem_eff"], 3),
        "ew_mem_eff": round(best["ew_mem_eff"], 3),
        "op_overhead_s": float(f"{best['op_overhead_s']:.3g}"),
        "gemm_ramp_rows": round(best["gemm_ramp_rows"], 1),
        # At the search bound the knee is a sharp max in all but name: say so, and save the
        # simulator two powers per GEMM.
        "roofline_knee": 0.0 if knee >= _BOUNDS["roofline_knee"][1] else knee,
        "gemm_tile_m": int(best["gemm_tile_m"]),
    }


def calibrate(paths: list[str], gpu: GPU | None = None) -> dict:
    """Load the profiles, score the shipped constants, fit new ones, score those.

    All profiles must be from one GPU (one set of constants is fitted across them)."""
    profiles = [load_profile(p) for p in paths]
    gpus = []
    for prof in profiles:
        g = gpu or guess_gpu(prof.path)
        if g is None:
            raise ValueError(
                f"cannot tell the GPU of {prof.path} from its folder name; pass --gpu "
                f"(one of {', '.join(GPUS)})"
            )
        gpus.append(g)
    if len({g.name for g in gpus}) > 1:
        raise ValueError(
            "profiles from different GPUs ("
            + ", ".join(sorted({g.name for g in gpus}))
            + "): calibrate one GPU at a time"
        )
    g = gpus[0]
    evals = [Evaluator(p, g) for p in profiles]
    shipped = gpu_constants(g)
    fitted = fit_constants(evals, shipped)
    out_profiles = []
    for prof, ev in zip(profiles, evals, strict=True):
        m = prof.model
        out_profiles.append(
            {
                "path": prof.path,
                "rows": len(prof.num_tokens),
                "tokens": [int(prof.num_tokens.min()), int(prof.num_tokens.max())],
                "tp": sorted({int(t) for t in prof.tp}),
                "shape": {
                    "hidden": m.hidden,
                    "heads": m.heads,
                    "kv_heads": m.kv_heads,
                    "intermediate": m.intermediate,
                    "vocab": m.vocab,
                    "gated_mlp": m.gated_mlp,
                },
                "shipped": ev.report(shipped),
                "fitted": ev.report(fitted),
            }
        )
    return {
        "gpu": g.name,
        "error_definition": (
            "mean over all rows of |predicted - measured| / measured, where a row's value is "
            "the sum of its nine per-layer operators (all but emb), median times; per-operator "
            "MAPE: the same for each operator alone"
        ),
        "shipped": {**shipped, "layer_overhead_s": g.layer_overhead_s},
        "fitted": {**fitted, "layer_overhead_s": g.layer_overhead_s},
        "profiles": out_profiles,
    }


__all__ = [
    "FIT_PARAMS",
    "Evaluator",
    "Profile",
    "ProfileError",
    "calibrate",
    "fit_constants",
    "gpu_constants",
    "guess_gpu",
    "load_profile",
]
