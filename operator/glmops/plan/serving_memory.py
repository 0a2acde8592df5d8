"""Serving memory estimate: weights by format and quantization, KV cache for the context and slots,
and runtime overhead, per GPU and in total; and the GPU count that holds it. Pure Python.

Terms, and why each is what it is:

- Weights. A GGUF file's size is what llama.cpp loads (mmap, then copied to the GPUs), so a size
  recorded by the export wins. Without one, parameters x the average bits per weight of
  llama.cpp's quantization mix (`GGUF_BITS_PER_WEIGHT`), counting the MTP layer, which the
  converter keeps in the GGUF. Merged weights and the base of LoRA adapters are bf16 (the export
  writes bf16 safetensors); the MTP layer is counted when vLLM loads it for speculative decoding.
- KV cache: every slot may hold a full `contextLength` of tokens. GQA (flagship, 96 query and 8
  KV heads of 128) stores K and V per KV head and layer. MLA (Flash) stores one compressed latent
  (kv_lora_rank + rope dims) per layer in vLLM; llama.cpp's deepseek2 code keeps the latent as K
  and a kv_lora_rank-wide V beside it, which is what is counted for it. f16/bf16 elements.
- Sharding. vLLM splits weights and GQA KV heads over tensor-parallel ranks but replicates the MLA
  latent on every rank; llama.cpp splits layers (weights and KV) over its GPUs.
- Overhead per GPU: CUDA context, compute buffers, sampler and logits; vLLM also CUDA graphs and
  NCCL buffers. vLLM takes only `gpu_memory_utilization` of each GPU, so its need is divided by it.
- LoRA: vLLM preallocates A and B for every adapted module at max rank for each adapter slot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from glmops.plan.memory import GIB, VARIANT_DIMS, ModelDims

GGUF_BITS_PER_WEIGHT: dict[str, float] = {
    # Average over the tensors of a GLM-4.7 MoE: llama.cpp's *_M mixes give attention V and half
    # of the ffn_down tensors (experts included) one step more bits; embeddings and output ride
    # along. Q4_K is 4.5 bpw, Q6_K 6.5625, Q3_K 3.4375, Q5_K 5.5, Q8_0 8.5, Q4_0 4.5.
    "Q3_K_M": 3.68,
    "Q4_0": 4.55,
    "Q4_K_M": 4.85,
    "Q5_K_M": 5.69,
    "Q6_K": 6.57,
    "Q8_0": 8.5,
}
"""Average bits per weight of each quantization's tensor mix (also what published GGUF sizes show)."""

BF16_BYTES = 2
KV_BYTES = 2  # f16 (llama.cpp) / bf16 (vLLM) cache elements
LLAMACPP_OVERHEAD_GIB = 1.5
"""Per GPU (or per CPU replica): backend context, compute buffers for a 512-token micro-batch, logits."""
VLLM_OVERHEAD_GIB = 4.0
"""Per GPU: CUDA context, activation peak of a prefill chunk, sampler, CUDA graphs, NCCL buffers."""
MAX_CONTEXT_TOKENS = {"flagship": 202752, "flash": 202752}
"""max_position_embeddings of GLM-4.7 and GLM-4.7-Flash."""
GPU_COUNTS = (1, 2, 4, 8)
"""GPU counts a replica may get: what GPU nodes offer, and what tensor parallelism splits evenly."""


def mtp_layer_parameters(dims: ModelDims) -> int:
    """Parameters of one MTP (next-token prediction) layer: a MoE decoder layer plus its projection and norms."""
    hidden = dims.hidden_size
    attention = sum(i * o for i, o in dims.attention.linears(hidden).values())
    experts = 3 * hidden * dims.moe_intermediate_size * (dims.num_routed_experts + dims.num_shared_experts)
    router = dims.num_routed_experts * hidden
    projection = 2 * hidden * hidden  # eh_proj: [embedding; hidden state] -> hidden
    norms = 4 * hidden + dims.attention.norm_params()
    return attention + experts + router + projection + norms


def gguf_weight_bytes(dims: ModelDims, quantization: str) -> float:
    """Estimated size of a GGUF of this model (MTP layer included, as the converter keeps it)."""
    parameters = dims.total_parameters() + mtp_layer_parameters(dims)
    return parameters * GGUF_BITS_PER_WEIGHT[quantization] / 8


def bf16_weight_bytes(dims: ModelDims, with_mtp: bool) -> float:
    """Size of bf16 safetensors weights, with or without the MTP layer."""
    parameters = dims.total_parameters() + (mtp_layer_parameters(dims) if with_mtp else 0)
    return float(parameters * BF16_BYTES)


