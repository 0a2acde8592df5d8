"""Datasets and collators in the shape transformers' Trainer consumes.

Packed rows carry `input_ids`, `labels` and `position_ids` and no `attention_mask` (see
`packing.py` for why that gives block-diagonal attention). Unpacked samples are padded per batch on
the right with an `attention_mask`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from glmops_trainer.data.packing import PackedSequence
from glmops_trainer.data.render import IGNORE_INDEX, RenderedSample

Features = dict[str, list[int]]
Batch = dict[str, torch.Tensor]


class PackedDataset(Dataset[Features]):
    """Packed rows, one row per item."""

    def __init__(self, rows: Sequence[PackedSequence]) -> None:
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Features:
        row = self.rows[index]
        return {"input_ids": row.input_ids, "labels": row.labels, "position_ids": row.position_ids}


class SampleDataset(Dataset[Features]):
    """Rendered samples of varying length, one sample per item (for packing: false)."""

    def __init__(self, samples: Sequence[RenderedSample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Features:
        sample = self.samples[index]
        return {"input_ids": sample.input_ids, "labels": sample.labels}


class PackedCollator:
    """Stacks packed rows (all the same length) into tensors; deliberately no attention_mask."""

    def __call__(self, features: Sequence[Features]) -> Batch:
        lengths = {len(feature["input_ids"]) for feature in features}
        if len(lengths) != 1:
            raise ValueError(f"packed rows must have one length, got {sorted(lengths)}")
        return {
            key: torch.tensor([feature[key] for feature in features], dtype=torch.long)
            for key in ("input_ids", "labels", "position_ids")
        }


class PaddingCollator:
    """Pads samples on the right to the batch's longest (optionally a multiple of `pad_to_multiple_of`)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[Features]) -> Batch:
        longest = max(len(feature["input_ids"]) for feature in features)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids, labels, attention_mask = [], [], []
        for feature in features:
            padding = longest - len(feature["input_ids"])
            input_ids.append(list(feature["input_ids"]) + [self.pad_token_id] * padding)
            labels.append(list(feature["labels"]) + [IGNORE_INDEX] * padding)
            attention_mask.append([1] * len(feature["input_ids"]) + [0] * padding)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "attention_mask": torch.tensor(attention_mask, dtype=torch.long),
        }
