"""Every requested LoRA target really carries LoRA weights: in the model, in the saved adapter, after reload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import get_peft_model
from safetensors import safe_open
from torch import nn

from glmops_trainer.config import LoraConfig, LoraTarget, Method, Variant
from glmops_trainer.model.experts4bit import ExpertsLoraWrapper, quantize_experts_
from glmops_trainer.model.load import load_base_model
from glmops_trainer.model.targets import (
    LoraTargetError,
    apply_lora,
    load_adapter,
    lora_weight_names,
    module_regex,
    peft_config_for,
    plan_lora_targets,
    verify_lora_coverage,
)
from glmops_trainer.tiny.models import _instantiate, build_tiny_model, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

ATTENTION = {
    "glm4_moe": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "glm4_moe_lite": ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"),
}
VARIANTS = {"glm4_moe": Variant.flagship, "glm4_moe_lite": Variant.flash}
DENSE_LAYERS, MOE_LAYERS = (0,), (1, 2)  # the tiny models: one dense layer, then two MoE layers
PRESET_CASES = [(arch, [preset]) for arch in VARIANTS for preset in LoraTarget] + [
    (arch, list(LoraTarget)) for arch in VARIANTS
]


def _expected(arch: str, targets: list[LoraTarget]) -> dict[str, tuple[int, ...]]:
    """Saved adapter tensor name -> shape, written out from the architecture, not from the code under test."""
    config = tiny_config(arch)  # type: ignore[arg-type]
    rank, hidden, inter, experts = (
        4,
        config.hidden_size,
        config.moe_intermediate_size,
        config.n_routed_experts,
    )
    modules: list[str] = []
    if LoraTarget.attention in targets:
        modules += [
            f"model.layers.{i}.self_attn.{p}" for i in (*DENSE_LAYERS, *MOE_LAYERS) for p in ATTENTION[arch]
        ]
    if LoraTarget.dense_mlp in targets:
        modules += [
            f"model.layers.{i}.mlp.{p}" for i in DENSE_LAYERS for p in ("gate_proj", "up_proj", "down_proj")
        ]
    if LoraTarget.shared_experts in targets:
        modules += [
            f"model.layers.{i}.mlp.shared_experts.{p}"
            for i in MOE_LAYERS
            for p in ("gate_proj", "up_proj", "down_proj")
        ]
    model = _instantiate(config)
    shapes: dict[str, tuple[int, ...]] = {}
    for name in modules:
        linear = model.get_submodule(name)
        assert isinstance(linear, nn.Linear)
        shapes[f"base_model.model.{name}.lora_A.weight"] = (rank, linear.in_features)
        shapes[f"base_model.model.{name}.lora_B.weight"] = (linear.out_features, rank)
    if LoraTarget.experts in targets:
        for i in MOE_LAYERS:
            prefix = f"base_model.model.model.layers.{i}.mlp.experts"
            # peft nests one wrapper per fused weight: gate_up_proj inside (base_layer), down_proj outside
            shapes[f"{prefix}.base_layer.lora_A.weight"] = (rank * experts, hidden)
            shapes[f"{prefix}.base_layer.lora_B.weight"] = (2 * inter, rank * experts)
            shapes[f"{prefix}.lora_A.weight"] = (rank * experts, inter)
            shapes[f"{prefix}.lora_B.weight"] = (hidden, rank * experts)
    return shapes


def _dense(arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _instantiate(tiny_config(arch)).float()  # type: ignore[arg-type]


def _saved_shapes(adapter_dir: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as handle:
        names: list[str] = handle.keys()
        return {key: tuple(handle.get_slice(key).get_shape()) for key in names}


@pytest.mark.parametrize(
    ("arch", "targets"), PRESET_CASES, ids=lambda v: v if isinstance(v, str) else "+".join(t.value for t in v)
)
def test_every_requested_module_carries_lora_in_the_model_the_file_and_after_reload(
    tmp_path: Path, arch: str, targets: list[LoraTarget]
) -> None:
    variant = VARIANTS[arch]
    expected = _expected(arch, targets)
    lora = LoraConfig(rank=4, alpha=8, targets=targets)
    peft_model = apply_lora(_dense(arch), lora, variant)
    shapes = {
        name.replace(".default.", "."): tuple(p.shape)
        for name, p in peft_model.named_parameters()
        if ".lora_A." in name or ".lora_B." in name
    }
    assert shapes == expected

    peft_model.save_pretrained(tmp_path / "adapter")
    assert _saved_shapes(tmp_path / "adapter") == expected
    saved_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved_config["target_modules"] in (module_regex(variant, targets), [], None)
    has_experts = LoraTarget.experts in targets
    assert sorted(saved_config["target_parameters"] or []) == (
        ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"] if has_experts else []
    )

    reloaded = load_adapter(_dense(arch, seed=1), tmp_path / "adapter")
    original_state = {
        n.replace(".default.", "."): p for n, p in peft_model.named_parameters() if "lora_" in n
    }
    for name, param in reloaded.named_parameters():
        if "lora_" in name:
            assert torch.equal(param, original_state[name.replace(".default.", ".")]), name


def test_the_full_flagship_adapter_has_all_fifty_tensors() -> None:
    # the number that drops to 32 when peft's v4 MoE conversion eats the dense and shared MLP targets
    peft_model = apply_lora(
        _dense("glm4_moe"), LoraConfig(rank=4, targets=list(LoraTarget)), Variant.flagship
    )
    assert len(lora_weight_names(peft_model)) == 50


@pytest.mark.parametrize("arch", list(VARIANTS))
def test_without_the_guard_peft_silently_drops_dense_and_shared_mlp_targets(arch: str) -> None:
    """The trap is real on this peft/transformers pair; apply_lora must keep guarding against it."""
    variant = VARIANTS[arch]
    model = _dense(arch)
    targets = [LoraTarget.dense_mlp, LoraTarget.shared_experts]
    plan = plan_lora_targets(model, variant, targets)
    unguarded = get_peft_model(model, peft_config_for(plan, LoraConfig(rank=4, targets=targets)))
    with pytest.raises(LoraTargetError, match="missing"):
        verify_lora_coverage(unguarded, plan)
    assert not any("shared_experts" in name for name in lora_weight_names(unguarded))
    # the guard is scoped: peft's table is intact after apply_lora
    from peft.utils.transformers_weight_conversion import _MODEL_TO_CONVERSION_PATTERN

    apply_lora(_dense(arch), LoraConfig(rank=4, targets=targets), variant)
    assert arch in _MODEL_TO_CONVERSION_PATTERN


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(VARIANTS))
def test_adapter_trained_on_4bit_loads_on_the_bf16_base_and_back(tmp_path: Path, arch: str) -> None:
    variant = VARIANTS[arch]
    model_dir = build_tiny_model(arch, tmp_path / "model")  # type: ignore[arg-type]
    lora = LoraConfig(rank=4, alpha=8, targets=list(LoraTarget))
    qlora_model = apply_lora(load_base_model(model_dir, variant, Method.qlora), lora, variant)
    expected = _expected(arch, list(LoraTarget))
    qlora_model.save_pretrained(tmp_path / "adapter")
    assert _saved_shapes(tmp_path / "adapter") == expected

    for method in (Method.lora, Method.qlora):
        base = load_base_model(model_dir, variant, method, gradient_checkpointing=False)
        reloaded = load_adapter(base, tmp_path / "adapter", is_trainable=method is Method.qlora)
        assert {n.replace(".default.", ".") for n in lora_weight_names(reloaded)} == set(expected)


def test_the_same_layout_whether_experts_are_4bit_or_dense() -> None:
    lora = LoraConfig(rank=4, targets=list(LoraTarget))
    quantized = _dense("glm4_moe_lite")
    quantize_experts_(quantized)
    names_4bit = {
        n: tuple(p.shape)
        for n, p in apply_lora(quantized, lora, Variant.flash).named_parameters()
        if "lora_" in n
    }
    names_dense = {
        n: tuple(p.shape)
        for n, p in apply_lora(_dense("glm4_moe_lite"), lora, Variant.flash).named_parameters()
        if "lora_" in n
    }
    assert names_4bit == names_dense


def test_routed_experts_run_without_dropout_while_other_targets_keep_it() -> None:
    peft_model = apply_lora(
        _dense("glm4_moe"), LoraConfig(rank=4, dropout=0.1, targets=list(LoraTarget)), Variant.flagship
    )
    for name, module in peft_model.named_modules():
        if isinstance(module, ExpertsLoraWrapper):
            assert isinstance(module.lora_dropout["default"], nn.Identity), name
        elif name.endswith(("self_attn.q_proj", "shared_experts.up_proj")):
            dropout = module.lora_dropout["default"]
            assert isinstance(dropout, nn.Dropout) and dropout.p == 0.1, name


def test_preset_errors_name_the_field() -> None:
    with pytest.raises(LoraTargetError, match="spec.training.lora.targets: empty"):
        plan_lora_targets(_dense("glm4_moe"), Variant.flagship, [])
    with pytest.raises(LoraTargetError, match="spec.model.variant: 'flagship' presets need a glm4_moe model"):
        plan_lora_targets(_dense("glm4_moe_lite"), Variant.flagship, [LoraTarget.attention])
    all_moe = _instantiate(tiny_config("glm4_moe", first_k_dense_replace=0)).float()
    with pytest.raises(LoraTargetError, match=r"\['dense_mlp'\] match no module"):
        plan_lora_targets(all_moe, Variant.flagship, [LoraTarget.dense_mlp, LoraTarget.attention])


def test_adapter_for_another_model_is_refused_on_load(tmp_path: Path) -> None:
    lora = LoraConfig(rank=4, targets=[LoraTarget.shared_experts])
    apply_lora(_dense("glm4_moe"), lora, Variant.flagship).save_pretrained(tmp_path / "adapter")
    smaller = _instantiate(tiny_config("glm4_moe", num_hidden_layers=2)).float()
    with pytest.raises(LoraTargetError, match="does not fit this model"):
        load_adapter(smaller, tmp_path / "adapter")
