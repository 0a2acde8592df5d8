"""QLoRA end to end on both GLM-4.7 architectures: the loss falls, a memorised answer is learned, the output is complete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_support import (
    ARCH_VARIANTS,
    MEMORISED_ANSWER,
    MEMORISED_QUESTION,
    build_model,
    build_tokenizer,
    generate,
    job_config,
)

from glmops_trainer.checkpoints import scan_checkpoints, verify_checkpoint
from glmops_trainer.config import TrainerConfig
from glmops_trainer.progress import RESULT_LIMIT_BYTES, read_loss_history

STEPS = 96


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(ARCH_VARIANTS))
def test_qlora_learns_the_dataset_and_memorises_an_answer(arch: str, tokenizer_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from glmops_trainer import train
    from glmops_trainer.data import prepare_dataset

    model_dir = build_model(arch, tmp_path / "model", tokenizer_dir)
    before = generate(model_dir, None, MEMORISED_QUESTION)
    assert MEMORISED_ANSWER not in before
    raw = job_config(
        tmp_path, model_dir, ARCH_VARIANTS[arch],
        training={
            "max_steps": STEPS, "learning_rate": 5e-3, "lr_scheduler": "cosine", "checkpoint_every": 32,
            "lora": {"rank": 32, "alpha": 64, "dropout": 0.0,
                     "targets": ["attention", "dense_mlp", "shared_experts", "experts"]},
        },
    )  # fmt: skip
    config = TrainerConfig.model_validate(raw)

    result = train.main(config)

    out = tmp_path / "out"
    # The run did what was planned and says so.
    assert result.status == "Succeeded" and result.step == STEPS and result.total_steps == STEPS
    assert result.resumed_from_step is None
    termination = (tmp_path / "termination-log").read_text()
    assert len(termination.encode()) <= RESULT_LIMIT_BYTES
    assert json.loads(termination) == json.loads((out / "result.json").read_text())
    assert json.loads(termination)["artifacts"]["adapter"] == f"file://{out}/adapter"

    # The loss fell by at least a quarter.
    history = read_loss_history(out / "progress.jsonl")
    assert [step for step, _ in history.train] == list(range(1, STEPS + 1))
    first = history.train[0][1]
    last = sum(loss for _, loss in history.train[-5:]) / 5
    assert last <= 0.75 * first, f"loss went from {first:.3f} to {last:.3f}"

    # The memorised answer comes back under greedy decoding, which the base model did not produce.
    after = generate(model_dir, out / "adapter", MEMORISED_QUESTION)
    assert MEMORISED_ANSWER in after, after

    # Output layout: adapter, loss curve, the last `keep_checkpoints` complete checkpoints.
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "loss_curve.png").read_bytes().startswith(b"\x89PNG")
    assert [(c.step, c.marked) for c in scan_checkpoints(out / "checkpoints")] == [(64, True), (96, True)]
    assert verify_checkpoint(out / "checkpoints" / "checkpoint-96", job_uid="uid-1234") is None

    # Tokens are real tokens: 96 steps over 8 packed rows are 12 epochs of the dataset's tokens.
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset_path = Path(config.data.source[len("file://") :])
    data = prepare_dataset(dataset_path, config.data, tokenizer, config.training.sequence_length, config.training.seed)
    rows = len(data.train)  # type: ignore[arg-type]
    assert STEPS % rows == 0, f"the dataset now packs into {rows} rows; pick STEPS as a multiple"
    state = json.loads((out / "checkpoints" / "checkpoint-96" / "trainer_state.json").read_text())
    assert state["num_input_tokens_seen"] == STEPS // rows * data.stats.train_tokens
    assert result.tokens_per_second is not None and result.tokens_per_second > 0
