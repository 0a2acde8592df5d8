"""The chunked loss holds what the memory plan says: one chunk's logits, for the tokens that count only.

The plan's loss term (`plan_memory(...).logits_gib`) is checked against the peak of torch's CPU
allocator during the loss's forward and backward; the values themselves are checked against
transformers' loss in test_model_sharded.py.
"""

from __future__ import annotations

import torch
from train_support import peak_allocated_bytes_during

from glmops.plan.memory import LOSS_CHUNK_TOKENS, ModelDims, plan_memory
from glmops_trainer.model.chunked_loss import IGNORE_INDEX, causal_lm_loss
from glmops_trainer.tiny.models import tiny_config

TOKENS = 4096
DIMS = ModelDims.from_hf_config(tiny_config("glm4_moe_lite", vocab_size=8192).to_dict())


def _loss_peak(labels: torch.Tensor, chunk_tokens: int) -> int:
    """Peak bytes allocated while the loss of random fp32 hidden states is computed and back-propagated."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(DIMS.vocab_size, DIMS.hidden_size, generator=generator) * 0.02
    hidden = torch.randn(1, TOKENS, DIMS.hidden_size, generator=generator).requires_grad_()

    def step() -> None:
        causal_lm_loss(hidden, weight, labels, chunk_tokens=chunk_tokens).backward()
        hidden.grad = None

    return peak_allocated_bytes_during(1, step)


def _labels(counted_share: float) -> torch.Tensor:
    labels = torch.randint(0, DIMS.vocab_size, (1, TOKENS), generator=torch.Generator().manual_seed(1))
    counted = torch.rand(1, TOKENS, generator=torch.Generator().manual_seed(2)) < counted_share
    return torch.where(counted, labels, IGNORE_INDEX)


def test_the_plans_loss_term_bounds_the_chunked_loss_and_is_far_below_the_whole_sequences_logits() -> None:
    plan = plan_memory(
        variant="flash", method="qlora", lora_rank=16, targets=["attention"], sequence_length=TOKENS,
        micro_batch_size=1, gpus=1, dims=DIMS, compute_bytes=4, runtime_overhead_gib=0.0,
    )  # fmt: skip
    planned = plan.logits_gib * 1024**3
    measured = _loss_peak(_labels(1.0), LOSS_CHUNK_TOKENS)
    whole_sequence = TOKENS * DIMS.vocab_size * 12  # fp32 logits, log-softmax and gradient of every token
    print(f"loss peak: measured {measured / 2**20:.1f} MiB, planned {planned / 2**20:.1f} MiB")
    assert 0.75 * planned <= measured <= 1.1 * planned
    assert planned < whole_sequence / 3


def test_only_the_tokens_that_count_reach_the_head() -> None:
    """With one chunk as long as the sequence, the head's logits are as many as the counted tokens:
    at 10% counted the peak is a fraction of the all-counted one (it was the same before the head
    skipped prompt, tool-result and padding tokens)."""
    everything = _loss_peak(_labels(1.0), TOKENS)
    tenth = _loss_peak(_labels(0.1), TOKENS)
    assert tenth < 0.25 * everything
