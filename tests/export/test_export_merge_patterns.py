"""Per-target rank and alpha (`rank_pattern` / `alpha_pattern`) merge exactly as peft's own merge.

The adapters here give chosen modules their own rank and alpha, by module name and by full key
(one layer only), on linear targets and on the fused routed-expert parameters, so a merge that
applied the adapter-wide r or lora_alpha to any of them would differ from `merge_and_unload`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tinyexport import make_adapter, peft_merged, per_expert_state_dict

from glmops_trainer.export.merge import iter_checkpoint_tensors, merge_lora_streaming

RANK, ALPHA = 4, 8.0
# (rank_pattern, alpha_pattern) per architecture. Keys follow peft: a pattern P matches a module
# key K when K ends with P at a '.' boundary (first match wins); routed-expert parameters are
# keyed `<experts module>.<parameter>`. "_proj" ends every projection's name but never at a
# boundary, so it must match nothing.
PATTERNS: dict[str, tuple[dict[str, int], dict[str, float]]] = {
    "glm4_moe": (
        {"model.layers.2.self_attn.q_proj": 2, "q_proj": 8, "v_proj": 6, "mlp.experts.down_proj": 2},
        {"k_proj": 3.0, "model.layers.0.self_attn.o_proj": 40.0, "mlp.experts.down_proj": 7.0, "_proj": 1.5},
    ),
    "glm4_moe_lite": (
        {"model.layers.2.self_attn.q_b_proj": 2, "q_b_proj": 8, "kv_b_proj": 6, "mlp.experts.down_proj": 2},
        {"kv_a_proj_with_mqa": 3.0, "model.layers.0.self_attn.o_proj": 40.0, "mlp.experts.down_proj": 7.0, "_proj": 1.5},
    ),
}


def _tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    return dict(iter_checkpoint_tensors(model_dir))


def _lora_rank(weights: dict[str, torch.Tensor], module: str, experts: int = 1) -> int:
    return weights[f"base_model.model.{module}.lora_A.weight"].shape[0] // experts


def _adapter(arch: str, base: Path, out: Path) -> tuple[Path, dict[str, Any]]:
    rank_pattern, alpha_pattern = PATTERNS[arch]
    adapter = make_adapter(
        base, out, arch, rank=RANK, alpha=ALPHA, rank_pattern=dict(rank_pattern), alpha_pattern=dict(alpha_pattern)
    )
    return adapter, json.loads((adapter / "adapter_config.json").read_text())


def test_the_patterns_really_give_modules_their_own_rank(arch: str, f32_base: Path, tmp_path: Path) -> None:
    """Guards the test below: peft applied the patterns, so the adapter is not uniform."""
    adapter, config = _adapter(arch, f32_base, tmp_path / "adapter")
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    q = "q_proj" if arch == "glm4_moe" else "q_b_proj"
    assert _lora_rank(weights, f"model.layers.0.self_attn.{q}") == 8
    assert _lora_rank(weights, f"model.layers.2.self_attn.{q}") == 2  # the full key wins over the name
    assert _lora_rank(weights, "model.layers.1.self_attn.o_proj") == RANK
    # peft 0.21 nests the two expert wrappers: down_proj is the outer one
    assert _lora_rank(weights, "model.layers.1.mlp.experts", experts=8) == 2
    assert config["r"] == RANK and config["lora_alpha"] == ALPHA
    assert config["rank_pattern"] and config["alpha_pattern"]


def test_per_target_rank_and_alpha_merge_as_peft_merges(arch: str, f32_base: Path, tmp_path: Path) -> None:
    adapter, _ = _adapter(arch, f32_base, tmp_path / "adapter")

    result = merge_lora_streaming(f32_base, adapter, tmp_path / "merged")

    merged, base = _tensors(tmp_path / "merged"), _tensors(f32_base)
    reference = per_expert_state_dict(peft_merged(f32_base, adapter))
    compared = 0
    for key, expected in reference.items():
        torch.testing.assert_close(merged[key], expected, rtol=1e-5, atol=1e-6, msg=key)
        compared += int(not torch.equal(expected, base[key]))
    # Every adapted tensor was compared against a real change (no delta is zero).
    assert compared == len(result.merged_tensors) > 0
