"""Trace replay: the real Azure and Mooncake files, windows and rate scaling, malformed input."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from autotuner.sim.traces import TraceError, load_trace, load_trace_info
from autotuner.sim.workload import Workload


def _shared_traces() -> Path:
    env = os.environ.get("AUTOTUNER_SHARED_DATA")
    base = Path(env) if env else Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    return base / "traces"


TRACES = _shared_traces()
AZURE = TRACES / "azure_conv_2023.csv"
MOONCAKE = TRACES / "mooncake_conversation.jsonl"
needs_azure = pytest.mark.skipif(
    not AZURE.is_file(), reason=f"shared trace {AZURE} absent (set AUTOTUNER_SHARED_DATA)"
)
needs_mooncake = pytest.mark.skipif(
    not MOONCAKE.is_file(), reason=f"shared trace {MOONCAKE} absent (set AUTOTUNER_SHARED_DATA)"
)


# ------------------------------------------------------------------ real traces


@needs_azure
def test_azure_trace_loads_with_its_published_figures():
    info = load_trace_info(AZURE)
    wl = info.workload
    assert info.format == "csv" and not info.reordered
    assert len(wl) == 19_366 and wl.prefix is None
    assert wl.name == "azure_conv_2023"
    assert wl.prompt.mean() == pytest.approx(1155, abs=1)
    assert np.median(wl.prompt) == 1020
    assert wl.output.mean() == pytest.approx(211, abs=1)
    assert np.median(wl.output) == 129
    assert info.zero_outputs == 0
    assert wl.arrival[0] == 0.0
    assert wl.rate == pytest.approx(19_366 / 3501.721937, rel=1e-9)
    g = np.diff(wl.arrival)
    assert g.std() / g.mean() == pytest.approx(1.1, abs=0.05)


@needs_azure
def test_azure_window_rate_scale_and_limit():
    full = load_trace(AZURE)
    rel = full.arrival
    wl = load_trace(AZURE, start=600.0, end=1200.0)
    inside = (rel >= 600.0) & (rel < 1200.0)
    assert len(wl) == int(inside.sum())
    np.testing.assert_allclose(wl.arrival, rel[inside] - 600.0)
    assert np.array_equal(wl.prompt, full.prompt[inside])
    assert wl.arrival[0] >= 0 and wl.arrival[-1] < 600.0

    fast = load_trace(AZURE, start=600.0, end=1200.0, rate_scale=2.0)
    np.testing.assert_allclose(fast.arrival, wl.arrival / 2.0)
    assert fast.rate == pytest.approx(2 * wl.rate)
    assert np.array_equal(fast.output, wl.output)

    head = load_trace(AZURE, start=600.0, limit=50)
    assert len(head) == 50
    np.testing.assert_allclose(head.arrival, wl.arrival[:50])
    only_end = load_trace(AZURE, end=60.0)
    assert np.all(only_end.arrival < 60.0) and len(only_end) == int((rel < 60.0).sum())

    with pytest.raises(TraceError, match="no requests in the window"):
        load_trace(AZURE, start=10_000.0)
    with pytest.raises(ValueError):
        load_trace(AZURE, rate_scale=0.0)
    with pytest.raises(ValueError):
        load_trace(AZURE, start=100.0, end=50.0)


@needs_mooncake
def test_mooncake_trace_loads_with_prefix_ids():
    info = load_trace_info(MOONCAKE)
    wl = info.workload
    assert info.format == "jsonl"
    assert len(wl) == 12_031 and wl.prefix is not None
    assert wl.prefix_block_tokens == 512
    assert wl.prompt.mean() == pytest.approx(12_035, abs=1)
    assert wl.output.mean() == pytest.approx(343, abs=1)
    assert wl.arrival[-1] == pytest.approx(3536.999)
    blocks = -(-wl.prompt // 512)
    assert [len(p) for p in wl.prefix] == blocks.tolist()
    seen: set[int] = set()
    repeated = total = 0
    for ids in wl.prefix:
        for b in ids:
            total += 1
            repeated += b in seen
            seen.add(b)
    assert repeated / total == pytest.approx(0.366, abs=0.001)

    part = load_trace(MOONCAKE, start=1800.0, end=2400.0, rate_scale=0.5)
    rel = wl.arrival
    inside = (rel >= 1800.0) & (rel < 2400.0)
    assert len(part) == int(inside.sum())
    np.testing.assert_allclose(part.arrival, (rel[inside] - 1800.0) * 2.0)
    assert part.prefix == tuple(p for p, k in zip(wl.prefix, inside, strict=True) if k)


# ------------------------------------------------------------------ small well-formed files


def test_csv_sorted_stably_and_rebased(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text(
        "arrived_at,num_prefill_tokens,num_decode_tokens\n"
        "12.0,10,1\n10.0,20,2\n12.0,30,3\n11.0,40,0\n"
    )
    info = load_trace_info(f)
    wl = info.workload
    assert info.reordered and info.zero_outputs == 1
    assert wl.arrival.tolist() == [0.0, 1.0, 2.0, 2.0]
    assert wl.prompt.tolist() == [20, 40, 10, 30]  # equal times keep file order
    assert wl.output.tolist() == [2, 1, 1, 3]  # output 0 replayed as 1


def test_original_azure_columns_with_datetimes(tmp_path):
    f = tmp_path / "AzureLLMInferenceTrace_conv.csv"
    f.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:16:46.6805900,879,55\n"
    )
    wl = load_trace(f)
    np.testing.assert_allclose(wl.arrival, [0.0, 4.314579, 60.0], atol=1e-6)
    assert wl.prompt.tolist() == [374, 396, 879]


def test_jsonl_without_hash_ids_and_format_sniffing(tmp_path):
    f = tmp_path / "trace.log"  # unknown extension: detected from content
    f.write_text(
        '{"timestamp": 1000, "input_length": 600, "output_length": 5}\n'
        "\n"
        '{"timestamp": 3000, "input_length": 70, "output_length": 2}\n'
    )
    wl = load_trace(f)
    assert wl.prefix is None
    assert wl.arrival.tolist() == [0.0, 2.0]
    g = tmp_path / "trace.txt"
    g.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n0.5,3,4\n1.5,5,6\n")
    assert load_trace(g).prompt.tolist() == [3, 5]


def test_loaded_trace_is_a_workload_usable_with_rate(tmp_path):
    f = tmp_path / "t.jsonl"
    rows = [
        {"timestamp": 0, "input_length": 1024, "output_length": 3, "hash_ids": [0, 1]},
        {"timestamp": 500, "input_length": 1500, "output_length": 3, "hash_ids": [0, 1, 2]},
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    wl = load_trace(f)
    assert isinstance(wl, Workload)
    assert wl.prefix == ((0, 1), (0, 1, 2))
    assert wl.with_rate(8.0).arrival.tolist() == [0.0, 0.25]


# ------------------------------------------------------------------ malformed input

HEADER = "arrived_at,num_prefill_tokens,num_decode_tokens\n"
OK_CSV = "0.0,10,5\n"


def _moon(**kw) -> str:
    row = {"timestamp": 0, "input_length": 600, "output_length": 3, "hash_ids": [1, 2]}
    row.update(kw)
    return json.dumps({k: v for k, v in row.items() if v is not ...})


MALFORMED = [
    # (file name, content, line, field, words in the problem)
    ("bad.csv", HEADER + OK_CSV * 15 + "1.0,10,abc\n", 17, "num_decode_tokens", "positive integer"),
    ("neg.csv", HEADER + OK_CSV + "1.0,-4,5\n", 3, "num_prefill_tokens", "positive integer"),
    ("zero.csv", HEADER + "1.0,0,5\n", 2, "num_prefill_tokens", "positive integer"),
    ("negout.csv", HEADER + "1.0,3,-1\n", 2, "num_decode_tokens", "0 is replayed as 1"),
    ("frac.csv", HEADER + "1.0,3.5,1\n", 2, "num_prefill_tokens", "'3.5'"),
    ("time.csv", HEADER + OK_CSV + "soon,3,1\n", 3, "arrived_at", "time"),
    ("nan.csv", HEADER + "nan,3,1\n", 2, "arrived_at", "time"),
    ("short.csv", HEADER + OK_CSV + OK_CSV + "2.0,3\n", 4, "num_decode_tokens", "missing value"),
    ("nocol.csv", "arrived_at,num_prefill_tokens\n0,1\n", 1, "num_decode_tokens", "missing column"),
    ("hdr.csv", "a,b,c\n1,2,3\n", 1, None, "unknown CSV header"),
    ("only_header.csv", HEADER, None, None, "no requests"),
    ("empty.csv", "", None, None, "empty"),
    ("empty.jsonl", "\n\n", None, None, "empty"),
    ("json.jsonl", _moon() + "\n" + '{"timestamp": 1,\n', 2, None, "invalid JSON"),
    ("list.jsonl", "[1, 2]\n", 1, None, "JSON object"),
    ("miss.jsonl", _moon() + "\n" + _moon(input_length=...) + "\n", 2, "input_length", "missing"),
    ("ts.jsonl", _moon(timestamp="later") + "\n", 1, "timestamp", "number"),
    ("out.jsonl", _moon() + "\n" * 3 + _moon(output_length=-2) + "\n", 4, "output_length", "-2"),
    ("inp.jsonl", _moon(input_length=1.5) + "\n", 1, "input_length", "positive integer"),
    ("ids.jsonl", _moon(hash_ids="0,1") + "\n", 1, "hash_ids", "list of integers"),
    ("idsn.jsonl", _moon(hash_ids=[0, None]) + "\n", 1, "hash_ids", "list of integers"),
    ("toomany.jsonl", _moon(hash_ids=[0, 1, 2]) + "\n", 1, "hash_ids", "more than input_length"),
    ("mixed.jsonl", _moon() + "\n" + _moon(hash_ids=...) + "\n", 2, "hash_ids", "missing"),
    ("what.txt", "hello world\n", 1, None, "unknown trace format"),
    # bounds: counts numpy cannot hold, counts no model serves, input the parsers choke on
    ("big.csv", HEADER + OK_CSV + f"1.0,{2**63},5\n", 3, "num_prefill_tokens", "10,000,000"),
    ("bigout.csv", HEADER + OK_CSV + f"1.0,5,{2**63}\n", 3, "num_decode_tokens", "10,000,000"),
    ("big.jsonl", _moon() + "\n" + _moon(input_length=2**63) + "\n", 2, "input_length",
     "10,000,000"),
    ("bigout.jsonl", _moon() + "\n" + _moon(output_length=2**64) + "\n", 2, "output_length",
     "10,000,000"),
    ("tera.csv", HEADER + "1.0,1000000000000,5\n", 2, "num_prefill_tokens", "longer than any"),
    ("terafloat.csv", HEADER + "1.0,1e12,5\n", 2, "num_prefill_tokens", "longer than any"),
    ("deep.jsonl", _moon() + "\n" + "[" * 100_000 + "]" * 100_000 + "\n", 2, None,
     "nested too deeply"),
    ("digits.jsonl", _moon() + "\n" + '{"timestamp": 1, "input_length": ' + "9" * 5000
     + ', "output_length": 3}\n', 2, None, "invalid JSON"),
    ("nul.csv", HEADER + OK_CSV + "1.0,5\x00,5\n", 3, "num_prefill_tokens", "5\\x00"),
    ("field.csv", HEADER + "1.0,5," + "1" * 200_000 + "\n", 2, None, "field larger"),
    ("idsbig.jsonl", _moon(hash_ids=[2**70]) + "\n", 1, "hash_ids", "[0, 2^63)"),
    ("idsneg.jsonl", _moon(hash_ids=[-1]) + "\n", 1, "hash_ids", "[0, 2^63)"),
    ("ns.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46." + "1" * 12
     + ",5,5\n", 2, "TIMESTAMP", "a time"),
    ("one.csv", HEADER + OK_CSV, None, None, "holds one request, so it has no arrival rate"),
    ("instant.jsonl", _moon() + "\n" + _moon() + "\n", None, None, "all arrive at once"),
    ("span.csv", HEADER + "-1.7e308,5,5\n1.7e308,5,5\n", None, None, "span more seconds"),
]


@pytest.mark.parametrize(
    ("name", "content", "line", "field", "words"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_malformed_trace_names_file_line_and_field(tmp_path, name, content, line, field, words):
    f = tmp_path / name
    f.write_text(content)
    with pytest.raises(TraceError) as info:
        load_trace(f)
    err = info.value
    msg = str(err)
    assert name in msg
    assert err.line == line
    assert err.field == field
    if line is not None:
        assert f"line {line}" in msg
    if field is not None:
        assert f"field '{field}'" in msg
    assert words in msg


def test_message_format_matches_the_documented_example(tmp_path):
    f = tmp_path / "trace.csv"
    f.write_text(HEADER + OK_CSV * 15 + "1.0,10,abc\n")
    with pytest.raises(TraceError) as info:
        load_trace(f)
    assert str(info.value).endswith(
        "trace.csv line 17: field 'num_decode_tokens': expected a positive integer, got 'abc'"
    )
    assert isinstance(info.value, ValueError)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(TraceError, match="no such file") as info:
        load_trace(tmp_path / "nope.csv")
    assert "nope.csv" in str(info.value)
    with pytest.raises(TraceError, match="directory"):
        load_trace(tmp_path)


def test_trace_error_survives_a_process_pool(tmp_path):
    """A worker's TraceError is pickled back to the parent; it must arrive whole (it used to fail
    to unpickle, which broke the campaign's process pool)."""
    f = tmp_path / "t.csv"
    f.write_text(HEADER + OK_CSV + "1.0,10,abc\n")
    with pytest.raises(TraceError) as info:
        load_trace(f)
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is TraceError and str(again) == str(info.value)
    assert (again.path, again.line, again.field, again.problem) == (
        info.value.path, info.value.line, info.value.field, info.value.problem)


