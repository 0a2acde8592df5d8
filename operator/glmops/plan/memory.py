"""GPU memory plan of a LoRA/QLoRA run: per-GPU and total GiB with a breakdown. Pure Python, no torch.

The operator uses it to choose GPUs and to reject jobs that cannot fit; the trainer's tests check it
against what a tiny model really allocates. Every term follows what the trainer does:

- Weights (`ModelDims.parameter_groups`). qlora: attention, dense-MLP and shared-expert linears are
  bitsandbytes NF4 and the routed experts are NF4Experts, both double-quantized:
  0.5 B/param of codes + 1 B per 64-value block (8-bit absmax) + 4 B per 256 blocks (absmax scale)
  = NF4_BYTES_PER_PARAM. Everything left unquantized (embeddings, lm_head, norms, router, biases)
  is upcast to fp32 by peft's `prepare_model_for_kbit_training`. lora: everything in bf16.
- LoRA: r*(in+out) per adapted linear; per-expert rank blocks for routed experts
  (r*E*(H+2I) + r*E*(I+H) per MoE layer). fp32 weight + fp32 gradient + two fp32 AdamW moments.
- Activations with gradient checkpointing: every decoder layer keeps its input hidden state (fp32
  under qlora: the upcast embeddings make the residual stream fp32, linears still compute in bf16); on
  top comes the larger of two phases that never overlap: the loss and the recompute + backward of
  one decoder layer (`_layer_activation_bytes_per_token`). The trainer computes the loss in chunks
  of LOSS_CHUNK_TOKENS tokens, over the tokens that count only (glmops_trainer.model.chunked_loss),
  so one chunk's logits exist at a time instead of the whole sequence's (`_chunked_loss_bytes`).
- Dequantization buffer: the largest weight dequantized at once (bitsandbytes dequantizes a whole
  Linear4bit for its matmul; NF4Experts one expert), in forward and again in backward.
- Runtime overhead per GPU: CUDA context, cuBLAS/bitsandbytes workspaces and caching-allocator
  fragmentation (RUNTIME_OVERHEAD_GIB).

Placement (`sharding_for`): the flagship on several GPUs runs under FSDP2 (`fsdp`): one process per
GPU, every parameter split along dim 0 over all GPUs, each GPU training its own micro-batch. Under
`fsdp` the trainer also keeps the frozen unquantized weights in the compute dtype (so the residual
stream is bf16, not fp32); the plan follows (`_plan_fsdp`). Everything else runs one whole replica
per GPU (`replicate`, data parallel).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

GIB = 1024**3

NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)
"""NF4 codes (4 bit) + 8-bit absmax per 64 values + fp32 scale per 256 absmax values (double quant)."""

ADAMW_BYTES_PER_LORA_PARAM = 16
"""fp32 LoRA weight, its fp32 gradient and AdamW's two fp32 moments."""

RUNTIME_OVERHEAD_GIB = 2.5
"""Per GPU: CUDA context (~0.5-1 GiB), cuBLAS and bitsandbytes workspaces, allocator fragmentation."""

Sharding = Literal["replicate", "fsdp"]
"""replicate: each GPU holds a whole replica (data parallel); fsdp: every parameter divided over all GPUs (FSDP2)."""

LOSS_CHUNK_TOKENS = 1024
"""The loss is computed this many tokens at a time (glmops_trainer.model.chunked_loss), so only one chunk's
logits ever exist instead of the whole sequence's."""

FSDP_GATHERED_LAYERS = 3
"""Decoder layers whose whole parameters exist at once on a GPU under FSDP2: the one computing, the next one
prefetched, and the prefetch's all-gather buffer until it is copied out."""

TARGET_NAMES = ("attention", "dense_mlp", "shared_experts", "experts")


