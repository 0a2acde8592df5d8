"""An evaluation pass in the middle of QLoRA training leaves the 4-bit layers trainable (CPU with AVX512-BF16)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_support import build_model, build_tokenizer


def test_gradients_after_an_evaluation_equal_those_before(tmp_path: Path) -> None:
    from bitsandbytes.nn import modules as bnb_modules

    if not bnb_modules.has_avx512bf16():  # type: ignore[attr-defined, no-untyped-call]
        pytest.skip("bitsandbytes repacks 4-bit weights for inference only on CPUs with AVX512-BF16")
    from glmops_trainer.config import LoraConfig, Method, Variant
    from glmops_trainer.model.load import load_base_model
    from glmops_trainer.model.targets import apply_lora
    from glmops_trainer.train import keep_4bit_layers_trainable

    model_dir = build_model("glm4_moe", tmp_path / "model", build_tokenizer(tmp_path / "tokenizer"))
    base = load_base_model(model_dir, Variant.flagship, Method.qlora, gradient_checkpointing=False)
    model = apply_lora(base, LoraConfig(dropout=0.0), Variant.flagship)
    assert keep_4bit_layers_trainable(model) > 0
    ids = torch.randint(0, 2000, (1, 64), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids, "use_cache": False}

    def first_layer_lora_grad() -> torch.Tensor:
        model.train()
        model.zero_grad()
        model(**batch).loss.backward()
        # lora_B of the first layer: its gradient passes back through every 4-bit layer above it.
        grad = next(p.grad for n, p in model.named_parameters() if "layers.0.self_attn.q_proj.lora_B" in n)
        assert grad is not None
        return grad.clone()

    before = first_layer_lora_grad()
    model.eval()
    with torch.no_grad():
        model(**batch)  # what Trainer's evaluation does
    after = first_layer_lora_grad()

    assert before.norm() > 0
    torch.testing.assert_close(after, before, rtol=0, atol=0)
