"""True QLoRA for fused MoE experts: 4-bit storage that frees bf16, stays accurate, and trains through LoRA."""

from __future__ import annotations

import copy
import gc
import math
import weakref
from pathlib import Path

import pytest
import torch
from bitsandbytes.nn import Linear4bit
from torch import nn

from glmops_trainer.config import LoraConfig, LoraTarget, Method, Variant
from glmops_trainer.model.experts4bit import (
    EXPERT_WEIGHT_NAMES,
    NF4Experts,
    dense_experts_classes,
    quantize_experts_,
    resident_weight_bytes,
    routed_expert_parameter_count,
)
from glmops_trainer.model.load import ArchitectureError, load_base_model
from glmops_trainer.model.targets import apply_lora
from glmops_trainer.tiny.models import build_tiny_model, tiny_config

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

ARCHES = [("glm4_moe", Variant.flagship), ("glm4_moe_lite", Variant.flash)]


def _dense_model(arch: str, seed: int = 0) -> nn.Module:
    from glmops_trainer.tiny.models import _instantiate

    torch.manual_seed(seed)
    return _instantiate(tiny_config(arch)).float().eval()  # type: ignore[arg-type]


def _input_ids(seed: int = 1, length: int = 48) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2000, (2, length), generator=generator)


@pytest.mark.parametrize(("arch", "variant"), ARCHES)
def test_experts_take_about_half_a_byte_per_parameter_and_the_dense_weights_are_freed(
    arch: str, variant: Variant
) -> None:
    model = _dense_model(arch)
    before = resident_weight_bytes(model)
    expert_params = routed_expert_parameter_count(model)
    dense_expert = model.model.layers[1].mlp.experts
    dense_refs = [weakref.ref(getattr(dense_expert, name)) for name in EXPERT_WEIGHT_NAMES]
    del dense_expert

    assert quantize_experts_(model) == 2
    gc.collect()
    after = resident_weight_bytes(model)

    assert all(ref() is None for ref in dense_refs), "the dense expert tensors are still alive"
    assert not any(isinstance(m, dense_experts_classes()) for m in model.modules())
    assert routed_expert_parameter_count(model) == expert_params
    bytes_per_param = after["nf4_experts"] / expert_params
    assert 0.5 < bytes_per_param <= 0.6
    # fp32 dense experts were 4 B/param; everything else is untouched
    assert before["fp32"] - after["fp32"] == 4 * expert_params


def experts_output_error(dense: nn.Module, quantized: nn.Module, hidden: torch.Tensor) -> float:
    """Relative error of the routed experts' output, both fed the same tokens and the same routing."""
    router = dense.mlp.gate
    _, weights, indices = router(hidden)
    with torch.no_grad():
        reference = dense.mlp.experts(hidden, indices, weights)
        output = quantized.mlp.experts(hidden, indices, weights)
    return ((output - reference).norm() / reference.norm()).item()


@pytest.mark.parametrize(("arch", "variant"), ARCHES)
def test_4bit_experts_reproduce_the_bf16_model_within_nf4_error(arch: str, variant: Variant) -> None:
    dense = _dense_model(arch)
    quantized = copy.deepcopy(dense)
    quantize_experts_(quantized)

    weight_errors, output_errors = [], []
    hidden = torch.randn(96, dense.config.hidden_size, generator=torch.Generator().manual_seed(2))
    for layer_dense, layer_q in zip(dense.model.layers[1:], quantized.model.layers[1:], strict=True):
        for name in EXPERT_WEIGHT_NAMES:
            original = getattr(layer_dense.mlp.experts, name)
            restored = layer_q.mlp.experts.dequantize(name, torch.float32)
            weight_errors.append(((restored - original).norm() / original.norm()).item())
        output_errors.append(experts_output_error(layer_dense, layer_q, hidden))
    weight_error = max(weight_errors)
    # NF4 on Gaussian weights: about 9% relative RMS error per weight
    assert 0.05 < weight_error < 0.11
    # same tokens, same routing: the output passes three quantized matrices (gate, up, down) whose
    # independent errors add in quadrature, sqrt(3) * e; allow 10% on top
    assert max(output_errors) < 1.1 * math.sqrt(3) * weight_error

    ids = _input_ids()
    with torch.no_grad():
        reference = dense(ids).logits
        logits = quantized(ids).logits
    logit_error = ((logits - reference).norm() / reference.norm()).item()
    print(
        f"{arch}: NF4 weight error {weight_error:.4f}, experts output error {max(output_errors):.4f}, "
        f"logit error {logit_error:.4f}"
    )
    # end to end the routing may flip for a few tokens; on these models the logits still move less
    # than the weights' own quantization error
    assert logit_error < 1.5 * weight_error