@dataclass(frozen=True)
class AttentionDims:
    """Attention shape: GQA (flagship) or MLA (Flash: low-rank q and compressed kv)."""

    kind: Literal["gqa", "mla"]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    """gqa: q/k/v head size; mla: qk_nope + qk_rope."""
    bias: bool = False
    qk_norm: bool = False
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0

    def linears(self, hidden: int) -> dict[str, tuple[int, int]]:
        """name -> (in_features, out_features) of each attention projection."""
        if self.kind == "gqa":
            q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
            return {
                "q_proj": (hidden, q),
                "k_proj": (hidden, kv),
                "v_proj": (hidden, kv),
                "o_proj": (q, hidden),
            }
        qk = self.qk_nope_head_dim + self.qk_rope_head_dim
        found: dict[str, tuple[int, int]] = {}
        if self.q_lora_rank:
            found["q_a_proj"] = (hidden, self.q_lora_rank)
            found["q_b_proj"] = (self.q_lora_rank, self.num_heads * qk)
        else:
            found["q_proj"] = (hidden, self.num_heads * qk)
        found["kv_a_proj_with_mqa"] = (hidden, self.kv_lora_rank + self.qk_rope_head_dim)
        found["kv_b_proj"] = (self.kv_lora_rank, self.num_heads * (self.qk_nope_head_dim + self.v_head_dim))
        found["o_proj"] = (self.num_heads * self.v_head_dim, hidden)
        return found

    def bias_params(self, hidden: int) -> int:
        """Bias parameters of the projections (GLM-4.7 has q/k/v biases)."""
        if not self.bias:
            return 0
        return sum(out for name, (_, out) in self.linears(hidden).items() if name != "o_proj")

    def norm_params(self) -> int:
        """Norm weights inside attention (qk-norm, or MLA's q_a/kv_a norms)."""
        if self.kind == "gqa":
            return 2 * self.head_dim if self.qk_norm else 0
        return (self.q_lora_rank or 0) + self.kv_lora_rank

    def activation_elements_per_token(self) -> int:
        """Elements autograd keeps per token in one attention block (flash/sdpa-efficient kernels)."""
        if self.kind == "gqa":
            q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
            # qk-norm: fp32 copy (2 elements' worth) and normalised output of q and k
            qk_norm = 3 * (q + kv) if self.qk_norm else 0
            # attention inputs q, k, v and its output; o_proj's contiguous input
            return qk_norm + (q + 2 * kv) + q + q
        qk = self.qk_nope_head_dim + self.qk_rope_head_dim
        heads_qk, heads_v = self.num_heads * qk, self.num_heads * self.v_head_dim
        # q_a/kv_a outputs through their RMSNorms (fp32 copy + output), kv_b output (keys' nope part
        # and the values), assembled queries and keys, attention output, o_proj's input
        low_rank = 3 * ((self.q_lora_rank or 0) + self.kv_lora_rank)
        kv_b = self.num_heads * (self.qk_nope_head_dim + self.v_head_dim)
        return low_rank + kv_b + 2 * heads_qk + 2 * heads_v


