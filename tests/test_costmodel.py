"""Cost model and catalogue: physical sanity, the closed-form decode contract, KV sizing."""

from __future__ import annotations

import dataclasses
import random

import pytest

from autotuner.sim.costmodel import (
    GEMM_OPS,
    LAYER_OPS,
    PROFILE_OPS,
    CostModel,
    experts_touched,
    gemm_time,
)
from autotuner.sim.hardware import GIB, GPUS, MODELS, UnknownNameError, get_gpu, get_model

KIB = 1024


def cm(model: str = "llama-3-8b", gpu: str = "h100", tp: int = 1) -> CostModel:
    return CostModel(get_model(model), get_gpu(gpu), tp)


def prefill_pairs(chunk: int, prior: int = 0) -> float:
    return chunk * (prior + (chunk + 1) / 2)


# ---------------------------------------------------------------------------------------------
# Catalogue


@pytest.mark.parametrize(
    "name, expected",
    [
        ("h100", "H100-SXM"),
        ("H100-SXM", "H100-SXM"),
        (" h100_sxm ", "H100-SXM"),
        ("A100", "A100-80GB"),
        ("a100-80gb", "A100-80GB"),
        ("h200", "H200"),
        ("B200", "B200"),
    ],
)
def test_gpu_lookup_is_case_insensitive_with_aliases(name, expected):
    assert get_gpu(name).name == expected


@pytest.mark.parametrize(
    "name, expected",
    [
        ("llama-3-8b", "Llama-3-8B"),
        ("Meta-Llama-3-8B", "Llama-3-8B"),
        ("LLAMA-2-7B", "Llama-2-7B"),
        ("llama-2-70b-hf", "Llama-2-70B"),
        ("llama-3-70b", "Llama-3-70B"),
        ("mixtral", "Mixtral-8x7B"),
    ],
)
def test_model_lookup_is_case_insensitive_with_aliases(name, expected):
    assert get_model(name).name == expected


def test_unknown_names_raise_keyerror_listing_the_known_ones():
    with pytest.raises(KeyError) as exc:
        get_gpu("v100")
    assert isinstance(exc.value, UnknownNameError)
    msg = str(exc.value)
    assert "'v100'" in msg and all(name in msg for name in GPUS)
    with pytest.raises(UnknownNameError) as exc:
        get_model("gpt-5")
    assert all(name in str(exc.value) for name in MODELS)


def test_catalogue_entries_are_frozen_and_complete():
    for required in ("A100-80GB", "H100-SXM", "H200", "B200"):
        assert required in GPUS
    for required in ("Llama-2-7B", "Llama-2-70B", "Llama-3-8B", "Llama-3-70B", "Mixtral-8x7B"):
        assert required in MODELS
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_gpu("h100").mem_eff = 1.0  # type: ignore[misc]
    for g in GPUS.values():
        assert 0 < g.compute_eff <= 1 and 0 < g.mem_eff <= 1.2
        assert g.price_per_hour > 0 and g.nvlink_bandwidth > 0
    # Datasheet ordering that the rest of the project relies on.
    assert get_gpu("h200").hbm_bandwidth > get_gpu("h100").hbm_bandwidth
    assert get_gpu("b200").peak_flops > get_gpu("h100").peak_flops > get_gpu("a100").peak_flops


def test_parameter_counts_match_published_sizes():
    assert get_model("llama-2-7b").total_params == pytest.approx(6.74e9, rel=0.01)
    assert get_model("llama-3-8b").total_params == pytest.approx(8.03e9, rel=0.01)
    assert get_model("llama-3-70b").total_params == pytest.approx(70.6e9, rel=0.01)
    mix = get_model("mixtral-8x7b")
    assert mix.total_params == pytest.approx(46.7e9, rel=0.01)
    assert mix.active_params == pytest.approx(12.9e9, rel=0.01)


def test_kv_bytes_per_token():
    assert cm("llama-3-8b").kv_bytes_per_token == 128 * KIB
    assert cm("llama-3-70b", tp=4).kv_bytes_per_token == 320 * KIB
    assert cm("llama-2-7b").kv_bytes_per_token == 512 * KIB


# ---------------------------------------------------------------------------------------------
# KV capacity


