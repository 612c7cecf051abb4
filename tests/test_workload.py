"""Built-in workload scenarios: fitted statistics, determinism, rate handling, the Workload type."""

from __future__ import annotations

import time

import numpy as np
import pytest

from autotuner.sim import fitted
from autotuner.sim.workload import (
    MULTITURN_WARMUP_S,
    SCENARIOS,
    UnknownWorkloadError,
    Workload,
    _draw_sessions,
    make_workload,
)

TS = fitted.TRACE_STATS


def block_reuse(wl: Workload) -> float:
    """Share of prefix blocks whose id appeared earlier (the trace's 36.6 % figure)."""
    seen: set[int] = set()
    repeated = total = 0
    for ids in wl.prefix or ():
        for b in ids:
            total += 1
            repeated += b in seen
            seen.add(b)
    return repeated / total


def gap_cv(wl: Workload) -> float:
    g = np.diff(wl.arrival)
    return float(g.std() / g.mean())


def test_scenarios_listed_with_defaults():
    assert {"chat", "summarize", "multiturn", "bursty", "mixed"} <= set(SCENARIOS)
    for name, sc in SCENARIOS.items():
        assert sc.name == name and sc.description and sc.default_rate > 0
    assert SCENARIOS["chat"].default_rate == pytest.approx(8.0)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_scenario_is_valid(name):
    wl = make_workload(name, 3000, seed=3)
    assert len(wl) == 3000
    assert wl.arrival.dtype == np.float64 and wl.prompt.dtype == np.int64
    assert wl.output.dtype == np.int64
    assert wl.arrival[0] >= 0 and np.all(np.diff(wl.arrival) >= 0)
    assert wl.prompt.min() >= 1 and wl.output.min() >= 1
    # default rate, within sampling noise (multiturn sessions are clumpy)
    assert wl.rate == pytest.approx(SCENARIOS[name].default_rate, rel=0.12)
    if wl.prefix is not None:
        assert len(wl.prefix) == len(wl)
        blocks = -(-wl.prompt // wl.prefix_block_tokens)
        assert [len(p) for p in wl.prefix] == blocks.tolist()
        assert all(isinstance(b, int) for p in wl.prefix[:50] for b in p)


def test_chat_matches_azure_conversation_trace():
    wl = make_workload("chat", 60_000, seed=1)
    ref = TS["azure_conv_2023"]
    assert ref["prompt"]["mean"] == pytest.approx(1155, abs=1)
    assert wl.prompt.mean() == pytest.approx(ref["prompt"]["mean"], rel=0.03)
    assert np.median(wl.prompt) == pytest.approx(ref["prompt"]["median"], rel=0.03)
    assert wl.output.mean() == pytest.approx(ref["output"]["mean"], rel=0.03)
    assert np.median(wl.output) == pytest.approx(ref["output"]["median"], rel=0.05)
    assert gap_cv(wl) == pytest.approx(1.0, abs=0.05)  # Poisson


def test_summarize_keeps_the_negative_prompt_output_correlation():
    wl = make_workload("summarize", 60_000, seed=1)
    ref = TS["arxiv_summarization_lengths"]
    assert wl.prompt.mean() == pytest.approx(ref["prompt"]["mean"], rel=0.03)
    assert np.median(wl.prompt) == pytest.approx(ref["prompt"]["median"], rel=0.03)
    assert wl.output.mean() == pytest.approx(ref["output"]["mean"], rel=0.05)
    assert np.median(wl.output) == pytest.approx(ref["output"]["median"], rel=0.06)
    corr = np.corrcoef(np.log(wl.prompt), np.log(wl.output))[0, 1]
    assert corr == pytest.approx(ref["log_corr"], abs=0.1)  # -0.48 in the trace
    assert wl.prompt.mean() > 2 * make_workload("chat", 5000).prompt.mean()


def test_multiturn_matches_mooncake_sessions():
    ref = TS["mooncake_conversation"]
    # the trace's own scale: its request count at its rate (one hour)
    reuse, pmean, pmed, omean = [], [], [], []
    for seed in range(3):
        wl = make_workload("multiturn", ref["requests"], rate=ref["rate"], seed=seed)
        reuse.append(block_reuse(wl))
        pmean.append(wl.prompt.mean())
        pmed.append(np.median(wl.prompt))
        omean.append(wl.output.mean())
    assert 0.25 < np.mean(reuse) < 0.5  # trace: 0.366
    assert np.mean(pmean) == pytest.approx(ref["prompt"]["mean"], rel=0.1)
    assert np.mean(pmed) == pytest.approx(ref["prompt"]["median"], rel=0.2)
    assert np.mean(omean) == pytest.approx(ref["output"]["mean"], rel=0.05)


def test_multiturn_turns_extend_earlier_turns():
    wl = make_workload("multiturn", 4000, seed=5)
    assert wl.prefix is not None
    # every request starts with the shared system block(s)
    sys_blocks = fitted.MULTITURN["system_blocks"]
    assert len({p[:sys_blocks] for p in wl.prefix}) == fitted.MULTITURN["system_prompts"]
    # a request extends some earlier request's prefix by more than the system block
    starts = {}
    extends = 0
    for p in wl.prefix:
        for k in range(len(p), sys_blocks, -1):
            if p[:k] in starts:
                extends += 1
                break
        for k in range(1, len(p) + 1):
            starts[p[:k]] = True
    share = extends / len(wl)
    assert 0.2 < share < 0.6  # trace: 4658 of 12031 requests continue a conversation


def test_multiturn_longer_run_of_a_seed_continues_the_shorter_one():
    # The length check (search_capacity_settled) probes a run twice as long of the same seed: it
    # must be this run continued, not a fresh sample of heavy sessions.
    long_ = make_workload("multiturn", 12_000, seed=1005)
    for n in (1, 3000, 6000):
        short = make_workload("multiturn", n, seed=1005)
        assert short == long_.head(n)
    assert make_workload("multiturn", 3000, seed=1005, rate=4.0) == make_workload(
        "multiturn", 6000, seed=1005, rate=4.0).head(3000)


@pytest.mark.parametrize("shares", [None, {"chat": 0.5, "bursty": 0.3, "summarize": 0.2}])
def test_mixed_longer_run_of_a_seed_continues_the_shorter_one(shares):
    opts = {} if shares is None else {"shares": shares}
    long_ = make_workload("mixed", 20_000, seed=1003, **opts)
    for n in (1, 5000, 10_000):  # past the 4,096-request chunks of the renewal classes
        assert make_workload("mixed", n, seed=1003, **opts) == long_.head(n)


def test_multiturn_warmup_outlasts_the_sessions():
    # A run opens with every session in progress that a window of a stationary stream would
    # hold: turns arriving more than the warm-up after their session's start are lost from the
    # run's first hours (with a 30 min warm-up, 2.9 % of turns, the longest histories).
    d = _draw_sessions(np.random.default_rng(0), 200_000, 1.0)
    turns = d["turns"]
    first = np.concatenate(([0], np.cumsum(turns)[:-1]))
    session = np.repeat(np.arange(len(turns)), turns)
    gap = np.where(np.arange(len(session)) == first[session], 0.0, d["think"])
    csum = np.cumsum(gap)
    age = csum - csum[first[session]]
    assert np.mean(age > 1800.0) > 0.02  # why 30 minutes was too short
    assert np.mean(age > MULTITURN_WARMUP_S) < 1e-4


def test_bursty_cv():
    wl = make_workload("bursty", 40_000, seed=2)
    assert gap_cv(wl) >= 3.0
    assert gap_cv(make_workload("bursty", 40_000, seed=2, cv=6.0)) > gap_cv(wl)
    calm = make_workload("bursty", 40_000, seed=2, cv=1.0)
    assert gap_cv(calm) == pytest.approx(1.0, abs=0.05)
    assert wl.prompt.mean() == pytest.approx(TS["azure_conv_2023"]["prompt"]["mean"], rel=0.03)


def test_mixed_interleaves_classes():
    wl = make_workload("mixed", 20_000, seed=4)
    assert wl.prefix is not None
    # chat prompts are short, summaries ~2.6k, multiturn turns long: all three present
    assert (wl.prompt > 30_000).any() and (wl.prompt < 300).any()
    assert 0.05 < block_reuse(wl) < 0.4
    chat_only = make_workload("mixed", 5000, seed=4, shares={"chat": 1.0})
    assert block_reuse(chat_only) == 0.0  # one-off requests share nothing
    with pytest.raises(ValueError):
        make_workload("mixed", 10, shares={"video": 1.0})


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_deterministic_per_seed(name):
    a = make_workload(name, 2000, seed=11)
    b = make_workload(name, 2000, seed=11)
    c = make_workload(name, 2000, seed=12)
    assert a == b
    assert a.arrival.tobytes() == b.arrival.tobytes()
    assert a.prompt.tobytes() == b.prompt.tobytes()
    assert a.prefix == b.prefix
    assert not np.array_equal(a.prompt, c.prompt)
    assert not np.array_equal(a.arrival, c.arrival)


def test_rate_argument_sets_the_load():
    wl = make_workload("chat", 20_000, rate=20.0, seed=0)
    assert wl.rate == pytest.approx(20.0, rel=0.03)
    lo = make_workload("chat", 20_000, rate=2.0, seed=0)
    # same seed: the same lengths, arrivals scaled
    assert np.array_equal(lo.prompt, wl.prompt)


@pytest.mark.parametrize("name", ["chat", "multiturn"])
def test_with_rate_is_an_exact_paired_rescale(name):
    wl = make_workload(name, 5000, seed=0)
    for rate in (0.37, 3.0, 17.5, 250.0):
        w2 = wl.with_rate(rate)
        assert w2.rate == pytest.approx(rate, rel=1e-12)
        assert np.array_equal(w2.prompt, wl.prompt) and np.array_equal(w2.output, wl.output)
        assert w2.prefix is wl.prefix
        assert np.all(np.diff(w2.arrival) >= 0) and w2.arrival[0] >= 0
        factor = wl.rate / rate
        np.testing.assert_allclose(w2.arrival, wl.arrival * factor, rtol=1e-15)
        # gaps keep their proportions
        g1, g2 = np.diff(wl.arrival), np.diff(w2.arrival)
        np.testing.assert_allclose(g2, g1 * factor, rtol=1e-9, atol=1e-12)
    # monotone in rate: a higher rate never delays any arrival
    slow, fast = wl.with_rate(2.0), wl.with_rate(4.0)
    assert np.all(fast.arrival <= slow.arrival)
    with pytest.raises(ValueError):
        wl.with_rate(0.0)
    with pytest.raises(ValueError):
        wl.with_rate(float("nan"))


def test_head_and_len():
    wl = make_workload("multiturn", 500, seed=0)
    h = wl.head(120)
    assert len(h) == 120
    assert np.array_equal(h.arrival, wl.arrival[:120])
    assert h.prefix == wl.prefix[:120]
    assert len(wl.head(10_000)) == 500


def test_workload_is_immutable_and_validated():
    wl = make_workload("chat", 100, seed=0)
    with pytest.raises(ValueError):
        wl.arrival[0] = 5.0
    with pytest.raises(ValueError):
        Workload("x", np.array([1.0, 0.5]), np.array([1, 1]), np.array([1, 1]), None)
    with pytest.raises(ValueError):
        Workload("x", np.array([0.0, 1.0]), np.array([0, 1]), np.array([1, 1]), None)
    with pytest.raises(ValueError):
        Workload("x", np.array([0.0, 1.0]), np.array([3, 1]), np.array([1, 1]), ((1,),))
    ok = Workload("x", [0.0, 1.0], [3, 1], [2, 1], ((1,), ()))
    assert ok.rate == pytest.approx(2.0)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError) as info:
        make_workload("chatt", 10)
    assert isinstance(info.value, UnknownWorkloadError)
    for name in SCENARIOS:
        assert name in str(info.value)
    with pytest.raises(TypeError):
        make_workload("chat", 10, cv=3.0)  # cv belongs to bursty
    with pytest.raises(ValueError):
        make_workload("chat", 0)
    with pytest.raises(ValueError):
        make_workload("chat", 10, rate=-1.0)


