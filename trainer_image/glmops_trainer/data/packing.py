"""Packing rendered samples into full sequences without attention between them.

Each packed sequence is exactly `sequence_length` tokens: whole samples placed best-fit (longest
first), the rest padding. `position_ids` restart at 0 for every sample (and for the padding), and
no `attention_mask` is passed. transformers' mask utilities then detect the packed layout
(`masking_utils.find_packed_sequence_indices`: a new sequence starts wherever a position is not the
previous one plus 1) and build a block-diagonal causal mask for sdpa and eager attention (flash
attention reads the same position_ids as varlen boundaries). RoPE sees each sample's own positions,
so a packed sample computes what it computes alone. transformers only looks for packing when no KV
cache is passed: train with `use_cache=False` (TrainingArguments.use_cache defaults to False and
the Trainer copies it into the model config; a bare forward in eval mode would build a cache).

The first token of every sample is never a label: the model shifts labels by one, and that label
would be predicted from the previous sample's last token.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass

from glmops_trainer.data.render import IGNORE_INDEX, RenderedSample


@dataclass(frozen=True)
class PackedSequence:
    """One training row: several samples back to back, then padding."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    sample_lengths: tuple[int, ...]
    """Lengths of the samples in this row, in order (padding excluded)."""


@dataclass(frozen=True)
class PackingStats:
    """How well rows are filled."""

    samples: int
    sequences: int
    sequence_length: int
    real_tokens: int
    label_tokens: int

    @property
    def padding_tokens(self) -> int:
        """Tokens spent on padding."""
        return self.sequences * self.sequence_length - self.real_tokens

    @property
    def efficiency(self) -> float:
        """Share of row positions holding real tokens (1.0 = no padding)."""
        total = self.sequences * self.sequence_length
        return self.real_tokens / total if total else 0.0


def pack_samples(
    samples: Sequence[RenderedSample], sequence_length: int, pad_token_id: int, seed: int = 0
) -> list[PackedSequence]:
    """Best-fit-decreasing packing into rows of exactly `sequence_length`; rows come out in seeded random order."""
    too_long = [len(sample) for sample in samples if len(sample) > sequence_length]
    if too_long:
        raise ValueError(
            f"{len(too_long)} sample(s) are longer than sequence_length={sequence_length} (longest: {max(too_long)}); "
            "drop them before packing"
        )
    order = sorted(range(len(samples)), key=lambda index: len(samples[index]), reverse=True)
    bins: list[list[int]] = []
    # (free space, bin index), kept sorted: the best fit is the first bin whose free space suffices.
    free: list[tuple[int, int]] = []
    for index in order:
        length = len(samples[index])
        slot = bisect.bisect_left(free, (length, -1))
        if slot < len(free):
            space, bin_index = free.pop(slot)
        else:
            space, bin_index = sequence_length, len(bins)
            bins.append([])
        bins[bin_index].append(index)
        bisect.insort(free, (space - length, bin_index))
    random.Random(seed).shuffle(bins)
    return [_build_row([samples[i] for i in members], sequence_length, pad_token_id) for members in bins]


def _build_row(members: list[RenderedSample], sequence_length: int, pad_token_id: int) -> PackedSequence:
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for sample in members:
        input_ids.extend(sample.input_ids)
        labels.append(IGNORE_INDEX)
        labels.extend(sample.labels[1:])
        position_ids.extend(range(len(sample)))
    padding = sequence_length - len(input_ids)
    input_ids.extend([pad_token_id] * padding)
    labels.extend([IGNORE_INDEX] * padding)
    # Padding forms its own segment (positions from 0), so no real token attends to it.
    position_ids.extend(range(padding))
    return PackedSequence(input_ids, labels, position_ids, tuple(len(sample) for sample in members))


def packing_stats(rows: Sequence[PackedSequence], sequence_length: int) -> PackingStats:
    """Counts of samples, rows, real and labelled tokens."""
    return PackingStats(
        samples=sum(len(row.sample_lengths) for row in rows),
        sequences=len(rows),
        sequence_length=sequence_length,
        real_tokens=sum(sum(row.sample_lengths) for row in rows),
        label_tokens=sum(sum(1 for label in row.labels if label != IGNORE_INDEX) for row in rows),
    )
