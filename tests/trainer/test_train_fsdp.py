"""The flagship recipe under torchrun: sharded with FSDP2 on CPU ranks (gloo), checkpointed, resumed to the same adapter."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file
from train_support import (
    REPO_ROOT,
    build_model,
    build_tokenizer,
    job_config,
    progress_events,
    trainer_env,
    write_config,
)


def _torchrun(config_path: Path) -> subprocess.CompletedProcess[str]:
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun if torchrun.exists() else shutil.which("torchrun")), "--standalone", "--nproc-per-node=2",
               "-m", "glmops_trainer", "train", "--config", str(config_path)]  # fmt: skip
    env = trainer_env()
    env["OMP_NUM_THREADS"] = "1"
    process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        process.terminate()  # torchrun stops its workers on SIGTERM
        stdout, stderr = process.communicate(timeout=60)
        pytest.fail(f"torchrun did not finish in time:\n{stderr[-4000:]}")
    assert process.returncode == 0, stderr[-12000:-4000]
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.slow
def test_flagship_on_two_ranks_trains_sharded_and_a_resumed_run_ends_with_the_same_adapter(tmp_path: Path) -> None:
    model_dir = build_model("glm4_moe", tmp_path / "model", build_tokenizer(tmp_path / "tokenizer"))
    training: dict[str, Any] = {
        "max_steps": 4, "checkpoint_every": 2, "keep_checkpoints": 2, "gradient_checkpointing": True,
        "gradient_accumulation_steps": 2, "sequence_length": 512,
    }  # fmt: skip
    whole = tmp_path / "whole"
    whole.mkdir()
    config = job_config(whole, model_dir, "flagship", training=training)
    done = _torchrun(write_config(whole / "job.json", config))
    assert "model placement: fsdp over 2 process(es)" in done.stderr
    events = progress_events(done.stdout)
    assert [e["step"] for e in events if e["kind"] == "train"] == [1, 2, 3, 4]
    out = whole / "out"
    checkpoint = out / "checkpoints" / "checkpoint-2"
    assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state_0.pth", "rng_state_1.pth"} <= {
        p.name for p in checkpoint.iterdir()
    }
    trained = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert trained and all(".lora_" in key for key in trained)
    assert any(float(v.abs().max()) > 0 for k, v in trained.items() if ".lora_B." in k), "LoRA B never trained"

    # A run stopped after step 2: its newest checkpoint is step 2; it resumes there and must end identically.
    resumed = tmp_path / "resumed"
    shutil.copytree(whole, resumed)
    shutil.rmtree(resumed / "out" / "checkpoints" / "checkpoint-4")
    shutil.rmtree(resumed / "out" / "adapter")
    config = job_config(resumed, model_dir, "flagship", training=training)
    done = _torchrun(write_config(resumed / "job.json", config))
    assert "resuming from" in done.stderr
    again = load_file(str(resumed / "out" / "adapter" / "adapter_model.safetensors"))
    assert again.keys() == trained.keys()
    for key, value in trained.items():
        assert again[key].sub(value).abs().max().item() <= 1e-6, key
