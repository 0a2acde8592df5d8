"""Packing: full rows, no attention across samples, and the whole pipeline feeding transformers' Trainer."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)

from glmops_trainer.config import DataConfig, DataFormat, Thinking
from glmops_trainer.data import prepare_dataset
from glmops_trainer.data.collate import PackedCollator, PackedDataset, PaddingCollator, SampleDataset
from glmops_trainer.data.packing import pack_samples, packing_stats
from glmops_trainer.data.render import IGNORE_INDEX, RenderedSample
from glmops_trainer.tiny.models import TinyArch, tiny_config
from glmops_trainer.tiny.tokenizer import build_tiny_tokenizer

DATASETS = Path(__file__).parent.parent / "data" / "datasets"


def random_sample(length: int, rng: random.Random) -> RenderedSample:
    ids = [rng.randrange(0, 2000) for _ in range(length)]
    return RenderedSample(ids, [IGNORE_INDEX] * 3 + ids[3:])


def tiny_model(arch: TinyArch, attention: str) -> PreTrainedModel:
    torch.manual_seed(0)
    config = tiny_config(arch, num_hidden_layers=2)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attention, dtype=torch.float32).eval()


def test_rows_are_exactly_sequence_length_and_hold_every_sample_once() -> None:
    rng = random.Random(1)
    samples = [random_sample(length, rng) for length in (60, 5, 33, 64, 17, 40, 29, 8, 50)]
    rows = pack_samples(samples, sequence_length=64, pad_token_id=2012, seed=3)
    assert all(len(row.input_ids) == len(row.labels) == len(row.position_ids) == 64 for row in rows)
    assert sorted(length for row in rows for length in row.sample_lengths) == sorted(len(s) for s in samples)
    # Best fit decreasing needs ceil(306 / 64) = 5 rows here; first come, first served would need 6.
    assert len(rows) == 5
    stats = packing_stats(rows, 64)
    assert (stats.samples, stats.real_tokens, stats.padding_tokens) == (9, 306, 14)
    assert stats.efficiency == pytest.approx(306 / 320)


def test_positions_restart_per_sample_and_no_label_crosses_a_boundary() -> None:
    rng = random.Random(2)
    first, second = random_sample(10, rng), random_sample(7, rng)
    first = RenderedSample(first.input_ids, first.input_ids)  # fully labelled, even its first token
    second = RenderedSample(second.input_ids, second.input_ids)
    (row,) = pack_samples([first, second], sequence_length=20, pad_token_id=0)
    assert row.sample_lengths == (10, 7)
    assert row.position_ids == list(range(10)) + list(range(7)) + list(range(3))
    # The model predicts labels[t+1] from position t, so a sample's first token is never a target.
    assert row.labels[0] == IGNORE_INDEX and row.labels[10] == IGNORE_INDEX
    assert row.labels[1:10] == first.input_ids[1:] and row.labels[11:17] == second.input_ids[1:]
    assert row.input_ids[17:] == [0, 0, 0] and row.labels[17:] == [IGNORE_INDEX] * 3


def test_a_sample_longer_than_the_row_is_refused() -> None:
    with pytest.raises(ValueError, match="longer than sequence_length=8"):
        pack_samples([random_sample(9, random.Random(0))], sequence_length=8, pad_token_id=0)


@pytest.mark.parametrize("arch", ["glm4_moe", "glm4_moe_lite"])
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_logits_equal_each_sample_run_alone(arch: TinyArch, attention: str) -> None:
    rng = random.Random(4)
    samples = [random_sample(length, rng) for length in (23, 31, 9)]
    (row,) = pack_samples(samples, sequence_length=72, pad_token_id=0)
    model = tiny_model(arch, attention)
    batch = PackedCollator()([PackedDataset([row])[0]])
    assert "attention_mask" not in batch
    with torch.no_grad():
        # use_cache=False as in training (Trainer sets it): with a KV cache transformers skips packed detection.
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for length in row.sample_lengths:
            members = [s for s in samples if s.input_ids == row.input_ids[start:start + length]]
            alone = model(input_ids=torch.tensor([members[0].input_ids])).logits[0]
            torch.testing.assert_close(packed[start:start + length], alone, atol=1e-4, rtol=0)
            start += length
        # Without restarting positions the same row is one long sequence: later samples see earlier ones.
        unpacked = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
    first = row.sample_lengths[0]
    assert not torch.allclose(unpacked[first:first + row.sample_lengths[1]], packed[first:first + row.sample_lengths[1]], atol=1e-3)


def test_the_padding_collator_pads_right_with_a_mask() -> None:
    features = [SampleDataset([RenderedSample([5, 6, 7], [IGNORE_INDEX, 6, 7]), RenderedSample([8], [8])])[i]
                for i in range(2)]
    batch = PaddingCollator(pad_token_id=0, pad_to_multiple_of=4)(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX], [8, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def test_prepare_dataset_splits_packs_and_reports(tokenizer: PreTrainedTokenizerFast) -> None:
    cfg = DataConfig(source="file:///d", validation_split=0.25)
    prepared = prepare_dataset(DATASETS / "agentic_small.jsonl", cfg, tokenizer, sequence_length=1024, seed=7)
    stats = prepared.stats
    assert stats.data_format is DataFormat.openai_chat
    samples = sum(1 for line in (DATASETS / "agentic_small.jsonl").read_text().splitlines() if line.strip())
    assert stats.train_samples + stats.eval_samples == samples and stats.eval_samples == round(samples * 0.25)
    assert prepared.eval is not None and len(prepared.eval) == stats.eval_rows
    assert len(prepared.train) == stats.train_rows < stats.train_samples
    assert stats.packing_efficiency is not None and 0.5 < stats.packing_efficiency <= 1.0
    item = prepared.train[0]
    assert set(item) == {"input_ids", "labels", "position_ids"} and len(item["input_ids"]) == 1024
    assert 0 < stats.train_label_tokens < stats.train_tokens
    assert f"{stats.train_samples} train / {stats.eval_samples} eval samples" in stats.describe()
    again = prepare_dataset(DATASETS / "agentic_small.jsonl", cfg, tokenizer, sequence_length=1024, seed=7)
    assert again.train[0] == item  # the seed fixes split and order

    unpacked = prepare_dataset(
        DATASETS / "agentic_small.jsonl", DataConfig(source="file:///d", packing=False), tokenizer, 1024, seed=7
    )
    assert isinstance(unpacked.collator, PaddingCollator) and unpacked.stats.packing_efficiency is None
    assert set(unpacked.train[0]) == {"input_ids", "labels"}


@pytest.mark.parametrize(
    ("name", "data_format"),
    [("sharegpt_tools.jsonl", DataFormat.sharegpt), ("alpaca.json", DataFormat.alpaca),
     ("text.jsonl", DataFormat.text), ("plain.txt", DataFormat.text)],
)
@pytest.mark.parametrize("thinking", [Thinking.preserve, Thinking.strip])
def test_every_format_prepares_without_problems(
    name: str, data_format: DataFormat, thinking: Thinking, tokenizer: PreTrainedTokenizerFast
) -> None:
    cfg = DataConfig(source="file:///d", thinking=thinking, validation_split=0.0, max_error_fraction=0.0)
    prepared = prepare_dataset(DATASETS / name, cfg, tokenizer, sequence_length=256, seed=0)
    assert prepared.report.issues == [] and prepared.stats.data_format is data_format
    rows = [prepared.train[i] for i in range(len(prepared.train))]
    learned = [token for row in rows for token, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]
    assert learned and tokenizer.convert_tokens_to_ids("<|endoftext|>" if data_format is DataFormat.text else "<|user|>") in learned


@pytest.mark.slow
def test_transformers_trainer_trains_on_the_packed_rows(tokenizer: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    prepared = prepare_dataset(
        DATASETS / "agentic_small.jsonl", DataConfig(source="file:///d", validation_split=0.1), tokenizer, 512, seed=0
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("glm4_moe", num_hidden_layers=1), dtype=torch.float32)
    arguments = TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, learning_rate=1e-3,
        report_to=[], use_cpu=True, save_strategy="no", logging_steps=1, eval_strategy="no",
    )
    trainer = Trainer(
        model=model, args=arguments, train_dataset=prepared.train, eval_dataset=prepared.eval,
        data_collator=prepared.collator,
    )
    # Packed rows rely on it: with a KV cache transformers would not build the block-diagonal mask.
    assert model.config.use_cache is False
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(0 < loss < 20 for loss in losses)
    assert trainer.evaluate()["eval_loss"] > 0