@dataclass(frozen=True)
class ModelDims:
    """The shape facts of a GLM-4.7-family MoE model that memory depends on."""

    name: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_dense_layers: int
    intermediate_size: int
    moe_intermediate_size: int
    num_routed_experts: int
    experts_per_token: int
    num_shared_experts: int
    attention: AttentionDims
    tie_word_embeddings: bool = False

    @property
    def num_moe_layers(self) -> int:
        """Decoder layers with routed experts."""
        return self.num_layers - self.num_dense_layers

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any], name: str | None = None) -> ModelDims:
        """Dims from a Hugging Face config.json dict of a glm4_moe or glm4_moe_lite model."""
        model_type = config.get("model_type")
        layers = int(config["num_hidden_layers"])
        if model_type == "glm4_moe":
            heads = int(config["num_attention_heads"])
            head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
            attention = AttentionDims(
                kind="gqa",
                num_heads=heads,
                num_kv_heads=int(config["num_key_value_heads"]),
                head_dim=head_dim,
                bias=bool(config.get("attention_bias", False)),
                qk_norm=bool(config.get("use_qk_norm", False)),
            )
            dense = int(config.get("first_k_dense_replace", 1))
        elif model_type == "glm4_moe_lite":
            nope, rope = int(config["qk_nope_head_dim"]), int(config["qk_rope_head_dim"])
            attention = AttentionDims(
                kind="mla",
                num_heads=int(config["num_attention_heads"]),
                num_kv_heads=int(config.get("num_key_value_heads", config["num_attention_heads"])),
                head_dim=nope + rope,
                bias=bool(config.get("attention_bias", False)),
                q_lora_rank=config.get("q_lora_rank"),
                kv_lora_rank=int(config["kv_lora_rank"]),
                qk_nope_head_dim=nope,
                qk_rope_head_dim=rope,
                v_head_dim=int(config["v_head_dim"]),
            )
            mlp_types = config.get("mlp_layer_types") or ["dense"] + ["sparse"] * (layers - 1)
            dense = sum(1 for kind in mlp_types[:layers] if kind == "dense")
        else:
            raise ValueError(
                f"model_type {model_type!r}: only glm4_moe and glm4_moe_lite have a memory model"
            )
        return cls(
            name=name or str(model_type),
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            num_layers=layers,
            num_dense_layers=dense,
            intermediate_size=int(config["intermediate_size"]),
            moe_intermediate_size=int(config["moe_intermediate_size"]),
            num_routed_experts=int(config["n_routed_experts"]),
            experts_per_token=int(config["num_experts_per_tok"]),
            num_shared_experts=int(config.get("n_shared_experts", 1)),
            attention=attention,
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        )

    def parameter_groups(self) -> dict[str, int]:
        """Parameter counts by role: attention, dense_mlp, shared_experts, experts, router, unquantized."""
        hidden = self.hidden_size
        attention = sum(i * o for i, o in self.attention.linears(hidden).values()) * self.num_layers
        dense = 3 * hidden * self.intermediate_size * self.num_dense_layers
        shared_inter = self.moe_intermediate_size * self.num_shared_experts
        shared = 3 * hidden * shared_inter * self.num_moe_layers
        experts = 3 * hidden * self.moe_intermediate_size * self.num_routed_experts * self.num_moe_layers
        router = self.num_routed_experts * hidden * self.num_moe_layers
        embeddings = self.vocab_size * hidden * (1 if self.tie_word_embeddings else 2)
        norms = (2 * hidden + self.attention.norm_params()) * self.num_layers + hidden
        biases = self.attention.bias_params(hidden) * self.num_layers
        return {
            "attention": attention,
            "dense_mlp": dense,
            "shared_experts": shared,
            "experts": experts,
            "router": router,
            "embeddings": embeddings,
            "norms_and_biases": norms + biases,
        }

    def total_parameters(self) -> int:
        """All parameters of the decoder stack (the MTP layer, unused in training, not counted)."""
        return sum(self.parameter_groups().values())

    def lora_parameters(self, rank: int, targets: Sequence[str]) -> int:
        """Trainable LoRA parameters for these target presets at rank `rank`."""
        hidden, inter = self.hidden_size, self.moe_intermediate_size
        total = 0
        if "attention" in targets:
            total += sum(rank * (i + o) for i, o in self.attention.linears(hidden).values()) * self.num_layers
        if "dense_mlp" in targets:
            total += 3 * rank * (hidden + self.intermediate_size) * self.num_dense_layers
        if "shared_experts" in targets:
            total += 3 * rank * (hidden + inter * self.num_shared_experts) * self.num_moe_layers
        if "experts" in targets:
            per_layer = rank * self.num_routed_experts * ((hidden + 2 * inter) + (inter + hidden))
            total += per_layer * self.num_moe_layers
        return total

    def largest_linear_parameters(self) -> int:
        """Parameters of the biggest single quantized matrix (dequantized whole for its matmul)."""
        hidden = self.hidden_size
        sizes = [i * o for i, o in self.attention.linears(hidden).values()]
        if self.num_dense_layers:
            sizes.append(hidden * self.intermediate_size)
        sizes.append(hidden * self.moe_intermediate_size * self.num_shared_experts)
        sizes.append(3 * hidden * self.moe_intermediate_size)  # one routed expert: gate, up, down
        return max(sizes)

    def largest_layer_bytes(self, method: str, lora_rank: int, targets: Sequence[str], compute_bytes: int) -> float:
        """Bytes of the biggest decoder layer's whole parameters (what FSDP all-gathers for one layer).

        4-bit weights at NF4_BYTES_PER_PARAM (qlora) or the compute dtype (lora); norms, biases and the
        router in the compute dtype; the layer's LoRA weights in fp32.
        """
        hidden, inter = self.hidden_size, self.moe_intermediate_size
        attention = sum(i * o for i, o in self.attention.linears(hidden).values())
        small = 2 * hidden + self.attention.norm_params() + self.attention.bias_params(hidden)
        weight_bytes = NF4_BYTES_PER_PARAM if method == "qlora" else float(compute_bytes)
        dense_layer = (attention + 3 * hidden * self.intermediate_size) * weight_bytes
        dense_layer += small * compute_bytes
        moe_weights = attention + 3 * hidden * inter * (self.num_shared_experts + self.num_routed_experts)
        moe_layer = moe_weights * weight_bytes + (small + self.num_routed_experts * hidden) * compute_bytes
        attention_lora = self.lora_parameters(lora_rank, ["attention"]) / self.num_layers if "attention" in targets else 0.0
        sizes = []
        if self.num_moe_layers:
            moe_targets = [t for t in targets if t in ("shared_experts", "experts")]
            moe_lora = self.lora_parameters(lora_rank, moe_targets) / self.num_moe_layers if moe_targets else 0.0
            sizes.append(moe_layer + (attention_lora + moe_lora) * 4.0)
        if self.num_dense_layers:
            dense_lora = self.lora_parameters(lora_rank, ["dense_mlp"]) / self.num_dense_layers if "dense_mlp" in targets else 0.0
            sizes.append(dense_layer + (attention_lora + dense_lora) * 4.0)
        return max(sizes)


