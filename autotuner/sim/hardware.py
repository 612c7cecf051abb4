"""The GPU and model catalogue the cost model reads.

Published datasheet figures plus a few efficiency constants per GPU. The constants are the only
fitted numbers: `autotuner calibrate` re-fits them against a measured operator profile and prints
them in the form used below, so a user with their own measurements can paste them into a
`dataclasses.replace(get_gpu("h100"), ...)` call.

Units: FLOP/s, bytes/s, bytes and seconds throughout, so the cost model never converts.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


class UnknownNameError(KeyError):
    """A GPU or model name that is not in the catalogue.

    Subclasses KeyError so dictionary-style callers keep working; ``str()`` gives the message
    itself (KeyError would otherwise print it quoted).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class GPU:
    """One accelerator type and the constants the roofline needs for it.

    The efficiency constants are what one replica of the profiled serving stack achieves, not the
    silicon's limit: dense GEMMs reach ``compute_eff`` of peak, weight and KV streaming
    ``mem_eff`` of HBM bandwidth, elementwise kernels ``ew_mem_eff`` of it, and each linear
    layer's GEMM costs ``op_overhead_s`` on top (launch, tail wave). Three terms shape a GEMM
    between its memory-bound and compute-bound regimes (see ``costmodel.gemm_time``): above one
    tile of ``gemm_tile_m`` rows the batch is computed in whole tiles (tile quantisation), every
    GEMM computes ``gemm_ramp_rows`` rows' worth on top (pipeline fill and drain), and near the
    ridge compute and weight streaming overlap imperfectly: the two times combine as a power mean
    of order ``roofline_knee`` (0: a sharp max). ``layer_overhead_s`` is the per-layer cost of
    what the operator profile does not see (attention kernel launches, KV-cache writes); it is
    an estimate, not fitted, since no public profile here isolates it.
    """

    name: str
    peak_flops: float  # dense bf16 FLOP/s (no sparsity)
    hbm_bandwidth: float  # bytes/s
    memory_bytes: int  # usable device memory as the driver reports it
    nvlink_bandwidth: float  # bytes/s per direction per GPU, for tensor-parallel all-reduce
    allreduce_latency_s: float  # fixed cost of one NCCL all-reduce inside a node
    price_per_hour: float  # USD per GPU-hour, typical on-demand cloud price (see GPUS below)
    compute_eff: float
    mem_eff: float
    op_overhead_s: float
    layer_overhead_s: float
    ew_mem_eff: float = 0.0  # 0: the same as mem_eff
    gemm_tile_m: int = 0  # 0: no tile quantisation
    gemm_ramp_rows: float = 0.0
    roofline_knee: float = 0.0  # 0: max(compute, memory)
    aliases: tuple[str, ...] = ()

    @property
    def elementwise_eff(self) -> float:
        return self.ew_mem_eff or self.mem_eff