def test_forward_dequantizes_only_the_experts_that_received_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _dense_model("glm4_moe")
    quantize_experts_(model)
    calls: list[tuple[str, int]] = []
    original = NF4Experts.dequantize_expert

    def counting(self: NF4Experts, name: str, expert: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        calls.append((name, expert))
        return original(self, name, expert, dtype)

    monkeypatch.setattr(NF4Experts, "dequantize_expert", counting)
    with torch.no_grad():
        model(torch.tensor([[7]]))  # one token, top-2 routing, two MoE layers
    assert len(calls) == 2 * 2 * len(EXPERT_WEIGHT_NAMES)


@pytest.mark.parametrize(("arch", "variant"), ARCHES)
def test_lora_on_4bit_experts_equals_stock_peft_lora_on_the_same_weights_in_bf16(
    arch: str, variant: Variant
) -> None:
    """Our per-expert LoRA path must compute exactly what peft's parametrization computes on dense weights."""
    quantized = _dense_model(arch)
    quantize_experts_(quantized)
    # dense twin whose experts hold exactly the dequantized 4-bit weights
    twin = _dense_model(arch)
    for layer_q, layer_t in zip(quantized.model.layers[1:], twin.model.layers[1:], strict=True):
        for name in EXPERT_WEIGHT_NAMES:
            getattr(layer_t.mlp.experts, name).data.copy_(layer_q.mlp.experts.dequantize(name, torch.float32))

    lora = LoraConfig(rank=4, alpha=8, dropout=0.0, targets=[LoraTarget.experts])
    torch.manual_seed(5)
    peft_q = apply_lora(quantized, lora, variant)
    torch.manual_seed(5)
    peft_t = apply_lora(twin, lora, variant)
    generator = torch.Generator().manual_seed(9)
    for (name_q, param_q), (name_t, param_t) in zip(
        peft_q.named_parameters(), peft_t.named_parameters(), strict=True
    ):
        if param_q.requires_grad:
            assert name_q == name_t
            values = (
                torch.randn(param_q.shape, generator=generator) * 0.05
            )  # non-zero B, so the delta matters
            param_q.data.copy_(values)
            param_t.data.copy_(values)

    ids = _input_ids()
    loss_q = peft_q(input_ids=ids, labels=ids).loss
    loss_t = peft_t(input_ids=ids, labels=ids).loss
    torch.testing.assert_close(loss_q, loss_t, rtol=1e-4, atol=1e-5)
    loss_q.backward()
    loss_t.backward()
    grads_q = {n: p.grad for n, p in peft_q.named_parameters() if p.requires_grad}
    grads_t = {n: p.grad for n, p in peft_t.named_parameters() if p.requires_grad}
    assert len(grads_q) == 8  # lora_A and lora_B of gate_up_proj and down_proj, two MoE layers
    for name, grad in grads_q.items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, grads_t[name], rtol=1e-3, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "variant"), ARCHES)