FLAGSHIP = ModelDims(
    name="GLM-4.7",
    vocab_size=151552,
    hidden_size=5120,
    num_layers=92,
    num_dense_layers=3,
    intermediate_size=12288,
    moe_intermediate_size=1536,
    num_routed_experts=160,
    experts_per_token=8,
    num_shared_experts=1,
    attention=AttentionDims(kind="gqa", num_heads=96, num_kv_heads=8, head_dim=128, bias=True, qk_norm=True),
)
"""GLM-4.7 (355B-A32B): the GLM-4.5 architecture; its MTP layer (layer 92) is not loaded for training."""

FLASH = ModelDims(
    name="GLM-4.7-Flash",
    vocab_size=154880,
    hidden_size=2048,
    num_layers=47,
    num_dense_layers=1,
    intermediate_size=10240,
    moe_intermediate_size=1536,
    num_routed_experts=64,
    experts_per_token=4,
    num_shared_experts=1,
    attention=AttentionDims(
        kind="mla",
        num_heads=20,
        num_kv_heads=20,
        head_dim=256,
        q_lora_rank=768,
        kv_lora_rank=512,
        qk_nope_head_dim=192,
        qk_rope_head_dim=64,
        v_head_dim=256,
    ),
)
"""GLM-4.7-Flash (30B-A3B, glm4_moe_lite): MLA attention, one dense layer; its MTP layer is not loaded."""

VARIANT_DIMS: dict[str, ModelDims] = {"flagship": FLAGSHIP, "flash": FLASH}


def sharding_for(variant: str, gpus: int) -> Sharding:
    """How a run of `variant` on `gpus` GPUs places the model; the planner and the trainer both ask here.

    The flagship does not fit one GPU even in 4-bit, so on several GPUs it is sharded with FSDP2 and
    all GPUs compute at once; Flash fits one GPU and runs one replica per GPU. A single process (one
    GPU, or a CPU) always holds the whole model.
    """
    return "fsdp" if variant == "flagship" and gpus > 1 else "replicate"


@dataclass(frozen=True)
class MemoryPlan:
    """Planned GPU memory of one training run."""

    per_gpu_gib: float
    """Peak on the busiest GPU (under fsdp and replicate every GPU has the same peak)."""
    total_gib: float
    """Sum over all GPUs of the job."""
    gpus: int
    sharding: Sharding
    breakdown_gib: dict[str, float] = field(default_factory=dict)
    """Per-GPU peak by term: weights_nf4, weights_unquantized, lora_and_optimizer, layer_inputs,
    working_activations, fsdp_gathered, dequant_buffer, runtime_overhead (they sum to per_gpu_gib)."""
    layer_recompute_gib: float = 0.0
    """One decoder layer's recompute + backward working set (all layers without checkpointing)."""
    logits_gib: float = 0.0
    """The loss's logits-sized tensors at their peak (one chunk's under fsdp)."""
    parameters: int = 0
    """Base model parameters (decoder stack)."""
    lora_parameters: int = 0
    """Trainable LoRA parameters."""
    host_offload_gib_per_gpu: float = 0.0
    """Host memory each GPU's process uses for activations moved off the GPU (fsdp: the layer inputs)."""

    def fits(self, gpu_memory_gib: float) -> bool:
        """True when the per-GPU peak fits a GPU of this size."""
        return self.per_gpu_gib <= gpu_memory_gib