@dataclass(frozen=True)
class Model:
    """A decoder-only transformer's shape: everything the cost model and KV sizing need.

    Mixture-of-experts models set ``num_experts`` > 1 and ``experts_per_token`` (top-k); then
    ``intermediate`` is one expert's MLP width.
    """

    name: str
    num_layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    dtype_bytes: int = 2
    gated_mlp: bool = True
    num_experts: int = 1
    experts_per_token: int = 1
    aliases: tuple[str, ...] = ()

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    @property
    def attn_params_per_layer(self) -> int:
        """QKV and output projections."""
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        return self.hidden * (q + 2 * kv) + q * self.hidden

    @property
    def expert_params(self) -> int:
        """One MLP (one expert for MoE): up (and gate) plus down."""
        return (3 if self.gated_mlp else 2) * self.hidden * self.intermediate

    @property
    def router_params_per_layer(self) -> int:
        return self.hidden * self.num_experts if self.is_moe else 0

    @property
    def total_params(self) -> int:
        per_layer = (
            self.attn_params_per_layer
            + self.num_experts * self.expert_params
            + self.router_params_per_layer
            + 2 * self.hidden  # two RMSNorm weights
        )
        # Untied input embedding and LM head (true for every model listed here).
        return self.num_layers * per_layer + 2 * self.vocab * self.hidden + self.hidden

    @property
    def active_params(self) -> int:
        """Parameters one token touches: top-k experts instead of all of them."""
        per_layer = (
            self.attn_params_per_layer
            + self.experts_per_token * self.expert_params
            + self.router_params_per_layer
            + 2 * self.hidden
        )
        return self.num_layers * per_layer + 2 * self.vocab * self.hidden + self.hidden

    @property
    def weight_bytes(self) -> int:
        return self.total_params * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of all KV heads in all layers, for one token."""
        return 2 * self.num_layers * self.kv_heads * self.head_dim * self.dtype_bytes


# Datasheet figures: NVIDIA A100, H100, H200 and HGX B200 datasheets (dense, i.e. half the
# "with sparsity" numbers). Memory is what nvidia-smi reports (e.g. 81559 MiB on an H100 SXM).
# NVLink bandwidth is per direction (A100 NVLink3 600 GB/s, H100/H200 NVLink4 900 GB/s,
# B200 NVLink5 1.8 TB/s, all quoted bidirectional). All-reduce latency and the ~75 % bus
# efficiency the cost model applies come from Vidur's H100 DGX all_reduce profile (about 25 us
# for small messages; its "size" column read as bytes).
#
# Prices: approximate 2025 on-demand list prices per GPU-hour at specialised GPU clouds
# (Lambda, RunPod, CoreWeave list A100 80GB SXM near $1.8, H100 SXM near $3, B200 near $5;
# H200 sits between H100 and B200). Hyperscaler on-demand prices are 1.5-3x higher. These only
# scale the cost-per-token metric; override them with dataclasses.replace for your own contract.
#
# Efficiency constants: fitted with `autotuner calibrate` on Vidur's operator profiles
# (H100: Llama-2-7B and Llama-2-70B; A100: Llama-3-8B and Llama-3-70B), one set per GPU shared
# by all models; reproduce with `autotuner calibrate --profile A --profile B` on both files of
# a GPU. With them the per-layer operator sum is within 3.1-4.6 % MAPE of each profile, and
# within 8.3 % in every band of iteration size (65-1,024 tokens: 4.9-6.8 %). layer_overhead_s is
# an estimate (see GPU). H200 and B200 have no public profile here: they reuse the H100
# constants (same software stack, similar memory system), an assumption, not a measurement.
_H100_EFF = dict(
    compute_eff=0.725,
    mem_eff=0.879,
    ew_mem_eff=1.134,
    op_overhead_s=9.36e-06,
    gemm_ramp_rows=51.2,
    roofline_knee=0.0,
    gemm_tile_m=128,
    layer_overhead_s=10e-6,
)

GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        GPU(
            name="A100-80GB",
            peak_flops=312e12,
            hbm_bandwidth=2.039e12,
            memory_bytes=80 * GIB,
            nvlink_bandwidth=300e9,
            allreduce_latency_s=30e-6,
            price_per_hour=1.80,
            compute_eff=0.723,
            mem_eff=0.714,
            ew_mem_eff=0.856,
            op_overhead_s=6.99e-06,
            gemm_ramp_rows=9.5,
            roofline_knee=2.5,
            gemm_tile_m=64,
            layer_overhead_s=12e-6,
            aliases=("a100", "a100-80g", "a100-sxm", "a100-sxm4-80gb", "a100_80gb"),
        ),
        GPU(
            name="H100-SXM",
            peak_flops=989e12,
            hbm_bandwidth=3.35e12,
            memory_bytes=81559 * 1024**2,
            nvlink_bandwidth=450e9,
            allreduce_latency_s=25e-6,
            price_per_hour=3.00,
            aliases=("h100", "h100-80gb", "h100-sxm5", "h100_sxm"),
            **_H100_EFF,
        ),
        GPU(
            name="H200",
            peak_flops=989e12,
            hbm_bandwidth=4.8e12,
            memory_bytes=143771 * 1024**2,
            nvlink_bandwidth=450e9,
            allreduce_latency_s=25e-6,
            price_per_hour=3.80,
            aliases=("h200-sxm", "h200-141gb"),
            **_H100_EFF,
        ),
        GPU(
            name="B200",
            peak_flops=2.25e15,
            hbm_bandwidth=8.0e12,
            memory_bytes=183359 * 1024**2,
            nvlink_bandwidth=900e9,
            allreduce_latency_s=25e-6,
            price_per_hour=5.00,
            aliases=("b200-sxm", "hgx-b200"),
            **_H100_EFF,
        ),
    )
}

# Shapes from each model's Hugging Face config.json.
MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        Model(
            name="Llama-2-7B",
            num_layers=32,
            hidden=4096,
            heads=32,
            kv_heads=32,
            head_dim=128,
            intermediate=11008,
            vocab=32000,
            aliases=("llama2-7b", "meta-llama/llama-2-7b-hf", "llama-2-7b-hf"),
        ),
        Model(
            name="Llama-2-70B",
            num_layers=80,
            hidden=8192,
            heads=64,
            kv_heads=8,
            head_dim=128,
            intermediate=28672,
            vocab=32000,
            aliases=("llama2-70b", "meta-llama/llama-2-70b-hf", "llama-2-70b-hf"),
        ),
        Model(
            name="Llama-3-8B",
            num_layers=32,
            hidden=4096,
            heads=32,
            kv_heads=8,
            head_dim=128,
            intermediate=14336,
            vocab=128256,
            aliases=("llama3-8b", "meta-llama-3-8b", "meta-llama/meta-llama-3-8b", "llama-3.1-8b"),
        ),
        Model(
            name="Llama-3-70B",
            num_layers=80,
            hidden=8192,
            heads=64,
            kv_heads=8,
            head_dim=128,
            intermediate=28672,
            vocab=128256,
            aliases=(
                "llama3-70b",
                "meta-llama-3-70b",
                "meta-llama/meta-llama-3-70b",
                "llama-3.1-70b",
            ),
        ),
        Model(
            name="Mixtral-8x7B",
            num_layers=32,
            hidden=4096,
            heads=32,
            kv_heads=8,
            head_dim=128,
            intermediate=14336,
            vocab=32000,
            num_experts=8,
            experts_per_token=2,
            aliases=("mixtral", "mixtral-8x7b-v0.1", "mistralai/mixtral-8x7b-v0.1"),
        ),
    )
}


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def _index(table: dict) -> dict[str, str]:
    idx: dict[str, str] = {}
    for key, item in table.items():
        for alias in (key, *item.aliases):
            idx[_norm(alias)] = key
    return idx


_GPU_INDEX = _index(GPUS)
_MODEL_INDEX = _index(MODELS)


def _lookup(table: dict, index: dict[str, str], name: str, kind: str):
    key = index.get(_norm(str(name)))
    if key is None:
        known = ", ".join(table)
        raise UnknownNameError(
            f"unknown {kind} {name!r}; known {kind}s: {known} (case-insensitive)"
        )
    return table[key]


def get_gpu(name: str) -> GPU:
    """Catalogue lookup by name or alias, case-insensitive ("h100", "H100-SXM", "a100_80gb")."""
    return _lookup(GPUS, _GPU_INDEX, name, "GPU")


def get_model(name: str) -> Model:
    """Catalogue lookup by name or alias, case-insensitive ("llama-3-8b", "Meta-Llama-3-8B")."""
    return _lookup(MODELS, _MODEL_INDEX, name, "model")
