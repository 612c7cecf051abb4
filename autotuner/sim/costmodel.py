"""Iteration-time cost model: a per-operator roofline with per-GPU efficiency constants.

One serving iteration runs every decode plus the chosen prefill chunks through all layers as one
batch of ``T = prefill_tokens + decodes`` tokens. Each operator class is timed from its compute
and its memory traffic, with the work of one GPU, i.e. the replica's work divided by the
tensor-parallel degree where Megatron-style TP splits it. Per layer:

- linear layers (QKV, output projection, MLP up+gate, down): a GEMM of ``T`` rows, ``2*T*K*N/tp``
  FLOPs, bytes = the weight shard plus activations in and out. Weight reads make them
  memory-bound for small batches and compute-bound for large ones; ``gemm_time`` joins the two
  regimes with three measured effects (constants per GPU, see ``hardware.GPU``):

  * tile quantisation: a GEMM kernel computes whole tiles of ``gemm_tile_m`` rows, so above one
    tile the compute is that of ``ceil(T / tile) * tile`` rows (within one tile the library
    picks a narrower kernel, so no padding is charged there);
  * pipeline ramp: every GEMM computes ``gemm_ramp_rows`` rows' worth on top (the software
    pipeline filling and draining, the last partial wave);
  * a soft knee: near the ridge point weight streaming and compute overlap imperfectly, so the
    two times combine as a power mean of order ``roofline_knee``
    (``(c**p + m**p)**(1/p)``; 0 is a sharp ``max``).

  Fitted on Vidur's operator profiles, these take the iterations of 65-1,024 tokens (decode
  batches of hundreds of requests, where capacity is decided) from 10-37 % too fast to within
  about 8 %, without a per-size table. For a mixture of experts, FLOPs come from the top-k
  experts each token uses, but the bytes from the experts the batch touches,
  ``E*(1-(1-k/E)**T)`` in expectation under uniform routing: a small decode batch reads few
  experts, a large prefill all.
- prefill attention: ``4*heads*head_dim*pairs/tp`` FLOPs, where ``pairs`` (query, key) pairs =
  sum over chunks of ``chunk*(prior_context + (chunk+1)/2)`` (causal), plus reading the prior KV.
  The caller passes only the sum of pairs, so the KV read is estimated as one read of the mean
  attended context, ``pairs / prefill_tokens`` tokens (exact, up to half a chunk, for one chunk).
- decode attention: pure KV-cache read, ``decode_context * kv bytes per token per layer``, always
  memory-bound (arithmetic intensity = heads/kv_heads FLOP/byte, far below any GPU's ridge).
  It is linear in the context, which lets ``decode_coeffs`` give the simulator a closed form.
- elementwise (2 RMSNorms, rotary embedding, SiLU*mul, residual add): bytes only, at the
  bandwidth share elementwise kernels reach (``ew_mem_eff``). The profiled implementation runs
  them as several unfused passes, so each moves a fixed multiple of the minimal read+write
  (``ELEMENTWISE_PASSES``, fitted once on all four profiles, GPU-independent).
- tensor-parallel all-reduce, 2 per layer when ``tp > 1`` (after attention and after the MLP):
  ``latency + 2*(tp-1)/tp * T*hidden*dtype / (nvlink_bandwidth * COMM_EFF)`` (ring all-reduce).
- fixed costs: ``op_overhead_s`` per GEMM (launch, tail) and ``layer_overhead_s`` per layer for
  what the operator profile does not see (attention kernel launches, KV-cache writes).
  Elementwise kernels get no fixed cost: fitted per operator, theirs comes out at 0-2 us, and
  charging them one shared constant made their per-operator error several times worse without
  improving the layer total.

Once per iteration: the embedding lookup (T tokens) and the LM head, a GEMM over the tokens that
produce logits: every decode plus one per prefill batch (the caller does not say how many
sequences finish their prompt; vLLM computes logits for the last prompt token only).

Simplifications, each small next to the linear layers at serving batch sizes: no CPU scheduling
or sampling overhead, no overlap between kernels or of communication with compute, attention at
the same compute efficiency as GEMMs, the MoE router GEMM ignored (hidden x experts), uniform
expert routing (tile quantisation applied to the batch, not per expert), no pipeline
parallelism, no quantisation (``dtype_bytes`` covers weights, KV and activations alike). The
constants come from Vidur's operator profiles (``autotuner calibrate``, which prints the error
per band of batch size). What remains is mostly the kernel library's per-shape choices (a single
size can run 20-50 % slower than its neighbours), which no smooth model follows.
"""