@pytest.mark.parametrize("value", ["x" * 100_000, "9" * 5000, [0] * 50_000])
def test_an_offending_value_is_quoted_short(tmp_path, value):
    f = tmp_path / "t.jsonl"
    f.write_text(_moon() + "\n" + json.dumps({"timestamp": 1, "input_length": value,
                                              "output_length": 3}) + "\n")
    with pytest.raises(TraceError) as info:
        load_trace(f)
    assert info.value.field == "input_length" or "invalid JSON" in str(info.value)
    assert len(info.value.problem) < 200


def test_a_window_holding_one_request_has_no_rate(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text(HEADER + "0.0,10,5\n10.0,10,5\n20.0,10,5\n")
    assert len(load_trace(f, start=5.0, end=15.0)) == 1  # arrives at 5 s after the window start
    with pytest.raises(TraceError, match="no arrival rate"):
        load_trace(f, end=5.0)  # the request at 0 alone: every arrival at one instant
    assert load_trace(f, end=15.0).rate == pytest.approx(0.2)


def test_the_token_bound_is_the_workloads(tmp_path):
    """10,000,000 tokens load; one more is refused, in the loader and in Workload alike."""
    from autotuner.sim.workload import MAX_REQUEST_TOKENS

    f = tmp_path / "t.csv"
    f.write_text(HEADER + f"0.0,{MAX_REQUEST_TOKENS},5\n1.0,5,{MAX_REQUEST_TOKENS}\n")
    wl = load_trace(f)
    assert wl.prompt.max() == MAX_REQUEST_TOKENS == wl.output.max()
    f.write_text(HEADER + f"0.0,{MAX_REQUEST_TOKENS + 1},5\n1.0,5,5\n")
    with pytest.raises(TraceError, match="10,000,000"):
        load_trace(f)
