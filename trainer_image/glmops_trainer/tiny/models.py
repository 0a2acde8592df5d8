"""Tiny random-weight models of the two real GLM-4.7 architectures, saved like a hub checkpoint.

`build_tiny_model("glm4_moe", out_dir)` instantiates transformers' own `Glm4MoeForCausalLM`
(the GLM-4.7 flagship architecture) or `Glm4MoeLiteForCausalLM` (GLM-4.7-Flash: MLA attention,
a dense first layer) from a small config, initialises it with a fixed seed and writes
config.json, safetensors (per-expert layout, as the real checkpoints are), generation_config.json
and, when given, the tokenizer. Nothing is downloaded.

Sizes keep the hidden size and the MoE intermediate size multiples of 256 and head dims multiples
of 64, so that llama.cpp's K-quants (256-value super-blocks) apply to the expert and attention
tensors like they do on the real models.

transformers drops the flagship's MTP (next-token prediction) layer on load: the modeling code has
no module for it and ignores `model.layers.{num_hidden_layers}.*`. `mtp=True` therefore writes
that layer's tensors straight into the safetensors under the names the real checkpoint uses
(`eh_proj`, `enorm`, `hnorm`, `shared_head.norm`, `shared_head.head`, `embed_tokens` beside a full
MoE decoder layer), so exporters that read the safetensors can be tested for keeping it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    GenerationConfig,
    Glm4MoeConfig,
    Glm4MoeForCausalLM,
    Glm4MoeLiteConfig,
    Glm4MoeLiteForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

TinyArch = Literal["glm4_moe", "glm4_moe_lite"]

# Number of GLM added tokens that follow the learned vocabulary (18 special + 18 plain); without a
# tokenizer, <|endoftext|> is assumed at the first of them, as in the real vocabulary.
_GLM_ADDED_TOKEN_COUNT = 36


SMALL_CPU_OVERRIDES: dict[str, dict[str, Any]] = {
    # Smaller than the defaults so a CPU training step stays short, still multiples of 64 so the
    # routed experts can be stored in NF4. initializer_range 0.1: LoRA never trains the frozen
    # random lm_head, and at 0.02 its logits are too flat for any adapter to make a confident
    # prediction.
    "glm4_moe": {
        "initializer_range": 0.1, "hidden_size": 128, "intermediate_size": 256, "moe_intermediate_size": 128,
        "num_hidden_layers": 2, "head_dim": 32,
    },
    "glm4_moe_lite": {
        "initializer_range": 0.1, "hidden_size": 128, "intermediate_size": 256, "moe_intermediate_size": 128,
        "num_hidden_layers": 2, "q_lora_rank": 64, "kv_lora_rank": 64, "qk_nope_head_dim": 32,
        "qk_rope_head_dim": 32, "v_head_dim": 32,
    },
}  # fmt: skip
"""Config overrides for the smallest models that still train meaningfully on a CPU (tests, demo)."""


def tiny_config(arch: TinyArch, vocab_size: int = 2048, **overrides: Any) -> PretrainedConfig:
    """A small config of the real architecture `arch`; keyword overrides replace any field."""
    if arch == "glm4_moe":
        fields: dict[str, Any] = {
            "vocab_size": vocab_size,
            "hidden_size": 256,
            "intermediate_size": 512,
            "moe_intermediate_size": 256,
            "num_hidden_layers": 3,
            "first_k_dense_replace": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 64,
            "n_routed_experts": 8,
            "n_shared_experts": 1,
            "num_experts_per_tok": 2,
            "n_group": 1,
            "topk_group": 1,
            "routed_scaling_factor": 2.5,
            "norm_topk_prob": True,
            "attention_bias": True,
            "use_qk_norm": True,
            "num_nextn_predict_layers": 0,
            "tie_word_embeddings": False,
            "max_position_embeddings": 8192,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.5},
        }
        fields.update(overrides)
        return Glm4MoeConfig(**fields)
    if arch == "glm4_moe_lite":
        fields = {
            "vocab_size": vocab_size,
            "hidden_size": 256,
            "intermediate_size": 512,
            "moe_intermediate_size": 256,
            "num_hidden_layers": 3,
            "mlp_layer_types": ["dense", "sparse", "sparse"],
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "q_lora_rank": 128,
            "kv_lora_rank": 512,
            "qk_nope_head_dim": 64,
            "qk_rope_head_dim": 64,
            "v_head_dim": 128,  # = qk_nope + qk_rope, as in GLM-4.7-Flash (256 = 192 + 64)
            "n_routed_experts": 8,
            "n_shared_experts": 1,
            "num_experts_per_tok": 2,
            "n_group": 1,
            "topk_group": 1,
            "routed_scaling_factor": 1.8,
            "norm_topk_prob": True,
            "tie_word_embeddings": False,
            "max_position_embeddings": 8192,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
        }
        fields.update(overrides)
        layers = int(fields["num_hidden_layers"])
        if "mlp_layer_types" not in overrides and "num_hidden_layers" in overrides:
            fields["mlp_layer_types"] = ["dense"] + ["sparse"] * (layers - 1)
        return Glm4MoeLiteConfig(**fields)
    raise ValueError(
        f"arch: unknown architecture {arch!r}; use 'glm4_moe' (flagship) or 'glm4_moe_lite' (Flash)"
    )


def build_tiny_model(
    arch: TinyArch,
    out_dir: Path,
    tokenizer: PreTrainedTokenizerBase | None = None,
    seed: int = 0,
    num_shards: int = 1,
    dtype: torch.dtype = torch.bfloat16,
    mtp: bool = False,
    **config_overrides: Any,
) -> Path:
    """Build a random-weight model of `arch`, save it (and the tokenizer) to `out_dir`, return `out_dir`.

    `num_shards` > 1 splits the safetensors into about that many files with an index; `mtp` adds the
    flagship's next-token-prediction layer to the safetensors (see the module docstring).
    """
    if num_shards < 1:
        raise ValueError(f"num_shards: must be >= 1, got {num_shards}")
    if mtp and arch != "glm4_moe":
        raise ValueError("mtp: only the flagship architecture (glm4_moe) is built with an MTP layer here")
    vocab_size = int(config_overrides.pop("vocab_size", len(tokenizer) if tokenizer is not None else 2048))
    if tokenizer is not None and vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size: {vocab_size} is smaller than the tokenizer's {len(tokenizer)} ids")
    eos_ids, pad_id = _special_token_ids(tokenizer, vocab_size)
    config = tiny_config(
        arch,
        vocab_size=vocab_size,
        eos_token_id=eos_ids[0],
        pad_token_id=pad_id,
        bos_token_id=None,
        **config_overrides,
    )
    if mtp:
        config.num_nextn_predict_layers = 1

    torch.manual_seed(seed)
    model = _instantiate(config)
    model.to(dtype=dtype)  # type: ignore[call-arg]  # transformers wraps `to` in an untyped decorator
    _restore_fp32_buffers(model)
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        eos_token_id=eos_ids, pad_token_id=pad_id, do_sample=True, temperature=0.6, top_p=0.95
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    total_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    max_shard_size: int | str = math.ceil(total_bytes / num_shards) + 1 if num_shards > 1 else "1000GB"
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    if mtp:
        _append_mtp_layer(model, out_dir, seed=seed + 1, dtype=dtype)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir


def _instantiate(config: PretrainedConfig) -> PreTrainedModel:
    if isinstance(config, Glm4MoeConfig):
        return Glm4MoeForCausalLM(config)
    if isinstance(config, Glm4MoeLiteConfig):
        return Glm4MoeLiteForCausalLM(config)
    raise TypeError(f"no GLM model class for config {type(config).__name__}")


def _special_token_ids(tokenizer: PreTrainedTokenizerBase | None, vocab_size: int) -> tuple[list[int], int]:
    """eos ids (endoftext first, then the turn markers that end generation) and the pad id."""
    if tokenizer is None:
        endoftext = vocab_size - _GLM_ADDED_TOKEN_COUNT
        return [endoftext], endoftext
    from glmops_trainer.tiny.tokenizer import generation_stop_token_ids

    eos_ids = generation_stop_token_ids(tokenizer)  # type: ignore[arg-type]
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer: has no eos token; build it with glmops_trainer.tiny.tokenizer")
    eos = int(tokenizer.eos_token_id)
    if eos not in eos_ids:
        eos_ids = [eos, *eos_ids]
    pad = tokenizer.pad_token_id if isinstance(tokenizer.pad_token_id, int) else eos
    return eos_ids, pad


def _restore_fp32_buffers(model: PreTrainedModel) -> None:
    # The real checkpoints keep the router's score-correction bias in float32 (transformers keeps
    # it so as well, `_keep_in_fp32_modules_strict`); a blanket .to(bf16) would round it.
    for module in model.modules():
        bias = getattr(module, "e_score_correction_bias", None)
        if isinstance(bias, torch.Tensor):
            module.e_score_correction_bias = bias.to(torch.float32)


def _append_mtp_layer(model: PreTrainedModel, out_dir: Path, seed: int, dtype: torch.dtype) -> None:
    """Write layer `num_hidden_layers` (the MTP layer) into the last safetensors file and the index."""
    from transformers.models.glm4_moe.modeling_glm4_moe import Glm4MoeDecoderLayer

    config = model.config
    index = config.num_hidden_layers
    hidden = config.hidden_size
    torch.manual_seed(seed)
    layer = Glm4MoeDecoderLayer(config, layer_idx=index)  # type: ignore[arg-type]
    std = config.initializer_range
    tensors: dict[str, torch.Tensor] = {}
    prefix = f"model.layers.{index}."
    for name, param in layer.named_parameters():
        if name in ("mlp.experts.gate_up_proj", "mlp.experts.down_proj"):
            continue
        value = torch.ones_like(param) if name.endswith("norm.weight") else torch.randn_like(param) * std
        tensors[prefix + name] = value
    tensors[prefix + "mlp.gate.e_score_correction_bias"] = torch.zeros(config.n_routed_experts)
    inter = config.moe_intermediate_size
    for expert in range(config.n_routed_experts):
        for proj, shape in (
            ("gate_proj", (inter, hidden)),
            ("up_proj", (inter, hidden)),
            ("down_proj", (hidden, inter)),
        ):
            tensors[f"{prefix}mlp.experts.{expert}.{proj}.weight"] = torch.randn(shape) * std
    tensors[prefix + "eh_proj.weight"] = torch.randn(hidden, 2 * hidden) * std
    tensors[prefix + "enorm.weight"] = torch.ones(hidden)
    tensors[prefix + "hnorm.weight"] = torch.ones(hidden)
    tensors[prefix + "shared_head.norm.weight"] = torch.ones(hidden)
    tensors[prefix + "shared_head.head.weight"] = torch.randn(config.vocab_size, hidden) * std
    tensors[prefix + "embed_tokens.weight"] = torch.randn(config.vocab_size, hidden) * std
    tensors = {
        key: value.to(torch.float32 if key.endswith("e_score_correction_bias") else dtype).contiguous()
        for key, value in tensors.items()
    }

    index_path = out_dir / "model.safetensors.index.json"
    if index_path.exists():
        index_data = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map: dict[str, str] = index_data["weight_map"]
        last_file = max(weight_map.values())
    else:
        index_data = None
        weight_map = {}
        last_file = "model.safetensors"
    target = out_dir / last_file
    merged = load_file(str(target))
    merged.update(tensors)
    save_file(merged, str(target), metadata={"format": "pt"})
    if index_data is not None:
        for key in tensors:
            weight_map[key] = last_file
        index_data["weight_map"] = dict(sorted(weight_map.items()))
        index_data.setdefault("metadata", {})["total_size"] = int(
            index_data.get("metadata", {}).get("total_size", 0)
        ) + sum(t.numel() * t.element_size() for t in tensors.values())
        index_path.write_text(json.dumps(index_data, indent=2) + "\n", encoding="utf-8")


def mtp_tensor_names(out_dir: Path) -> list[str]:
    """Names of the MTP-layer tensors stored in the safetensors of a model directory (empty if none)."""
    config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    if not config.get("num_nextn_predict_layers"):
        return []
    prefix = f"model.layers.{config['num_hidden_layers']}."
    index_path = out_dir / "model.safetensors.index.json"
    if index_path.exists():
        names = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"].keys()
    else:
        from safetensors import safe_open

        with safe_open(str(out_dir / "model.safetensors"), framework="pt") as handle:
            names = list(handle.keys())
    return sorted(name for name in names if name.startswith(prefix))
