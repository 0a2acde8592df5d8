"""The same entry point under torchrun: two CPU processes (gloo) train one model with DDP; rank 0 reports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from train_support import (
    REPO_ROOT,
    build_model,
    build_tokenizer,
    job_config,
    progress_events,
    trainer_env,
    write_config,
)

from glmops_trainer.checkpoints import scan_checkpoints, verify_checkpoint


def prepared_data(model_dir: Path, config: dict[str, Any]) -> Any:
    """The packed data the trainer trains on for `config`."""
    from transformers import AutoTokenizer

    from glmops_trainer.config import TrainerConfig
    from glmops_trainer.data import prepare_dataset

    parsed = TrainerConfig.model_validate(config)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    path = Path(parsed.data.source[len("file://") :])
    return prepare_dataset(path, parsed.data, tokenizer, parsed.training.sequence_length, parsed.training.seed)


@pytest.mark.slow
def test_two_processes_share_the_data_and_only_rank_0_writes(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = Path(shutil.which("torchrun") or "torchrun")
    model_dir = build_model("glm4_moe", tmp_path / "model", build_tokenizer(tmp_path / "tokenizer"))
    # The production path: gradient checkpointing, and an evaluation between training steps.
    training: dict[str, Any] = {"gradient_checkpointing": True}
    data_options = {"validation_split": 0.05}
    probe = job_config(tmp_path, model_dir, "flagship", training=training, data=data_options)
    rows = len(prepared_data(model_dir, probe).train)
    assert rows % 2 == 0, f"the dataset now packs into {rows} rows; two ranks need an even number"
    steps = rows  # one row per rank and step: two epochs
    training.update({"max_steps": steps, "checkpoint_every": steps // 2})
    config = job_config(tmp_path, model_dir, "flagship", training=training, data=data_options)
    data = prepared_data(model_dir, config)
    config_path = write_config(tmp_path / "job.json", config)
    env = trainer_env()
    env["OMP_NUM_THREADS"] = "1"

    command = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "glmops_trainer", "train",
               "--config", str(config_path)]  # fmt: skip
    process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        # torchrun starts its workers in sessions of their own; SIGTERM makes it stop them.
        process.terminate()
        stdout, stderr = process.communicate(timeout=60)
        pytest.fail(f"torchrun did not finish in time:\n{stderr[-4000:]}")

    assert process.returncode == 0, stderr[-4000:]
    events = progress_events(stdout)
    train_steps = [e["step"] for e in events if e["kind"] == "train"]
    assert train_steps == list(range(1, steps + 1)), "every step is reported once, by rank 0 only"
    assert [e["step"] for e in events if e["kind"] == "eval"] == [steps // 2, steps]
    # Each optimizer step consumes one row per rank, so half the steps make one epoch.
    assert next(e["epoch"] for e in events if e["step"] == steps // 2) == pytest.approx(1.0)
    assert events[-1]["kind"] == "final" and events[-1]["step"] == steps
    out = tmp_path / "out"
    checkpoint = out / "checkpoints" / f"checkpoint-{steps}"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    # Real tokens of both ranks: two epochs of the training split.
    assert state["num_input_tokens_seen"] == 2 * data.stats.train_tokens
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}
    assert verify_checkpoint(checkpoint, "uid-1234") is None
    assert [c.step for c in scan_checkpoints(out / "checkpoints")] == [steps // 2, steps]
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "Succeeded" and result["step"] == steps and result["evalLoss"] is not None
    assert len((out / "progress.jsonl").read_text().splitlines()) == len(events)