def test_kv_capacity_llama3_8b_on_h100():
    c = cm("llama-3-8b", "h100")
    cap = c.kv_capacity_tokens()
    # 0.9 * 79.6 GiB - 14.96 GiB weights - 1 GiB reserve = 55.7 GiB at 128 KiB per token.
    expected = (0.9 * 81559 * 1024**2 - 8.03e9 * 2 - GIB) / (128 * KIB)
    assert cap == pytest.approx(expected, rel=0.01)
    assert 440_000 < cap < 460_000
    assert cap % 16 == 0
    assert c.kv_capacity_tokens(block_size=32) % 32 == 0
    assert c.kv_capacity_tokens(0.5) < cap
    assert cm("llama-3-8b", "h200").kv_capacity_tokens() > 1.9 * cap


def test_kv_capacity_grows_with_tp_and_counts_replicated_kv_heads():
    one = cm("llama-3-70b", "h100", tp=2).kv_capacity_tokens()
    four = cm("llama-3-70b", "h100", tp=4).kv_capacity_tokens()
    assert four > 2 * one
    # tp=8 splits the 8 KV heads one per GPU; at tp=16 each head lives on two GPUs, so one GPU
    # holds 1/8 (not 1/16) of a token's KV and 16 GPUs together hold it twice.
    tp8 = CostModel(get_model("llama-3-70b"), get_gpu("h100"), 8)
    tp16 = CostModel(get_model("llama-3-70b"), get_gpu("h100"), 16)
    assert tp8._kv_bytes_per_token_gpu * 8 == tp8.kv_bytes_per_token
    assert tp16._kv_bytes_per_token_gpu * 16 == 2 * tp16.kv_bytes_per_token
    assert tp16.kv_capacity_tokens() < 1.2 * tp8.kv_capacity_tokens()


def test_weights_that_do_not_fit_raise_a_clear_valueerror():
    with pytest.raises(ValueError, match=r"Llama-3-70B does not fit on 1 x A100-80GB"):
        cm("llama-3-70b", "a100", tp=1).kv_capacity_tokens()
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        cm().kv_capacity_tokens(1.5)
    with pytest.raises(ValueError, match="not divisible"):
        cm("llama-3-8b", "h100", tp=3)


# ---------------------------------------------------------------------------------------------
# Iteration time


@pytest.mark.parametrize("model", list(MODELS))
def test_time_is_monotone_in_tokens_and_context(model):
    c = cm(model, "h100", tp=8 if "70" in model else 1)
    prev = 0.0
    for chunk in (1, 2, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192):
        t = c.iteration_time(chunk, prefill_pairs(chunk), 0, 0)
        assert t > prev
        prev = t
    prev = 0.0
    for n in (1, 2, 4, 16, 64, 256, 1024):
        t = c.iteration_time(0, 0.0, n, n * 500)
        assert t > prev
        prev = t
    prev = 0.0
    for ctx in (0, 1, 100, 10_000, 1_000_000):
        t = c.iteration_time(64, prefill_pairs(64, 100), 32, ctx)
        assert t > prev
        prev = t
    # More prior context makes the same chunk slower.
    assert c.iteration_time(512, prefill_pairs(512, 8000), 0, 0) > c.iteration_time(
        512, prefill_pairs(512), 0, 0
    )


def test_empty_iteration_takes_no_time():
    assert cm().iteration_time(0, 0.0, 0, 0) == 0.0


@pytest.mark.parametrize(
    "model, gpu, tp",
    [
        ("llama-3-8b", "h100", 1),
        ("llama-2-70b", "a100", 4),
        ("mixtral", "h200", 2),
        ("llama-2-7b", "b200", 1),
    ],
)
def test_decode_coeffs_are_exact(model, gpu, tp):
    c = cm(model, gpu, tp)
    rng = random.Random(7)
    for n in (1, 2, 3, 17, 64, 255, 1024):
        a, b = c.decode_coeffs(n)
        assert a > 0 and b > 0
        for ctx in [0, 1, n * 1000, 10**7] + [rng.randrange(0, 10**6) for _ in range(20)]:
            assert c.iteration_time(0, 0.0, n, ctx) == a + b * ctx


def test_decode_is_memory_bound_and_reads_the_weights_once():
    c = cm("llama-3-8b", "h100")
    g = get_gpu("h100")
    t1 = c.iteration_time(0, 0.0, 1, 0)
    weights_s = get_model("llama-3-8b").weight_bytes / (g.hbm_bandwidth * g.mem_eff)
    assert weights_s < t1 < 1.3 * weights_s
    # Batch of 32 decodes costs barely more than one (the weights dominate).
    assert c.iteration_time(0, 0.0, 32, 0) < 1.1 * t1
    # b of decode_coeffs: all layers' KV per token read once at the achieved bandwidth.
    _, b = c.decode_coeffs(8)
    assert b == pytest.approx(128 * KIB / (g.hbm_bandwidth * g.mem_eff))