def kv_bytes_per_token(dims: ModelDims, runtime: str) -> float:
    """KV cache bytes one token takes over all layers."""
    attention = dims.attention
    if attention.kind == "gqa":
        per_layer = 2 * attention.num_kv_heads * attention.head_dim
    elif runtime == "vllm":
        per_layer = attention.kv_lora_rank + attention.qk_rope_head_dim
    else:
        per_layer = (attention.kv_lora_rank + attention.qk_rope_head_dim) + attention.kv_lora_rank
    return float(per_layer * dims.num_layers * KV_BYTES)


def lora_buffer_bytes(dims: ModelDims, max_rank: int, targets: Sequence[str], adapters: int) -> float:
    """What vLLM preallocates for `adapters` LoRA slots of rank `max_rank` on `targets` (bf16)."""
    if adapters == 0:
        return 0.0
    return float(dims.lora_parameters(max_rank, targets) * BF16_BYTES * adapters)


@dataclass(frozen=True)
class ServingMemory:
    """Memory of one serving replica."""

    weights_gib: float
    """All weights of the replica."""
    kv_cache_gib: float
    """KV cache for contextLength x parallelSlots tokens (over all GPUs, replicas of MLA latents counted once)."""
    lora_gib: float
    """Preallocated LoRA buffers (vLLM with adapters)."""
    overhead_gib_per_gpu: float
    gpus: int
    """GPUs of the replica; 0 on CPU."""
    per_gpu_gib: float
    """Need of each GPU (0 on CPU)."""
    total_gib: float
    """Everything the replica holds (on CPU: its host memory)."""
    weights_from: str
    """Where the weights figure comes from, for messages."""


def estimate_serving_memory(
    variant: str,
    runtime: str,
    weight_bytes: float,
    context_length: int,
    parallel_slots: int,
    gpus: int,
    lora_bytes: float = 0.0,
    weights_from: str = "",
    dims: ModelDims | None = None,
) -> ServingMemory:
    """Per-GPU and total memory of a replica of `variant` served by `runtime` on `gpus` GPUs (0: CPU)."""
    model = dims or VARIANT_DIMS[variant]
    kv_total = kv_bytes_per_token(model, runtime) * context_length * parallel_slots
    overhead = (VLLM_OVERHEAD_GIB if runtime == "vllm" else LLAMACPP_OVERHEAD_GIB) * GIB
    shards = max(gpus, 1)
    # vLLM keeps a full copy of the MLA latent cache on every tensor-parallel rank.
    kv_per_gpu = kv_total if (runtime == "vllm" and model.attention.kind == "mla") else kv_total / shards
    per_gpu = weight_bytes / shards + kv_per_gpu + lora_bytes + overhead
    total = weight_bytes + kv_per_gpu * shards + (lora_bytes + overhead) * shards
    return ServingMemory(
        weights_gib=weight_bytes / GIB,
        kv_cache_gib=kv_total / GIB,
        lora_gib=lora_bytes / GIB,
        overhead_gib_per_gpu=overhead / GIB,
        gpus=gpus,
        per_gpu_gib=per_gpu / GIB if gpus else 0.0,
        total_gib=total / GIB,
        weights_from=weights_from,
    )


def valid_gpu_counts(variant: str, runtime: str, dims: ModelDims | None = None) -> tuple[int, ...]:
    """GPU counts a replica can use: vLLM's tensor parallelism must divide the attention heads."""
    model = dims or VARIANT_DIMS[variant]
    if runtime != "vllm":
        return GPU_COUNTS
    return tuple(n for n in GPU_COUNTS if model.attention.num_heads % n == 0)


def usable_gib(gpu_memory_gib: float, runtime: str, vllm_gpu_memory_utilization: float) -> float:
    """What a server may use of a GPU of this size."""
    return gpu_memory_gib * (vllm_gpu_memory_utilization if runtime == "vllm" else 1.0)


def choose_gpu_count(
    variant: str,
    runtime: str,
    need_for: Callable[[int], ServingMemory],
    gpu_memory_gib: float,
    vllm_gpu_memory_utilization: float,
    dims: ModelDims | None = None,
) -> int:
    """The fewest valid GPUs whose per-GPU need fits `gpu_memory_gib`; the most valid count if none does."""
    counts = valid_gpu_counts(variant, runtime, dims)
    limit = usable_gib(gpu_memory_gib, runtime, vllm_gpu_memory_utilization)
    for count in counts:
        if need_for(count).per_gpu_gib <= limit:
            return count
    return counts[-1]


def load_seconds(weight_bytes: float, read_mib_per_second: float, fixed_seconds: float) -> int:
    """How long a replica may take to load its weights: reading them plus a fixed start-up time."""
    return math.ceil(weight_bytes / (read_mib_per_second * 1024 * 1024) + fixed_seconds)