from __future__ import annotations

import math

from .hardware import GIB, GPU, Model

# Profiled operator names, in the order Vidur's mlp.csv lists them. "emb" runs once per forward
# pass; the other nine make up one transformer layer.
PROFILE_OPS: tuple[str, ...] = (
    "emb",
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "add",
)
LAYER_OPS: tuple[str, ...] = PROFILE_OPS[1:]
# The linear layers: the only operators charged the fixed ``op_overhead_s``.
GEMM_OPS: frozenset[str] = frozenset(
    ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
)

# Bytes each elementwise operator moves, as a multiple of the minimal read+write, in the profiled
# (PyTorch, unfused) implementation: RMSNorm upcasts to fp32 and reduces in several passes, the
# embedding is vocab-parallel with masking. Fitted on the large-token rows of all four profiles;
# the same on A100 and H100 within about 15 %.
ELEMENTWISE_PASSES: dict[str, float] = {
    "emb": 5.0,
    "norm": 2.6,
    "attn_rope": 1.9,
    "mlp_act": 1.6,
    "add": 1.0,
}

# Share of NVLink bandwidth a ring all-reduce achieves: Vidur's H100 DGX all_reduce profile shows
# a bus bandwidth of 310-365 GB/s on 450 GB/s links for 16-64 MB messages.
COMM_EFF = 0.75

# Memory kept free for activations, CUDA graphs and the NCCL workspace on every GPU (vLLM's
# profiling run for a default 8k-token batch lands near this for 7-70B models).
ACTIVATION_RESERVE_BYTES = 1 * GIB

# Most token (or logit) counts a cost model keeps its per-count sums for: far above any batch.
_MEMO_ENTRIES = 1 << 17


def gemm_time(
    row_s: float,
    weight_s: float,
    act_s: float,
    tokens: float,
    tile: int,
    ramp_rows: float,
    knee: float,
) -> float:
    """Seconds for a GEMM of ``tokens`` rows, without the fixed per-kernel overhead.

    ``row_s``: compute seconds per row; ``weight_s``: seconds to stream the weights once;
    ``act_s``: seconds of activation traffic per row. ``calibrate.Evaluator.predict`` is the same
    formula vectorised over profile rows (a test keeps the two equal).
    """
    rows = math.ceil(tokens / tile) * tile if tile and tokens > tile else tokens
    ct = row_s * (rows + ramp_rows)
    mt = weight_s + act_s * tokens
    if not knee:
        return ct if ct > mt else mt
    hi, lo = (ct, mt) if ct > mt else (mt, ct)
    return hi * (1.0 + (lo / hi) ** knee) ** (1.0 / knee)


def experts_touched(num_experts: int, top_k: int, tokens: int) -> float:
    """Expected distinct experts a batch of ``tokens`` uses under uniform top-k routing."""
    if num_experts <= 1:
        return 1.0
    if tokens <= 0:
        return 0.0
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** tokens)


