"""Per-sample attention over packed rows computes what transformers' masked sdpa computes, gradients included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from train_support import ARCH_VARIANTS, build_model, build_tokenizer

from glmops_trainer.packed_attention import PACKED_ATTENTION, register_packed_attention, sample_segments


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def test_segments_start_where_positions_restart() -> None:
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 0, 1]])

    assert sample_segments(positions) == [[(0, 3), (3, 5), (5, 9)], [(0, 7), (7, 9)]]


def test_a_row_not_starting_at_zero_is_still_covered() -> None:
    assert sample_segments(torch.tensor([[5, 6, 0, 1]])) == [[(0, 2), (2, 4)]]


def packed_batch(vocab: int, rows: int = 2, length: int = 96) -> dict[str, Any]:
    """Random tokens in rows of several samples each (the last one short, like padding)."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab, (rows, length), generator=generator)
    splits = [[40, 30, 26], [10, 50, 36]]
    position_ids = torch.cat([torch.cat([torch.arange(n) for n in splits[r]]).unsqueeze(0) for r in range(rows)])
    # use_cache=False as in training: with a cache transformers skips its packed-sequence detection.
    return {"input_ids": input_ids, "position_ids": position_ids, "labels": input_ids.clone(), "use_cache": False}


@pytest.mark.parametrize("arch", sorted(ARCH_VARIANTS))
def test_logits_and_gradients_match_masked_sdpa(arch: str, tokenizer_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model_dir = build_model(arch, tmp_path / "model", tokenizer_dir)
    # Routing in the MoE layers is discontinuous: compare in float64 so that no top-k choice flips
    # (the eager experts loop, since grouped_mm has no float64 kernel).
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float64, attn_implementation="sdpa", experts_implementation="eager"
    )
    batch = packed_batch(model.config.vocab_size)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        out = model(**batch)
        out.loss.backward()
        attention = next(m for n, m in model.named_modules() if n.endswith("layers.0.self_attn"))
        grad = next(p.grad for p in attention.parameters() if p.grad is not None)
        return out.logits.detach(), grad.detach().clone()

    reference_logits, reference_grad = run()
    model.set_attn_implementation(register_packed_attention())
    assert model.config._attn_implementation == PACKED_ATTENTION
    logits, grad = run()

    torch.testing.assert_close(logits, reference_logits, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-8, atol=1e-10)


def test_samples_do_not_see_each_other(tokenizer_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model_dir = build_model("glm4_moe", tmp_path / "model", tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64, experts_implementation="eager")
    model.set_attn_implementation(register_packed_attention())
    batch = packed_batch(model.config.vocab_size, rows=1)
    changed = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    changed["input_ids"][0, :40] = (changed["input_ids"][0, :40] + 1) % model.config.vocab_size  # first sample only

    with torch.no_grad():
        original, edited = model(**batch).logits, model(**changed).logits

    assert not torch.allclose(original[0, :40], edited[0, :40])
    torch.testing.assert_close(original[0, 40:], edited[0, 40:], rtol=0, atol=0)


def test_generation_with_a_cache_is_refused(tokenizer_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model_dir = build_model("glm4_moe", tmp_path / "model", tokenizer_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.set_attn_implementation(register_packed_attention())

    with pytest.raises(RuntimeError, match="attn_implementation='sdpa' for generation"):
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False)