def plan_memory(
    variant: str,
    method: str,
    lora_rank: int,
    targets: Sequence[str],
    sequence_length: int,
    micro_batch_size: int,
    gpus: int,
    gradient_checkpointing: bool = True,
    dims: ModelDims | None = None,
    sharding: Sharding | None = None,
    compute_bytes: int = 2,
    lora_dropout: float = 0.05,
    runtime_overhead_gib: float = RUNTIME_OVERHEAD_GIB,
) -> MemoryPlan:
    """Plan per-GPU and total GPU memory for `variant` ("flash"/"flagship") trained with `method` ("qlora"/"lora").

    `dims` overrides the variant's real dimensions (e.g. a tiny test model); `compute_bytes` is the
    activation dtype size (2 for bf16, 4 for fp32 on CPU).
    """
    if variant not in VARIANT_DIMS:
        raise ValueError(f"variant {variant!r}: expected one of {sorted(VARIANT_DIMS)}")
    if method not in ("qlora", "lora"):
        raise ValueError(f"method {method!r}: expected 'qlora' or 'lora'")
    unknown = [t for t in targets if t not in TARGET_NAMES]
    if unknown:
        raise ValueError(f"targets {unknown}: expected names from {list(TARGET_NAMES)}")
    if gpus < 1 or lora_rank < 1 or sequence_length < 1 or micro_batch_size < 1:
        raise ValueError("gpus, lora_rank, sequence_length and micro_batch_size must be >= 1")
    model = dims or VARIANT_DIMS[variant]
    sharding = sharding or sharding_for(variant, gpus)
    if sharding not in ("replicate", "fsdp"):
        raise ValueError(f"sharding must be 'replicate' or 'fsdp', not {sharding!r}")
    groups = model.parameter_groups()
    quantized_groups = ("attention", "dense_mlp", "shared_experts", "experts")
    quantized = sum(groups[g] for g in quantized_groups)
    unquantized = sum(v for g, v in groups.items() if g not in quantized_groups)

    tokens = sequence_length * micro_batch_size
    # the router's score-correction bias: a float32 buffer, not a parameter
    router_bias = model.num_routed_experts * model.num_moe_layers * 4.0
    # bitsandbytes dequantizes a whole Linear4bit for its matmul, in forward and again in backward
    dequant = 2.0 * model.largest_linear_parameters() * compute_bytes if method == "qlora" else 0.0
    overhead = runtime_overhead_gib * GIB
    if sharding == "fsdp":
        return _plan_fsdp(
            model, method, lora_rank, targets, tokens, gpus, gradient_checkpointing,
            compute_bytes, lora_dropout, overhead, dequant, router_bias,
        )  # fmt: skip

    if method == "qlora":
        # per-expert absmax offsets of NF4Experts: one fp32 per expert and weight
        expert_offsets = 2 * model.num_routed_experts * model.num_moe_layers * 4
        weights_nf4 = quantized * NF4_BYTES_PER_PARAM + expert_offsets
        weights_plain = unquantized * 4.0 + router_bias  # upcast to fp32 by prepare_model_for_kbit_training
    else:
        weights_nf4 = 0.0
        weights_plain = (quantized + unquantized) * float(compute_bytes) + router_bias

    lora_params = model.lora_parameters(lora_rank, targets)
    lora_state = lora_params * ADAMW_BYTES_PER_LORA_PARAM

    # qlora: the fp32 embeddings make the residual stream fp32; linears still compute in bf16
    residual_bytes = 4 if method == "qlora" else compute_bytes
    layer_inputs = model.num_layers * tokens * model.hidden_size * residual_bytes
    layer_work = tokens * _layer_activation_bytes_per_token(
        model, targets, lora_rank, compute_bytes, residual_bytes, lora_dropout
    )
    if not gradient_checkpointing:
        layer_inputs, layer_work = 0, layer_work * model.num_layers
    logits = _chunked_loss_bytes(model, tokens, compute_bytes, hidden_bytes=residual_bytes)
    # The loss's tensors are freed before backward reaches the last decoder layer, so the peak is the
    # larger of the two phases, not their sum.
    working = max(float(layer_work), float(logits))
    per_gpu = {
        "weights_nf4": weights_nf4,
        "weights_unquantized": weights_plain,
        "lora_and_optimizer": float(lora_state),
        "layer_inputs": float(layer_inputs),
        "working_activations": working,
        "fsdp_gathered": 0.0,
        "dequant_buffer": dequant,
        "runtime_overhead": overhead,
    }
    total = sum(per_gpu.values()) * gpus
    breakdown = {key: value / GIB for key, value in per_gpu.items()}
    return MemoryPlan(
        per_gpu_gib=sum(breakdown.values()),
        total_gib=total / GIB,
        gpus=gpus,
        sharding=sharding,
        breakdown_gib=breakdown,
        layer_recompute_gib=layer_work / GIB,
        logits_gib=logits / GIB,
        parameters=model.total_parameters(),
        lora_parameters=lora_params,
    )


