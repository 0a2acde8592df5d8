"""The causal-LM loss a chunk of tokens at a time, without ever holding the whole sequence's logits.

transformers computes `lm_head(hidden)` for every token, upcasts the logits to fp32 and runs
cross-entropy: at 8192 tokens and GLM-4.7's 151552-token vocabulary that is three fp32 tensors of
4.6 GiB at the loss's peak, on every GPU of an FSDP run. `LinearCrossEntropy` computes, per chunk of
`LOSS_CHUNK_TOKENS` tokens, the logits, the summed loss and at once the gradient of the hidden
states (`(softmax - onehot) @ W`), then drops the chunk's logits; backward only scales the stored
gradient. The lm_head is frozen in LoRA training, so no weight gradient is needed. The result is the
loss transformers' `ForCausalLMLoss` gives (labels shifted by one, -100 ignored, summed and divided by
`num_items_in_batch` when the trainer passes it, else averaged over the counted tokens).

`use_chunked_loss(model)` installs it on a GLM-4.7 causal LM: the lm_head becomes a
`ChunkedLossHead` (same `weight` parameter, same name, so checkpoints and FSDP see the same
tensor), and the model's forward asks the head for the loss instead of the logits when labels are
given. Going through the head module matters under FSDP: its hooks gather the sharded lm_head weight
for exactly this call.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from glmops.plan.memory import LOSS_CHUNK_TOKENS

IGNORE_INDEX = -100


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` against `targets`, computed chunk by chunk; `weight` is frozen."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int
    ) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, hidden.shape[0], chunk_tokens):
            rows = slice(start, start + chunk_tokens)
            # the same matmul lm_head does (autocast applies alike), then fp32 as transformers' loss upcasts
            logits = torch.nn.functional.linear(hidden[rows], weight).float()
            target = targets[rows]
            counted = target != IGNORE_INDEX
            safe_target = torch.where(counted, target, 0)
            log_norm = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, safe_target[:, None]).squeeze(1)
            total += ((log_norm - picked) * counted).sum()
            if grad_hidden is not None:
                # d loss / d logits = softmax - onehot on counted tokens, 0 elsewhere; reuse the logits' memory
                probabilities = logits.sub_(log_norm[:, None]).exp_()
                probabilities[torch.arange(probabilities.shape[0], device=hidden.device), safe_target] -= 1.0
                probabilities.mul_(counted[:, None])
                grad_hidden[rows] = torch.nn.functional.linear(probabilities.to(weight.dtype), weight.t()).to(
                    hidden.dtype
                )
            del logits
        ctx.save_for_backward(grad_hidden if grad_hidden is not None else torch.empty(0))
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (grad_hidden,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        return grad_hidden * grad_total.to(grad_hidden.dtype), None, None, None


def causal_lm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    num_items_in_batch: torch.Tensor | int | None = None,
    chunk_tokens: int = LOSS_CHUNK_TOKENS,
) -> torch.Tensor:
    """transformers' causal-LM loss of `hidden` (B, T, H) through the frozen head `weight` (V, H), chunked."""
    if weight.requires_grad:
        raise ValueError("the chunked loss computes no lm_head gradient; it is for LoRA training with a frozen head")
    targets = nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1).to(hidden.device)
    # Only the tokens that count reach the head: in agentic data most are prompt, tool output or
    # padding (about 70% in the benchmark's set), and their logits would be computed to be masked out.
    # index_select's backward scatters the gradient back; the rest of the sequence gets zeros, as before.
    counted = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    flat = hidden.reshape(-1, hidden.shape[-1]).index_select(0, counted)
    total = LinearCrossEntropy.apply(flat, weight, targets.index_select(0, counted), chunk_tokens)
    if num_items_in_batch is not None:
        divisor = num_items_in_batch.to(total.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
        return total / divisor  # type: ignore[no-any-return]
    return total / counted.numel()  # type: ignore[no-any-return]


class ChunkedLossHead(nn.Module):
    """A bias-free lm_head that returns logits, or, given labels, the chunked loss."""

    def __init__(self, head: nn.Linear, chunk_tokens: int = LOSS_CHUNK_TOKENS) -> None:
        super().__init__()
        if head.bias is not None:
            raise ValueError("ChunkedLossHead: GLM-4.7's lm_head has no bias; got one")
        self.weight = head.weight
        self.in_features, self.out_features = head.in_features, head.out_features
        self.chunk_tokens = chunk_tokens

    def forward(
        self,
        hidden: torch.Tensor,
        labels: torch.Tensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Logits of `hidden`; with `labels`, the loss instead."""
        if labels is None:
            return torch.nn.functional.linear(hidden, self.weight)
        return causal_lm_loss(hidden, self.weight, labels, num_items_in_batch, self.chunk_tokens)


def _forward_with_chunked_loss(
    self: Any,
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    past_key_values: Any = None,
    inputs_embeds: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    use_cache: bool | None = None,
    logits_to_keep: int | torch.Tensor = 0,
    **kwargs: Any,
) -> Any:
    if labels is None:
        return self._forward_with_logits(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
            logits_to_keep=logits_to_keep, **kwargs,
        )  # fmt: skip
    num_items_in_batch = kwargs.pop("num_items_in_batch", None)
    outputs = self.model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
        past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs,
    )  # fmt: skip
    loss = self.lm_head(outputs.last_hidden_state, labels=labels, num_items_in_batch=num_items_in_batch)
    return CausalLMOutputWithPast(loss=loss, logits=None, past_key_values=outputs.past_key_values)


def use_chunked_loss(model: nn.Module, chunk_tokens: int = LOSS_CHUNK_TOKENS) -> nn.Module:
    """Make a GLM-4.7 causal LM compute its training loss with `ChunkedLossHead`; returns the model."""
    head = model.get_output_embeddings()
    if isinstance(head, ChunkedLossHead):
        return model
    if type(head) is not nn.Linear:
        raise TypeError(f"use_chunked_loss: expected the lm_head to be an nn.Linear, got {type(head).__name__}")
    model.lm_head = ChunkedLossHead(head, chunk_tokens)
    model._forward_with_logits = model.forward
    model.forward = types.MethodType(_forward_with_chunked_loss, model)
    return model