def test_qlora_training_reduces_the_loss_and_updates_expert_lora(
    tmp_path: Path, arch: str, variant: Variant
) -> None:
    model_dir = build_tiny_model(arch, tmp_path / "model")  # type: ignore[arg-type]
    model = load_base_model(model_dir, variant, Method.qlora)
    peft_model = apply_lora(model, LoraConfig(rank=8, alpha=16), variant)
    expert_lora = {
        n: p.detach().clone()
        for n, p in peft_model.named_parameters()
        if "mlp.experts" in n and p.requires_grad
    }
    assert len(expert_lora) == 8
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=5e-3)
    peft_model.train()
    ids = _input_ids(length=64)
    losses = []
    for _ in range(12):
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses
    for name, before in expert_lora.items():
        after = dict(peft_model.named_parameters())[name]
        assert not torch.equal(before, after.detach()), f"{name} did not train"


def test_loader_quantizes_linears_and_experts_while_loading(tmp_path: Path) -> None:
    model_dir = build_tiny_model("glm4_moe", tmp_path / "model", num_shards=2)
    model = load_base_model(model_dir, Variant.flagship, Method.qlora)
    layers = model.model.layers
    assert isinstance(layers[0].self_attn.q_proj, Linear4bit)
    assert isinstance(layers[0].mlp.gate_proj, Linear4bit)
    assert isinstance(layers[1].mlp.shared_experts.down_proj, Linear4bit)
    assert all(isinstance(layer.mlp.experts, NF4Experts) for layer in layers[1:])
    assert not isinstance(model.lm_head, Linear4bit)
    assert not any(p.requires_grad for p in model.parameters())
    assert model.is_loaded_in_4bit

    # what was quantized on load is exactly what quantizing the dense checkpoint gives
    dense = load_base_model(model_dir, Variant.flagship, Method.lora, gradient_checkpointing=False)
    quantize_experts_(dense)
    for layer_loaded, layer_dense in zip(layers[1:], dense.model.layers[1:], strict=True):
        for name in EXPERT_WEIGHT_NAMES:
            # one row per expert: codes and every quantization statistic
            assert torch.equal(
                getattr(layer_loaded.mlp.experts, name), getattr(layer_dense.mlp.experts, name)
            )
    bytes_by_kind = resident_weight_bytes(model)
    assert bytes_by_kind["nf4_experts"] > 0 and bytes_by_kind["nf4_linear"] > 0 and bytes_by_kind["bf16"] == 0


def test_lora_method_loads_dense_and_frozen(tmp_path: Path) -> None:
    model_dir = build_tiny_model("glm4_moe_lite", tmp_path / "model")
    model = load_base_model(model_dir, Variant.flash, Method.lora)
    assert isinstance(model.model.layers[1].mlp.experts, dense_experts_classes())
    assert not any(p.requires_grad for p in model.parameters())
    assert model.dtype == torch.float32  # CPU computes in float32


@pytest.mark.parametrize(
    ("arch", "wrong_variant", "hint"),
    [("glm4_moe_lite", Variant.flagship, "'flash'"), ("glm4_moe", Variant.flash, "'flagship'")],
)
def test_variant_and_checkpoint_must_agree(
    tmp_path: Path, arch: str, wrong_variant: Variant, hint: str
) -> None:
    model_dir = build_tiny_model(arch, tmp_path / "model")  # type: ignore[arg-type]
    with pytest.raises(ArchitectureError) as info:
        load_base_model(model_dir, wrong_variant, Method.qlora)
    message = str(info.value)
    assert message.startswith("spec.model.variant: ") and f"set spec.model.variant to {hint}" in message


def test_merging_into_4bit_experts_is_refused_with_the_way_out() -> None:
    model = _dense_model("glm4_moe")
    quantize_experts_(model)
    peft_model = apply_lora(
        model, LoraConfig(rank=4, dropout=0.0, targets=[LoraTarget.experts]), Variant.flagship
    )
    with pytest.raises(NotImplementedError, match="load the base model in bf16"):
        peft_model.merge_and_unload()