def test_generation_is_fast():
    for name in SCENARIOS:
        make_workload(name, 1000, seed=0)  # warm
        t0 = time.perf_counter()
        wl = make_workload(name, 100_000, seed=0)
        elapsed = time.perf_counter() - t0
        assert len(wl) == 100_000
        assert elapsed < 2.0, f"{name}: {elapsed:.2f} s for 100k requests"


def test_fitted_figures_are_small_and_consistent():
    from pathlib import Path

    assert Path(fitted.__file__).stat().st_size < 16_000
    for table in (fitted.CHAT, fitted.SUMMARIZE):
        assert len(table["prompt_q"]) == len(fitted.MARGINAL_LEVELS)
        assert all(len(row) == len(fitted.COND_LEVELS) for row in table["output_q"])
        assert list(table["prompt_q"]) == sorted(table["prompt_q"])
    assert sum(fitted.MULTITURN["turns_pmf"]) == pytest.approx(1.0, abs=1e-3)


def test_fitted_figures_reproduce_from_the_traces():
    """fitted.py is exactly what scripts/fit_workloads.py derives from the shared traces."""
    import importlib.util
    import os
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = os.environ.get("AUTOTUNER_SHARED_DATA")
    traces = (Path(env) if env else repo / ".." / "shared" / "data") / "traces"
    if not (traces / "mooncake_conversation.jsonl").is_file():
        pytest.skip(f"shared traces absent at {traces} (set AUTOTUNER_SHARED_DATA)")
    script = repo / "scripts" / "fit_workloads.py"
    if not script.is_file():
        pytest.skip(f"{script} absent (not a checkout)")
    spec = importlib.util.spec_from_file_location("fit_workloads", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text, _ = mod.render(traces)
    assert text == Path(fitted.__file__).read_text()


def test_request_counts_are_bounded_before_anything_is_allocated():
    """10^12 requests used to try a multi-terabyte allocation; it is refused by the bound."""
    from autotuner.sim.workload import MAX_REQUESTS

    with pytest.raises(ValueError, match="between 1 and 1,000,000"):
        make_workload("chat", 10**12)
    with pytest.raises(ValueError, match="between 1"):
        make_workload("chat", MAX_REQUESTS + 1)
    with pytest.raises(ValueError, match="between 1"):
        make_workload("chat", 0)


@pytest.mark.parametrize("prompt", [2**63, 2**70, 10**12])
def test_workload_refuses_token_counts_beyond_the_bound(prompt):
    with pytest.raises(ValueError, match="64 bits|at most 10,000,000|>= 1"):
        Workload("w", np.array([0.0, 1.0]), [prompt, 5], np.array([5, 5]), None)