class CostModel:
    """Iteration time of one replica (a model on ``tp`` GPUs of one type), in seconds.

    Everything that does not depend on the batch is folded into per-token and fixed coefficients
    here, so ``iteration_time`` is a dozen float operations: the simulator calls it once per
    iteration of every replica.
    """

    def __init__(self, model: Model, gpu: GPU, tp: int = 1):
        if not isinstance(tp, int) or tp < 1:
            raise ValueError(f"tensor-parallel degree must be a positive integer, got {tp!r}")
        if model.heads % tp:
            raise ValueError(
                f"{model.name} has {model.heads} attention heads, not divisible by tp={tp}"
            )
        self.model = model
        self.gpu = gpu
        self.tp = tp
        m, g = model, gpu
        d = m.dtype_bytes
        h = m.hidden
        q = m.heads * m.head_dim
        kv_heads_gpu = -(-m.kv_heads // tp)  # KV heads are replicated when tp > kv_heads
        kv = m.kv_heads * m.head_dim
        mlp_in = (2 if m.gated_mlp else 1) * m.intermediate

        self.kv_bytes_per_token: int = m.kv_bytes_per_token
        # One GPU's KV per token (all layers): what its memory has to hold.
        self._kv_bytes_per_token_gpu = 2 * m.num_layers * kv_heads_gpu * m.head_dim * d

        pc = g.peak_flops * g.compute_eff  # achieved FLOP/s
        bm = g.hbm_bandwidth * g.mem_eff  # achieved bytes/s
        bew = g.hbm_bandwidth * g.elementwise_eff  # elementwise kernels' bytes/s
        self._pc, self._bm, self._bew = pc, bm, bew
        ovh = g.op_overhead_s
        self._ovh = ovh
        self._gemm_shape = (g.gemm_tile_m, g.gemm_ramp_rows, g.roofline_knee)
        self._inv_knee = 1.0 / g.roofline_knee if g.roofline_knee else 0.0

        # Linear layers as (seconds/token of compute, fixed seconds of weight read, seconds/token
        # of activation traffic), one GPU's shard: t(T) = max(c*T, w + a*T) + overhead.
        def lin(k_in: float, n_out: float) -> tuple[float, float, float]:
            return (2.0 * k_in * n_out / pc, k_in * n_out * d / bm, (k_in + n_out) * d / bm)

        self._lin_attn = (lin(h, (q + 2 * kv) / tp), lin(q / tp, h))
        self._lin_mlp = (lin(h, mlp_in / tp), lin(m.intermediate / tp, h))
        self._lin_layer = (*self._lin_attn, *self._lin_mlp)
        self._moe = m.is_moe

        # Elementwise: bytes per token, per layer (all of them memory-bound).
        p = ELEMENTWISE_PASSES
        self._ew_bytes = {
            "emb": p["emb"] * 2 * h * d,
            "input_layernorm": p["norm"] * 2 * h * d,
            "attn_rope": p["attn_rope"] * 2 * (m.heads + m.kv_heads) * m.head_dim / tp * d,
            "post_attention_layernorm": p["norm"] * 2 * h * d,
            "mlp_act": p["mlp_act"] * (mlp_in + m.intermediate) / tp * d,
            "add": p["add"] * 3 * h * d,
        }
        self._ew_per_token = (sum(self._ew_bytes.values()) - self._ew_bytes["emb"]) / bew
        self._emb_per_token = self._ew_bytes["emb"] / bew

        # Attention. Prefill: compute per (query, key) pair, KV read per attended token.
        self._attn_pair_s = 4.0 * (m.heads / tp) * m.head_dim / pc
        self._kv_layer_gpu = 2 * kv_heads_gpu * m.head_dim * d  # bytes per token per layer
        self._attn_qo_per_token = 2 * q / tp * d / bm  # read Q, write O
        # Decode: KV read per context token, all layers: the b of decode_coeffs.
        self._b_ctx = m.num_layers * self._kv_layer_gpu / bm

        # All-reduce: two per layer under TP.
        if tp > 1:
            ring = 2.0 * (tp - 1) / tp
            self._ar_fixed = 2 * g.allreduce_latency_s
            self._ar_per_token = 2 * ring * h * d / (g.nvlink_bandwidth * COMM_EFF)
        else:
            self._ar_fixed = 0.0
            self._ar_per_token = 0.0

        # Per layer, independent of the batch: the four GEMMs' fixed cost plus the unprofiled rest.
        self._layer_fixed = 4 * ovh + g.layer_overhead_s + self._ar_fixed
        self._layers = m.num_layers
        # LM head over the tokens that produce logits, plus the final norm.
        self._lm_head = lin(h, m.vocab / tp)
        self._final_norm_per_token = p["norm"] * 2 * h * d / bew
        # What _fixed_part computes from the token count alone (or the logit count alone), kept
        # per count: the same floats, computed once. Bounded: counts are at most a batch's.
        self._layer_by_tokens: dict[int, float] = {}
        self._head_by_logits: dict[int, float] = {}

    # ----------------------------------------------------------------------------------------
    # Memory

    def kv_capacity_tokens(self, gpu_memory_utilization: float = 0.9, block_size: int = 16) -> int:
        """KV-cache tokens the replica holds: whole blocks in what weights leave free."""
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}"
            )
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        budget = self.gpu.memory_bytes * gpu_memory_utilization
        weights = self.model.weight_bytes / self.tp
        free = budget - weights - ACTIVATION_RESERVE_BYTES
        block_bytes = block_size * self._kv_bytes_per_token_gpu
        if free < block_bytes:
            raise ValueError(
                f"{self.model.name} does not fit on {self.tp} x {self.gpu.name}: "
                f"{weights / GIB:.1f} GiB of weights per GPU plus a "
                f"{ACTIVATION_RESERVE_BYTES / GIB:.0f} GiB activation reserve against "
                f"{budget / GIB:.1f} GiB usable at gpu_memory_utilization="
                f"{gpu_memory_utilization}; use a larger tensor-parallel degree or GPU"
            )
        return int(free // block_bytes) * block_size

    # ----------------------------------------------------------------------------------------
    # Time

    def _layer_gemms(self, tokens: int) -> float:
        """One layer's fixed cost, elementwise and all-reduce traffic and GEMMs for a batch of
        ``tokens``: the part of ``_fixed_part``'s layer sum that depends on nothing else."""
        T = float(tokens)
        tile, ramp, knee = self._gemm_shape
        # gemm_time, inlined: every GEMM of the layer shares the batch's padded row count.
        rows = (math.ceil(T / tile) * tile if tile and T > tile else T) + ramp
        layer = self._layer_fixed + (self._ew_per_token + self._ar_per_token) * T
        if self._moe:
            n_exp = experts_touched(self.model.num_experts, self.model.experts_per_token, tokens)
            k = self.model.experts_per_token
            gemms = [*self._lin_attn, *((k * c, w * n_exp, k * a) for c, w, a in self._lin_mlp)]
        else:
            gemms = self._lin_layer
        for c, w, a in gemms:
            ct = c * rows
            mt = w + a * T
            if not knee:
                layer += ct if ct > mt else mt
            elif ct > mt:
                layer += ct * (1.0 + (mt / ct) ** knee) ** self._inv_knee
            else:
                layer += mt * (1.0 + (ct / mt) ** knee) ** self._inv_knee
        return layer

    def _fixed_part(
        self, tokens: int, prefill_tokens: int, prefill_pairs: float, decodes: int
    ) -> float:
        """Everything except the decode KV read (which is ``_b_ctx * decode_context``)."""
        if tokens <= 0:
            return 0.0
        layer = self._layer_by_tokens.get(tokens)
        if layer is None:
            layer = self._layer_gemms(tokens)
            if len(self._layer_by_tokens) < _MEMO_ENTRIES:
                self._layer_by_tokens[tokens] = layer
        if prefill_tokens > 0:
            ct = self._attn_pair_s * prefill_pairs
            mt = (self._kv_layer_gpu * prefill_pairs / prefill_tokens) / self._bm + (
                self._attn_qo_per_token * prefill_tokens
            )
            layer += ct if ct > mt else mt
            logits = decodes + 1
        else:
            logits = decodes
        if decodes > 0:
            layer += self._attn_qo_per_token * decodes
        head = self._head_by_logits.get(logits)
        if head is None:
            c, w, a = self._lm_head
            head = gemm_time(c, w, a, logits, *self._gemm_shape)
            if len(self._head_by_logits) < _MEMO_ENTRIES:
                self._head_by_logits[logits] = head
        once = head + (self._emb_per_token + self._final_norm_per_token) * float(tokens) + self._ovh
        return self._layers * layer + once

    def iteration_time(
        self, prefill_tokens: int, prefill_pairs: float, decodes: int, decode_context: int
    ) -> float:
        """Seconds for one iteration: ``decodes`` decode tokens reading ``decode_context`` KV
        tokens in total, plus ``prefill_tokens`` chunk tokens attending ``prefill_pairs``
        (query, key) pairs. An empty iteration takes 0 s."""
        t = self._fixed_part(prefill_tokens + decodes, prefill_tokens, prefill_pairs, decodes)
        return t + self._b_ctx * decode_context

    def decode_coeffs(self, decodes: int) -> tuple[float, float]:
        """``(a, b)`` with ``iteration_time(0, 0.0, decodes, ctx) == a + b*ctx`` bit for bit."""
        return self._fixed_part(decodes, 0, 0.0, decodes), self._b_ctx

    # ----------------------------------------------------------------------------------------
    # Per-operator view, for calibration against Vidur's mlp.csv

    def op_work(self, num_tokens: int) -> dict[str, tuple[float, float]]:
        """(FLOPs, bytes) one GPU spends on each profiled operator of one layer for
        ``num_tokens`` tokens (dense MLP; for MoE the experts the batch touches)."""
        T = float(num_tokens)
        work = {name: (0.0, per_token * T) for name, per_token in self._ew_bytes.items()}
        for name, (flops, weight_bytes, act_bytes) in self.gemm_work(num_tokens).items():
            work[name] = (flops * T, weight_bytes + act_bytes * T)
        return {name: work[name] for name in PROFILE_OPS}

    def op_times(self, num_tokens: int) -> dict[str, float]:
        """Seconds per profiled operator for one layer (and the embedding), as Vidur measures
        them: ``gemm_time`` plus the fixed overhead for the four GEMMs, bytes at the elementwise
        bandwidth for the rest."""
        tile, ramp, knee = self._gemm_shape
        out = {}
        T = float(num_tokens)
        for name, (flops, weight_bytes, act_bytes) in self.gemm_work(num_tokens).items():
            row_s, weight_s, act_s = flops / self._pc, weight_bytes / self._bm, act_bytes / self._bm
            out[name] = gemm_time(row_s, weight_s, act_s, T, tile, ramp, knee) + self._ovh
        for name, per_token in self._ew_bytes.items():
            out[name] = per_token * num_tokens / self._bew
        return {name: out[name] for name in PROFILE_OPS}

    def gemm_work(self, num_tokens: int) -> dict[str, tuple[float, float, float]]:
        """Per profiled GEMM of one layer: (FLOPs per row, weight bytes, activation bytes per
        row) on one GPU for a batch of ``num_tokens`` (for MoE: top-k experts' FLOPs, the
        touched experts' weights)."""
        m, tp, d = self.model, self.tp, self.model.dtype_bytes
        h = m.hidden
        q = m.heads * m.head_dim
        kv = m.kv_heads * m.head_dim
        mlp_in = (2 if m.gated_mlp else 1) * m.intermediate

        def lin(k_in: float, n_out: float, copies: float = 1.0, k: int = 1):
            return 2.0 * k_in * n_out * k, copies * k_in * n_out * d, (k_in + n_out) * d * k

        if m.is_moe:
            k = m.experts_per_token
            n_exp = experts_touched(m.num_experts, k, num_tokens)
            up = lin(h, mlp_in / tp, n_exp, k)
            down = lin(m.intermediate / tp, h, n_exp, k)
        else:
            up = lin(h, mlp_in / tp)
            down = lin(m.intermediate / tp, h)
        return {
            "attn_pre_proj": lin(h, (q + 2 * kv) / tp),
            "attn_post_proj": lin(q / tp, h),
            "mlp_up_proj": up,
            "mlp_down_proj": down,
        }