def test_prefill_is_compute_bound_at_large_chunks():
    c = cm("llama-3-8b", "h100")
    g = get_gpu("h100")
    T = 8192
    t = c.iteration_time(T, prefill_pairs(T), 0, 0)
    flops = 2 * get_model("llama-3-8b").active_params * T
    ideal = flops / (g.peak_flops * g.compute_eff)
    assert ideal < t < 1.6 * ideal  # plus attention, elementwise, fixed costs


def test_tensor_parallel_reduces_time():
    for model in ("llama-3-70b", "llama-2-70b"):
        times = [
            cm(model, "h100", tp).iteration_time(2048, prefill_pairs(2048), 64, 64 * 2000)
            for tp in (2, 4, 8)
        ]
        assert times[0] > times[1] > times[2]
    d1 = cm("llama-3-8b", "h100", 1).iteration_time(0, 0.0, 16, 16 * 1000)
    d2 = cm("llama-3-8b", "h100", 2).iteration_time(0, 0.0, 16, 16 * 1000)
    assert d2 < d1 < 2.2 * d2  # less than linear: all-reduce and fixed costs


def test_moe_is_cheaper_per_token_than_a_dense_model_of_its_total_size():
    mix = get_model("mixtral")
    dense = dataclasses.replace(
        mix, name="dense-47b", num_experts=1, experts_per_token=1, intermediate=8 * 14336
    )
    assert dense.total_params == pytest.approx(mix.total_params, rel=0.01)
    for tokens in (1, 8, 64, 512, 4096):
        t_moe = CostModel(mix, get_gpu("h100"), 2).iteration_time(
            tokens, prefill_pairs(tokens), 0, 0
        )
        t_dense = CostModel(dense, get_gpu("h100"), 2).iteration_time(
            tokens, prefill_pairs(tokens), 0, 0
        )
        assert t_moe < t_dense
    # A one-token decode touches 2 of 8 experts; a big batch touches them all.
    assert experts_touched(8, 2, 1) == pytest.approx(2.0)
    assert experts_touched(8, 2, 256) == pytest.approx(8.0)
    c = CostModel(mix, get_gpu("h100"), 2)
    assert c.iteration_time(0, 0.0, 64, 0) > 2 * c.iteration_time(0, 0.0, 1, 0)


def test_op_times_cover_the_profiled_ops_and_match_the_iteration():
    c = cm("llama-3-8b", "h100")
    ops = c.op_times(1024)
    assert set(ops) == set(PROFILE_OPS)
    assert all(v > 0 for v in ops.values())
    g = get_gpu("h100")
    assert g.roofline_knee == 0 and 1024 % g.gemm_tile_m == 0  # a sharp max, no padding here
    for name, (f, b) in c.op_work(1024).items():
        if name in GEMM_OPS:
            ramp = f / 1024 * g.gemm_ramp_rows
            expect = max(
                (f + ramp) / (g.peak_flops * g.compute_eff), b / (g.hbm_bandwidth * g.mem_eff)
            )
            expect += g.op_overhead_s
        else:
            expect = b / (g.hbm_bandwidth * g.elementwise_eff)
        assert ops[name] == pytest.approx(expect)
    # A prefill iteration = layers x the profiled layer ops + attention, comm, fixed and LM head.
    layers = get_model("llama-3-8b").num_layers
    for T in (1, 256, 4096):
        layer_sum = sum(c.op_times(T)[op] for op in LAYER_OPS)
        t = c.iteration_time(T, prefill_pairs(T), 0, 0)
        assert layers * layer_sum < t < 1.35 * layers * layer_sum + 1e-3


