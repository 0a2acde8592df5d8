"""Attention over packed rows that computes each sample's own causal block only.

A packed row holds several samples back to back; `position_ids` restart at 0 where a sample
starts and no attention mask is passed. With `sdpa`, transformers turns that into a
block-diagonal boolean mask over the whole row: correct, but every layer then computes the full
L x L score matrix (most of it masked out) on a slow masked kernel, which costs more than packing
saves. `flash_attention_2` reads the same position_ids as variable-length boundaries and skips
the masked blocks, but needs the flash-attn package and a GPU.

`packed_sdpa_attention` does what flash attention's varlen path does with plain PyTorch: it
splits each row at the sample starts and runs `scaled_dot_product_attention(is_causal=True)` on
every sample separately, so the work is the sum of the squared sample lengths and each call takes
sdpa's fastest causal kernel. Results equal the masked `sdpa` ones (tested). Registered under
`PACKED_ATTENTION` in transformers' `AttentionInterface`; because the name has no mask function,
transformers builds no mask for it at all. Training only: there is no KV-cache support.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

PACKED_ATTENTION = "glmops_packed_sdpa"
"""The attn_implementation name under which `packed_sdpa_attention` is registered."""

Segments = list[list[tuple[int, int]]]


def sample_segments(position_ids: torch.Tensor) -> Segments:
    """Per row, the [start, end) spans of its samples: a new one begins wherever a position is 0."""
    rows = position_ids.reshape(-1, position_ids.shape[-1]).tolist()
    length = position_ids.shape[-1]
    segments: Segments = []
    for row in rows:
        starts = [index for index, position in enumerate(row) if position == 0]
        if not starts or starts[0] != 0:
            starts.insert(0, 0)
        segments.append(list(zip(starts, [*starts[1:], length], strict=True)))
    return segments


class _SegmentsOfCurrentBatch:
    """Segments of the position_ids tensor being processed, computed once for all layers.

    Every layer of one forward (and its recomputation under gradient checkpointing) receives the
    same position_ids object; a weak reference keys the entry, so a new batch never sees stale
    segments and the entry never keeps a batch alive.
    """

    def __init__(self) -> None:
        self._tensor: weakref.ref[torch.Tensor] | None = None
        self._segments: Segments = []

    def get(self, position_ids: torch.Tensor) -> Segments:
        if self._tensor is None or self._tensor() is not position_ids:
            self._segments = sample_segments(position_ids)
            self._tensor = weakref.ref(position_ids)
        return self._segments


_segments_cache = _SegmentsOfCurrentBatch()


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed sample; inputs (batch, heads, seq, dim), output (batch, seq, heads, dim)."""
    batch, heads, length, _ = query.shape
    if key.shape[2] != length or attention_mask is not None:
        raise RuntimeError(
            f"{PACKED_ATTENTION} is for training on packed rows (no KV cache, no attention mask); "
            "load the model with attn_implementation='sdpa' for generation"
        )
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        segments: Segments = [[(0, length)]] * batch
    else:
        segments = _segments_cache.get(position_ids)
        if len(segments) == 1 and batch > 1:
            segments = segments * batch  # position_ids shared by every row
    groups = heads // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    dropout_p = dropout if module.training else 0.0
    rows = []
    for index in range(batch):
        parts = [
            F.scaled_dot_product_attention(
                query[index : index + 1, :, start:end],
                key[index : index + 1, :, start:end],
                value[index : index + 1, :, start:end],
                dropout_p=dropout_p,
                is_causal=True,
                scale=scaling,
            )
            for start, end in segments[index]
        ]
        rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=2))
    output = rows[0] if batch == 1 else torch.cat(rows, dim=0)
    return output.transpose(1, 2).contiguous(), None


def register_packed_attention() -> str:
    """Register `packed_sdpa_attention` with transformers (idempotent); returns its implementation name."""
    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_attention)
    return PACKED_ATTENTION
