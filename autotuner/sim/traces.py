"""Trace replay: load a request trace file into a ``Workload``.

Formats (detected by extension, else by content):

- CSV with header ``arrived_at,num_prefill_tokens,num_decode_tokens`` (arrival in seconds from
  the trace start; Vidur/Splitwise processed traces), or the original Azure LLM inference trace
  columns ``TIMESTAMP,ContextTokens,GeneratedTokens`` (TIMESTAMP a datetime such as
  ``2023-11-16 18:15:46.6805900`` or a number of seconds). Extra columns are ignored.
- JSONL (Mooncake): one object per line with ``timestamp`` (milliseconds), ``input_length``,
  ``output_length`` and optionally ``hash_ids`` (one id per 512-token prompt block; equal ids =
  identical content). Either every line has ``hash_ids`` or none does.

Rules, so replay never silently invents data:

- Every malformed value raises ``TraceError`` naming the file, the 1-based line and the field;
  the offending value is quoted at most ``MAX_SHOWN`` characters long.
- Prompt lengths must be >= 1 and output lengths >= 0, both at most ``MAX_REQUEST_TOKENS``
  (10 million: longer than any served model's context, so a larger count is a corrupt row, and
  a request that could never be served would otherwise sit in the simulation unfinished). An
  output of 0 is replayed as 1,
  because the simulator always computes the first token (prefill produces it) and a logged 0
  is a request that was cut off after its prefill, whose prefill cost was still paid. The
  count of such requests is in ``LoadedTrace.zero_outputs`` via ``load_trace_info``.
- Rows out of time order are sorted (stably, so equal timestamps keep file order).
- Times are re-based: the window start (``start``, else the earliest timestamp) becomes 0.
- A window whose requests all arrive at one instant is refused: it has no arrival rate (one
  request, or a burst at t = 0, would report "inf req/s" and cannot be rescaled).
- ``hash_ids`` are integers in [0, 2^63); a JSON line nested too deeply to parse is a malformed
  line like any other.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from .workload import MAX_REQUEST_TOKENS, Workload

__all__ = ["TraceError", "LoadedTrace", "load_trace", "load_trace_info", "window_seconds"]

MOONCAKE_BLOCK_TOKENS = 512
MAX_SHOWN = 40  # characters of an offending value quoted in a message
MAX_HASH_ID = 2**63  # block ids are 64-bit hashes; larger ones cannot be sent to the worker
MAX_FRACTION_DIGITS = 9  # nanoseconds; Azure logs carry 7

_CSV_SCHEMAS = (
    # (time column, prompt column, output column)
    ("arrived_at", "num_prefill_tokens", "num_decode_tokens"),
    ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
)
_JSON_FIELDS = ("timestamp", "input_length", "output_length")


class TraceError(ValueError):
    """A trace that cannot be replayed. ``str()``: ``"<file> line <n>: field '<f>': <problem>"``."""

    def __init__(self, path: str | os.PathLike, line: int | None, field: str | None, problem: str):
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem
        where = self.path
        if line is not None:
            where += f" line {line}"
        if field is not None:
            where += f": field {field!r}"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):
        # Rebuilt from its parts, so it crosses a process pool (the default pickles only the
        # message, which this constructor cannot take alone).
        return (type(self), (self.path, self.line, self.field, self.problem))


def _shown(raw: object) -> str:
    """``repr(raw)`` cut to ``MAX_SHOWN`` characters: a message quotes a value, not a megabyte."""
    try:
        text = repr(raw)
    except RecursionError:
        return "a deeply nested value"
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


@dataclass(frozen=True)
class LoadedTrace:
    """A loaded trace and what loading had to do to it."""

    workload: Workload
    format: str  # "csv" or "jsonl"
    total_requests: int  # rows in the file, before windowing
    zero_outputs: int  # rows (in the result) whose output length 0 was replayed as 1
    reordered: bool  # whether the file's rows were out of time order


def load_trace(
    path: str | os.PathLike,
    rate_scale: float = 1.0,
    start: float | None = None,
    end: float | None = None,
    limit: int | None = None,
) -> Workload:
    """Load a trace as a Workload.

    rate_scale: arrival-rate multiplier (2.0 = twice the rate: times divided by 2), applied after
        windowing and re-basing.
    start, end: keep requests with ``start <= t < end``, in seconds of the original trace's clock
        (seconds from its earliest timestamp); arrivals are re-based so ``start`` becomes 0.
    limit: keep the first ``limit`` requests after windowing.
    """
    return load_trace_info(path, rate_scale, start, end, limit).workload


def load_trace_info(
    path: str | os.PathLike,
    rate_scale: float = 1.0,
    start: float | None = None,
    end: float | None = None,
    limit: int | None = None,
) -> LoadedTrace:
    """``load_trace`` plus what loading did (format, zero outputs, reordering)."""
    p = Path(path)
    name = str(path)
    if not (isinstance(rate_scale, (int, float)) and math.isfinite(rate_scale) and rate_scale > 0):
        raise ValueError(f"rate_scale must be a positive finite number, got {rate_scale!r}")
    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    for what, v in (("start", start), ("end", end)):
        if v is not None and not math.isfinite(v):
            raise ValueError(f"{what} must be finite, got {v!r}")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"end ({end}) must be after start ({start})")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TraceError(name, None, None, "no such file") from None
    except IsADirectoryError:
        raise TraceError(name, None, None, "is a directory, not a trace file") from None
    except UnicodeDecodeError as exc:
        raise TraceError(name, None, None, f"not a text file ({exc.reason})") from None
    except OSError as exc:
        raise TraceError(name, None, None, f"cannot be read: {exc.strerror or exc}") from None

    fmt = _detect(name, p.suffix.lower(), text)
    if fmt == "csv":
        times, prompt, output, prefix = _parse_csv(name, text)
    else:
        times, prompt, output, prefix = _parse_jsonl(name, text)
    total = len(times)

    order = np.argsort(times, kind="stable")
    reordered = bool(np.any(order != np.arange(total)))
    times, prompt, output = times[order], prompt[order], output[order]
    if prefix is not None:
        prefix = [prefix[i] for i in order.tolist()]

    if not math.isfinite(float(times[-1]) - float(times[0])):
        raise TraceError(name, None, None, "the timestamps span more seconds than a float holds")
    rel = times - times[0]  # the original clock: seconds from the earliest timestamp
    lo = 0 if start is None else int(np.searchsorted(rel, start, side="left"))
    hi = total if end is None else int(np.searchsorted(rel, end, side="left"))
    if limit is not None:
        hi = min(hi, lo + int(limit))
    if hi <= lo:
        raise TraceError(
            name,
            None,
            None,
            f"no requests in the window start={start} end={end} "
            f"(the trace spans 0 to {float(rel[-1]):.3f} s)",
        )
    arrival = rel[lo:hi] - (0.0 if start is None else float(start))
    with np.errstate(over="ignore"):  # checked just below, with a message
        arrival = np.maximum(arrival, 0.0) / float(rate_scale)
    if not math.isfinite(float(arrival[-1])):
        raise ValueError(f"rate_scale {rate_scale!r} stretches the arrivals beyond a float's range")
    if float(arrival[-1]) <= 0.0:
        n = hi - lo
        what = "it holds one request" if n == 1 else f"its {n} requests all arrive at once"
        raise TraceError(
            name,
            None,
            None,
            f"{what}, so it has no arrival rate; a trace (or window) needs arrivals at two or "
            "more distinct times",
        )
    out = output[lo:hi]
    zero = int(np.count_nonzero(out == 0))
    workload = Workload(
        p.stem,
        arrival,
        prompt[lo:hi],
        np.maximum(out, 1),
        None if prefix is None else tuple(prefix[lo:hi]),
        MOONCAKE_BLOCK_TOKENS,
    )
    return LoadedTrace(workload, fmt, total, zero, reordered)


def window_seconds(duration: float, window: tuple[float, float]) -> tuple[float, float]:
    """A [start, end) window given as fractions of a trace's duration (how a campaign splits a
    trace), as ``start, end`` seconds for ``load_trace``; an end of 1 reaches just past the last
    arrival, so the last request belongs to the final window."""
    lo, hi = window
    return lo * duration, hi * duration + (1e-9 if hi >= 1 else 0.0)


# --------------------------------------------------------------------------------------------


def _detect(name: str, suffix: str, text: str) -> str:
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("{"):
            return "jsonl"
        if "," in line:
            return "csv"
        break
    if not text.strip():
        raise TraceError(name, None, None, "empty file")
    raise TraceError(
        name,
        1,
        None,
        "unknown trace format: expected a CSV with a header or JSON lines (.csv / .jsonl)",
    )


def _int_value(name: str, line: int, field: str, raw: object, allow_zero: bool) -> int:
    """A token count: an integer (or integral float/string); positive, or >= 0 if allowed, and at
    most ``MAX_REQUEST_TOKENS`` (checked here, before numpy, which cannot hold 2^63)."""
    value: int | None = None
    if isinstance(raw, bool):
        value = None
    elif isinstance(raw, int):
        value = raw
    elif isinstance(raw, float):
        value = int(raw) if math.isfinite(raw) and raw == int(raw) else None
    elif isinstance(raw, str):
        s = raw.strip()
        try:
            value = int(s)
        except ValueError:
            try:
                f = float(s)
                value = int(f) if math.isfinite(f) and f == int(f) else None
            except ValueError:
                value = None
    if value is None or value < (0 if allow_zero else 1):
        # Output lengths accept 0 (replayed as 1); say so only when a number was given.
        note = " (0 is replayed as 1)" if allow_zero and value is not None else ""
        raise TraceError(name, line, field, f"expected a positive integer{note}, got {_shown(raw)}")
    if value > MAX_REQUEST_TOKENS:
        raise TraceError(
            name,
            line,
            field,
            f"{_shown(value)} tokens is more than {MAX_REQUEST_TOKENS:,}, longer than any served "
            "model's context; the row is corrupt",
        )
    return value


def _time_value(name: str, line: int, field: str, raw: object, datetimes: bool) -> float:
    """A timestamp: a finite number (or numeric string), or with ``datetimes`` a datetime string
    (returned in seconds)."""
    value: float | None = None
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str):
        s = raw.strip()
        try:
            value = float(s)
        except ValueError:
            value = _parse_datetime(s) if datetimes else None
    if value is None or not math.isfinite(value):
        want = "a time (seconds or a datetime)" if datetimes else "a number"
        raise TraceError(name, line, field, f"expected {want}, got {_shown(raw)}")
    return value


def _parse_datetime(s: str) -> float | None:
    """Seconds since the epoch of a naive datetime string; Azure logs carry 7 fractional digits,
    which ``fromisoformat`` on Python 3.10 refuses, so the fraction is parsed by hand."""
    if not s:
        return None
    main, _, frac = s.partition(".")
    tz = ""
    for sep in ("+", "Z"):
        if sep in frac:
            frac, _, rest = frac.partition(sep)
            tz = sep + rest
    try:
        base = datetime.fromisoformat((main + tz).replace("Z", "+00:00"))
    except ValueError:
        return None
    if frac and not (frac.isdigit() and len(frac) <= MAX_FRACTION_DIGITS):
        return None
    if base.tzinfo is None:
        # Naive: only differences matter, so read it on a fixed (UTC-like) clock.
        seconds = (base - datetime(1970, 1, 1)).total_seconds()
    else:
        seconds = base.timestamp()
    return seconds + (int(frac) / 10 ** len(frac) if frac else 0.0)


def _parse_csv(name: str, text: str):
    lines = text.splitlines()
    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if first is None:
        raise TraceError(name, None, None, "empty file")
    reader = csv.reader(lines[first:])
    try:
        return _read_csv_rows(name, reader, first)
    except csv.Error as exc:
        # An over-long field, a NUL byte, a broken quote: csv's own complaint, with the line.
        raise TraceError(name, first + reader.line_num, None, f"malformed CSV ({exc})") from None


def _read_csv_rows(name: str, reader, first: int):
    header = [h.strip() for h in next(reader)]
    cols = {h: i for i, h in enumerate(header)}
    schema = None
    for cand in _CSV_SCHEMAS:
        if any(c in cols for c in cand):
            schema = cand
            break
    if schema is None:
        raise TraceError(
            name,
            first + 1,
            None,
            "unknown CSV header: expected columns "
            + " or ".join(",".join(s) for s in _CSV_SCHEMAS)
            + f", got {_shown(','.join(header))}",
        )
    for c in schema:
        if c not in cols:
            raise TraceError(name, first + 1, c, "missing column in the header")
    t_col, p_col, o_col = (cols[c] for c in schema)
    width = max(t_col, p_col, o_col) + 1
    times: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    for offset, row in enumerate(reader, start=first + 2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < width:
            idx = (t_col, p_col, o_col)
            missing = [c for c, i in zip(schema, idx, strict=True) if i >= len(row)]
            raise TraceError(name, offset, missing[0], f"missing value (row has {len(row)} fields)")
        times.append(_time_value(name, offset, schema[0], row[t_col], True))
        prompt.append(_int_value(name, offset, schema[1], row[p_col], allow_zero=False))
        output.append(_int_value(name, offset, schema[2], row[o_col], allow_zero=True))
    if not times:
        raise TraceError(name, None, None, "no requests (only a header)")
    return (
        np.asarray(times, dtype=np.float64),
        np.asarray(prompt, dtype=np.int64),
        np.asarray(output, dtype=np.int64),
        None,
    )


def _parse_jsonl(name: str, text: str):
    times: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    prefix: list[tuple[int, ...]] = []
    has_ids: bool | None = None
    first_line = 0
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise TraceError(name, lineno, None, f"invalid JSON ({exc.msg})") from None
        except RecursionError:
            problem = "JSON nested too deeply for a trace record"
            raise TraceError(name, lineno, None, problem) from None
        except ValueError as exc:  # an integer of more digits than Python converts
            reason = str(exc).split(":")[0]
            raise TraceError(name, lineno, None, f"invalid JSON ({reason})") from None
        if not isinstance(obj, dict):
            got = type(obj).__name__
            raise TraceError(name, lineno, None, f"expected a JSON object, got {got}")
        for f in _JSON_FIELDS:
            if f not in obj:
                raise TraceError(name, lineno, f, "missing field")
        times.append(_time_value(name, lineno, "timestamp", obj["timestamp"], False) / 1000.0)
        n_in = _int_value(name, lineno, "input_length", obj["input_length"], allow_zero=False)
        prompt.append(n_in)
        output.append(
            _int_value(name, lineno, "output_length", obj["output_length"], allow_zero=True)
        )
        present = "hash_ids" in obj
        if has_ids is None:
            has_ids, first_line = present, lineno
        elif present != has_ids:
            raise TraceError(
                name,
                lineno,
                "hash_ids",
                "missing field" if has_ids else f"present here but absent on line {first_line}",
            )
        if present:
            ids = obj["hash_ids"]
            if not isinstance(ids, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < MAX_HASH_ID
                for i in ids
            ):
                problem = f"expected a list of integers in [0, 2^63), got {_shown(ids)}"
                raise TraceError(name, lineno, "hash_ids", problem)
            cap = -(-n_in // MOONCAKE_BLOCK_TOKENS)
            if len(ids) > cap:
                raise TraceError(
                    name,
                    lineno,
                    "hash_ids",
                    f"{len(ids)} block ids cover more than input_length {n_in} tokens "
                    f"(at most {cap} blocks of {MOONCAKE_BLOCK_TOKENS})",
                )
            prefix.append(tuple(ids))
    if not times:
        raise TraceError(name, None, None, "empty file")
    return (
        np.asarray(times, dtype=np.float64),
        np.asarray(prompt, dtype=np.int64),
        np.asarray(output, dtype=np.int64),
        prefix if has_ids else None,
    )