def test_gemm_time_quantises_tiles_ramps_and_bends_the_knee():
    # Within one tile no padding; above it whole tiles: 129 rows cost as much compute as 256.
    assert gemm_time(1.0, 0.0, 0.0, 100, 128, 0.0, 0.0) == 100
    assert gemm_time(1.0, 0.0, 0.0, 129, 128, 0.0, 0.0) == 256
    assert gemm_time(1.0, 0.0, 0.0, 256, 128, 0.0, 0.0) == 256
    assert gemm_time(1.0, 0.0, 0.0, 129, 0, 0.0, 0.0) == 129  # tile 0: no quantisation
    # The ramp adds rows of compute; the memory side is untouched by it.
    assert gemm_time(1.0, 0.0, 0.0, 10, 128, 30.0, 0.0) == 40
    assert gemm_time(0.0, 5.0, 0.5, 10, 128, 30.0, 0.0) == 10
    # Knee: a power mean, between the max and the sum, symmetric, equal parts give 2**(1/p).
    soft = gemm_time(1.0, 100.0, 0.0, 100, 0, 0.0, 3.0)
    assert soft == pytest.approx(100 * 2 ** (1 / 3))
    assert 100 < gemm_time(1.0, 50.0, 0.0, 100, 0, 0.0, 3.0) < 150
    assert gemm_time(1.0, 50.0, 0.0, 100, 0, 0.0, 3.0) == pytest.approx(
        gemm_time(0.5, 100.0, 0.0, 100, 0, 0.0, 3.0)
    )
    # Tiny memory next to compute: the soft knee converges to the max without overflow.
    assert gemm_time(1.0, 1e-300, 0.0, 1e-3, 0, 0.0, 64.0) == pytest.approx(1e-3)


def test_capacity_band_is_slower_than_a_bare_roofline():
    """The regime the shape terms exist for: a decode batch of a few hundred requests costs
    more than max(compute, weights) would say (the profiles measured 10-37 % more)."""
    for gpu in ("a100", "h100"):
        g = get_gpu(gpu)
        bare = dataclasses.replace(g, gemm_tile_m=0, gemm_ramp_rows=0.0, roofline_knee=0.0)
        for n in (200, 400, 800):
            shaped = CostModel(get_model("llama-3-8b"), g).iteration_time(0, 0.0, n, 0)
            roofline = CostModel(get_model("llama-3-8b"), bare).iteration_time(0, 0.0, n, 0)
            assert shaped > 1.03 * roofline, (gpu, n)


def test_all_reduce_appears_only_under_tp():
    m, g = get_model("llama-3-8b"), get_gpu("h100")
    no_comm = dataclasses.replace(g, allreduce_latency_s=0.0, nvlink_bandwidth=1e30)
    t_real = CostModel(m, g, 2).iteration_time(0, 0.0, 8, 8000)
    t_free = CostModel(m, no_comm, 2).iteration_time(0, 0.0, 8, 8000)
    assert t_real - t_free == pytest.approx(m.num_layers * 2 * g.allreduce_latency_s, rel=0.05)
    assert CostModel(m, g, 1).iteration_time(0, 0.0, 8, 8000) == CostModel(
        m, no_comm, 1
    ).iteration_time(0, 0.0, 8, 8000)


def test_iteration_time_is_cheap():
    import time

    c = cm("mixtral", "h100", 2)
    start = time.perf_counter()
    for i in range(20_000):
        c.iteration_time(256, 256 * 300.0, i % 200, 1000 * (i % 200))
    per_call = (time.perf_counter() - start) / 20_000
    assert per_call < 50e-6  # a few microseconds in practice; generous for slow CI machines


@pytest.mark.parametrize("gpu", ["a100", "h100"])
def test_inlined_layer_gemms_equal_gemm_time(gpu):
    """``_fixed_part`` inlines ``gemm_time`` for speed; the two must not drift apart. Against
    the same model on a GPU with unbounded FLOPs and bandwidth (so only fixed costs remain),
    the difference is exactly the layer GEMMs, the LM head and the bandwidth-bound rest."""
    g = get_gpu(gpu)
    c = CostModel(get_model("llama-3-8b"), g, 1)
    free = CostModel(
        get_model("llama-3-8b"), dataclasses.replace(g, peak_flops=1e40, hbm_bandwidth=1e40), 1
    )
    shape = (g.gemm_tile_m, g.gemm_ramp_rows, g.roofline_knee)
    layers = c.model.num_layers
    for T in (1, 7, 64, 65, 129, 300, 1000, 4097):
        gemms = layers * sum(gemm_time(cc, w, a, T, *shape) for cc, w, a in c._lin_layer)
        gemms += gemm_time(*c._lm_head, T, *shape)
        rest = layers * (c._ew_per_token + c._attn_qo_per_token) * T
        rest += (c._emb_per_token + c._final_norm_per_token) * T
        diff = c._fixed_part(T, 0, 0.0, T) - free._fixed_part(T, 0, 0.0, T)
        assert diff == pytest.approx(gemms + rest, rel=1e-9)