def _plan_fsdp(
    model: ModelDims,
    method: str,
    lora_rank: int,
    targets: Sequence[str],
    tokens: int,
    gpus: int,
    gradient_checkpointing: bool,
    compute_bytes: int,
    lora_dropout: float,
    overhead: float,
    dequant: float,
    router_bias: float,
) -> MemoryPlan:
    """The plan of an FSDP2 run: what every GPU holds, as `glmops_trainer.model.sharded` lays it out.

    - Sharded over all GPUs (each parameter split along dim 0): the NF4 codes of every 4-bit weight, the
      routed experts' statistics (packed into their rows), the unquantized weights (kept in the compute
      dtype), LoRA weights, their gradients and AdamW moments.
    - Whole on every GPU: bitsandbytes' statistics of the 4-bit linears (module state, not parameters)
      and the router's score-correction bias (a buffer).
    - Each GPU's own micro-batch: the checkpointed layer inputs go to host memory as they are saved
      (`host_offload_gib`) and come back one layer at a time in backward, so the GPU holds about two
      hidden states. The peak is the larger of two phases that never overlap: a layer's recompute and
      backward with FSDP_GATHERED_LAYERS layers gathered, or one chunk of the loss with the gathered
      lm_head and one prefetched layer.
    """
    groups = model.parameter_groups()
    linear_params = groups["attention"] + groups["dense_mlp"] + groups["shared_experts"]
    unquantized = sum(v for g, v in groups.items() if g not in ("attention", "dense_mlp", "shared_experts", "experts"))
    if method == "qlora":
        expert_offsets = 2 * model.num_routed_experts * model.num_moe_layers * 4
        sharded_nf4 = groups["experts"] * NF4_BYTES_PER_PARAM + expert_offsets + linear_params * 0.5
        replicated_nf4 = linear_params * (NF4_BYTES_PER_PARAM - 0.5)
        sharded_plain = unquantized * float(compute_bytes)
    else:
        sharded_nf4, replicated_nf4 = 0.0, 0.0
        sharded_plain = (linear_params + groups["experts"] + unquantized) * float(compute_bytes)
    lora_params = model.lora_parameters(lora_rank, targets)
    lora_state = lora_params * ADAMW_BYTES_PER_LORA_PARAM

    hidden_state = tokens * model.hidden_size * compute_bytes
    layer_work = tokens * _layer_activation_bytes_per_token(
        model, targets, lora_rank, compute_bytes, compute_bytes, lora_dropout
    )
    if gradient_checkpointing:
        layer_inputs, host_offload = 2.0 * hidden_state, float(model.num_layers * hidden_state)
    else:
        layer_inputs, host_offload, layer_work = 0.0, 0.0, layer_work * model.num_layers
    layer_bytes = model.largest_layer_bytes(method, lora_rank, targets, compute_bytes)
    lm_head = (model.vocab_size + 1) * model.hidden_size * compute_bytes
    loss = _chunked_loss_bytes(model, tokens, compute_bytes)
    layer_phase = (float(layer_work), FSDP_GATHERED_LAYERS * layer_bytes)
    loss_phase = (loss, lm_head + layer_bytes)
    working, gathered = max(layer_phase, loss_phase, key=sum)

    per_gpu = {
        "weights_nf4": sharded_nf4 / gpus + replicated_nf4,
        "weights_unquantized": sharded_plain / gpus + router_bias,
        "lora_and_optimizer": lora_state / gpus,
        "layer_inputs": layer_inputs,
        "working_activations": working,
        "fsdp_gathered": gathered,
        "dequant_buffer": dequant,
        "runtime_overhead": overhead,
    }
    breakdown = {key: value / GIB for key, value in per_gpu.items()}
    per_gpu_gib = sum(breakdown.values())
    return MemoryPlan(
        per_gpu_gib=per_gpu_gib,
        total_gib=per_gpu_gib * gpus,
        gpus=gpus,
        sharding="fsdp",
        breakdown_gib=breakdown,
        layer_recompute_gib=layer_work / GIB,
        logits_gib=loss / GIB,
        parameters=model.total_parameters(),
        lora_parameters=lora_params,
        host_offload_gib_per_gpu=host_offload / GIB,
    )


