"""The trainer's data pipeline: file -> validated samples -> official-template tokens -> packed rows.

`prepare_dataset` is the one entry point `train.py` calls, after the tokenizer is loaded and before
the model is: it reads top to bottom as detect format, validate, render, check length, split, pack.
Every problem in the data is reported as `FILE:LINE: FIELD: what is wrong (how to fix it)`; the run
stops with a `DataValidationError` when more than `dataset.maxErrorFraction` of samples are invalid,
and otherwise trains on the valid ones (the report says which were dropped).

Modules: `reader` (lines and records), `formats` (openai-chat, sharegpt, alpaca, text ->
`Conversation`), `validate` (structure checks), `render` (chat template, labels), `packing`,
`collate` (datasets and collators for transformers' Trainer).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from torch.utils.data import Dataset

from glmops_trainer.config import DataConfig, DataFormat
from glmops_trainer.data.collate import (
    Features,
    PackedCollator,
    PackedDataset,
    PaddingCollator,
    SampleDataset,
)
from glmops_trainer.data.conversation import Conversation, TextSample
from glmops_trainer.data.issues import DataValidationError, Issue, IssueKind, ValidationReport
from glmops_trainer.data.packing import pack_samples, packing_stats
from glmops_trainer.data.render import IGNORE_INDEX, ChatRenderer, ChatTokenizer, RenderedSample, RenderError
from glmops_trainer.data.validate import load_and_validate

__all__ = [
    "DataStats", "DataValidationError", "PreparedData", "ValidationReport", "prepare_dataset",
]


@dataclass(frozen=True)
class DataStats:
    """What the prepared data holds, for logs and progress reports."""

    data_format: DataFormat
    train_samples: int
    eval_samples: int
    train_rows: int
    eval_rows: int
    train_tokens: int
    train_label_tokens: int
    longest_sample: int
    packing_efficiency: float | None
    """Share of packed row positions that hold real tokens; None without packing (padding is per batch)."""

    def describe(self) -> str:
        """One line for the log."""
        efficiency = f", packing efficiency {self.packing_efficiency:.1%}" if self.packing_efficiency is not None else ""
        return (
            f"{self.data_format.value}: {self.train_samples} train / {self.eval_samples} eval samples in "
            f"{self.train_rows} / {self.eval_rows} rows; {self.train_tokens} train tokens, "
            f"{self.train_label_tokens} learned; longest sample {self.longest_sample} tokens{efficiency}"
        )


@dataclass
class PreparedData:
    """Datasets and collator for transformers' Trainer, plus the validation report and statistics."""

    train: Dataset[Features]
    eval: Dataset[Features] | None
    collator: PackedCollator | PaddingCollator
    report: ValidationReport
    stats: DataStats


def prepare_dataset(
    path: Path, cfg: DataConfig, tokenizer: Any, sequence_length: int, seed: int
) -> PreparedData:
    """Validate, render (official chat template), length-check, split and pack `path` for training.

    `path` is the local dataset file (`cfg.source` already fetched). Raises DataValidationError when
    the file cannot be read or more than `cfg.max_error_fraction` of its samples are invalid.
    """
    loaded = load_and_validate(path, cfg.format)
    report = loaded.report
    report.raise_if_over(cfg.max_error_fraction)

    renderer = ChatRenderer(tokenizer, cfg.thinking)
    rendered: list[RenderedSample] = []
    for sample in loaded.samples:
        if isinstance(sample, TextSample):
            rendered.extend(renderer.render_text(sample, sequence_length))
            continue
        issue = _render_problem(renderer, sample, sequence_length, rendered)
        if issue is not None:
            report.reclassify_invalid([issue])
    report.raise_if_over(cfg.max_error_fraction)

    train, held_out = _split(rendered, cfg.validation_split, seed)
    pad_token_id = _pad_token_id(tokenizer)
    if cfg.packing:
        train_rows = pack_samples(train, sequence_length, pad_token_id, seed)
        eval_rows = pack_samples(held_out, sequence_length, pad_token_id, seed)
        train_set: Dataset[Features] = PackedDataset(train_rows)
        eval_set: Dataset[Features] | None = PackedDataset(eval_rows) if eval_rows else None
        collator: PackedCollator | PaddingCollator = PackedCollator()
        efficiency: float | None = packing_stats(train_rows, sequence_length).efficiency
        row_counts = (len(train_rows), len(eval_rows))
    else:
        train_set = SampleDataset(train)
        eval_set = SampleDataset(held_out) if held_out else None
        collator = PaddingCollator(pad_token_id)
        efficiency = None
        row_counts = (len(train), len(held_out))
    stats = DataStats(
        data_format=loaded.data_format,
        train_samples=len(train),
        eval_samples=len(held_out),
        train_rows=row_counts[0],
        eval_rows=row_counts[1],
        train_tokens=sum(len(sample) for sample in train),
        train_label_tokens=sum(sum(1 for label in sample.labels if label != IGNORE_INDEX) for sample in train),
        longest_sample=max((len(sample) for sample in rendered), default=0),
        packing_efficiency=efficiency,
    )
    return PreparedData(train_set, eval_set, collator, report, stats)


def _render_problem(
    renderer: ChatRenderer, sample: Conversation, sequence_length: int, rendered: list[RenderedSample]
) -> Issue | None:
    """Render one conversation into `rendered`, or return why it cannot be trained on."""
    try:
        result = renderer.render(sample)
    except RenderError as exc:
        return Issue(sample.source, IssueKind.render_failed, str(exc), "fix the conversation or the chat template")
    except (jinja2.TemplateError, TypeError, ValueError) as exc:  # the template itself raised
        return Issue(
            sample.source, IssueKind.render_failed, f"the chat template failed: {exc}",
            "check the conversation's fields against the OpenAI chat format",
        )
    if len(result) > sequence_length:
        return Issue(
            sample.source, IssueKind.too_long,
            f"sample is {len(result)} tokens, longer than training.sequenceLength={sequence_length}",
            "shorten or split the conversation, or raise training.sequenceLength",
        )
    rendered.append(result)
    return None


def _split(
    samples: list[RenderedSample], validation_split: float, seed: int
) -> tuple[list[RenderedSample], list[RenderedSample]]:
    """Seeded shuffle, then hold out `validation_split` of the samples (at least one, never all)."""
    shuffled = list(samples)
    random.Random(seed).shuffle(shuffled)
    held_out = round(len(shuffled) * validation_split)
    if validation_split > 0 and len(shuffled) >= 2:
        held_out = min(max(held_out, 1), len(shuffled) - 1)
    else:
        held_out = 0
    return shuffled[held_out:], shuffled[:held_out]


def _pad_token_id(tokenizer: ChatTokenizer) -> int:
    for candidate in (getattr(tokenizer, "pad_token_id", None), tokenizer.eos_token_id):
        if isinstance(candidate, int):
            return candidate
    raise DataValidationError("the tokenizer has neither a pad nor an eos token; set pad_token in tokenizer_config.json")