def _chunked_loss_bytes(model: ModelDims, tokens: int, compute_bytes: int, hidden_bytes: int | None = None) -> float:
    """Peak of the chunked loss: one chunk's logits (matmul output, fp32 copy, fp32 softmax turned into the
    gradient), plus two hidden-state-sized tensors (`hidden_bytes` per value, default the compute dtype's):
    the final hidden states of the tokens that count, copied out, and their gradient, which the loss keeps
    for backward; in backward, the gradient scattered back to every token takes the copy's place. Planned
    as if every token counted."""
    chunk = min(tokens, LOSS_CHUNK_TOKENS)
    hidden = tokens * model.hidden_size * (hidden_bytes or compute_bytes)
    return float(chunk * model.vocab_size * (compute_bytes + 4 + 4) + 2 * hidden)


def _layer_activation_bytes_per_token(
    model: ModelDims,
    targets: Sequence[str],
    rank: int,
    compute_bytes: int,
    residual_bytes: int,
    lora_dropout: float,
) -> float:
    """Bytes per token that autograd holds while one decoder layer is recomputed and back-propagated.

    Counts the tensors a layer saves for backward - norm inputs in fp32, attention tensors, router
    scores, each routed token's expert intermediates, LoRA inputs - plus the gradients of the layer's
    input and output hidden states that coexist with them.
    """
    hidden = model.hidden_size
    act = float(compute_bytes)
    fp32 = 4.0
    # input and post-attention RMSNorm: fp32 copy of the input, output in the residual dtype
    norms = 2 * (hidden * fp32 + hidden * residual_bytes)
    attention = model.attention.activation_elements_per_token() * act
    k, inter = model.experts_per_token, model.moe_intermediate_size
    # router in fp32: input copy, logits, sigmoid scores, normalised top-k weights
    router = hidden * fp32 + 3 * model.num_routed_experts * fp32
    # per routed token: gate|up output, activation, product, down output (kept for the routing
    # weight's gradient); the gathered input too when the experts carry LoRA. NF4Experts' 4-bit
    # matmul itself saves nothing.
    per_routed_token = 2 * inter + inter + inter + hidden + (hidden if "experts" in targets else 0)
    experts = k * per_routed_token * act
    shared_inter = inter * model.num_shared_experts
    shared = 4 * shared_inter * act  # gate and up outputs, activation, product
    moe = router + experts + shared
    dense = 4 * model.intermediate_size * act
    mlp = max(moe, dense) if model.num_dense_layers else moe
    # peft feeds each adapted linear a dropout copy of its input (plus a one-byte mask); under bf16
    # autocast the LoRA matmul also keeps a cast copy
    lora_inputs = 0
    if "attention" in targets:
        lora_inputs += sum(i for i, _ in model.attention.linears(hidden).values())
    if "shared_experts" in targets:
        lora_inputs += 2 * hidden + shared_inter
    per_input = (act + 1 if lora_dropout > 0 else 0.0) + (act if compute_bytes < 4 else 0.0)
    lora = lora_inputs * per_input
    gradients = 3 * hidden * residual_bytes
    return norms + attention + mlp + lora + gradients
