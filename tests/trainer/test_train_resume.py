"""A trainer killed with SIGKILL resumes from its newest complete checkpoint and finishes the planned run."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from train_support import (
    REPO_ROOT,
    build_model,
    build_tokenizer,
    job_config,
    progress_events,
    run_trainer,
    trainer_command,
    trainer_env,
    write_config,
)

from glmops_trainer.checkpoints import COMPLETE_MARKER, find_resumable_checkpoint, scan_checkpoints
from glmops_trainer.progress import read_loss_history

STEPS = 40
EVERY = 5


def kill_after_first_complete_checkpoint(config_path: Path, checkpoints: Path, timeout_s: float = 600) -> str:
    """Start the trainer, SIGKILL it as soon as a checkpoint is marked complete; returns its output."""
    process = subprocess.Popen(
        trainer_command(config_path), env=trainer_env(), cwd=REPO_ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    try:
        while not any(checkpoints.glob(f"checkpoint-*/{COMPLETE_MARKER}")):
            if process.poll() is not None:
                raise AssertionError(f"the trainer exited ({process.returncode}) before any checkpoint")
            if time.monotonic() > deadline:
                raise AssertionError("no complete checkpoint appeared in time")
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == -signal.SIGKILL
    return output


@pytest.mark.slow
def test_sigkilled_run_resumes_from_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    model_dir = build_model("glm4_moe", tmp_path / "model", build_tokenizer(tmp_path / "tokenizer"))
    training = {
        "max_steps": STEPS, "checkpoint_every": EVERY, "keep_checkpoints": 2,
        # Every target group, so that reloading each kind of LoRA weight from a checkpoint is covered.
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0,
                 "targets": ["attention", "dense_mlp", "shared_experts", "experts"]},
    }  # fmt: skip
    reference_dir, run_dir = tmp_path / "reference", tmp_path / "run"
    reference_dir.mkdir()
    run_dir.mkdir()
    reference = run_trainer(write_config(reference_dir / "job.json",
                                         job_config(reference_dir, model_dir, "flagship", training=training)))  # fmt: skip
    assert reference.returncode == 0, reference.stderr[-3000:]
    config_path = write_config(run_dir / "job.json", job_config(run_dir, model_dir, "flagship", training=training))
    out = run_dir / "out"
    checkpoints = out / "checkpoints"

    first_output = kill_after_first_complete_checkpoint(config_path, checkpoints)

    newest = find_resumable_checkpoint(checkpoints, job_uid="uid-1234")
    assert newest is not None and newest.step < STEPS, "the kill came after training had finished"
    assert not (out / "result.json").exists()
    assert all(event["kind"] != "final" for event in progress_events(first_output))
    # A save cut short after the newest complete one: copied files, a truncated optimizer state, no marker.
    torn = checkpoints / f"checkpoint-{newest.step + 2}"
    shutil.copytree(newest.path, torn)
    (torn / COMPLETE_MARKER).unlink()
    (torn / "optimizer.pt").write_bytes((torn / "optimizer.pt").read_bytes()[:100])

    second = run_trainer(config_path)

    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert f"resuming from {newest.path} (step {newest.step})" in log
    events = progress_events(second.stdout)
    assert events[0]["step"] == newest.step + 1 and events[0]["kind"] == "train"
    assert events[-1]["kind"] == "final" and events[-1]["step"] == STEPS
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "Succeeded" and result["step"] == STEPS and result["totalSteps"] == STEPS
    assert result["resumedFromStep"] == newest.step
    assert json.loads((run_dir / "termination-log").read_text()) == result
    assert not torn.exists()
    assert [(c.step, c.marked) for c in scan_checkpoints(checkpoints)] == [(STEPS - EVERY, True), (STEPS, True)]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "loss_curve.png").is_file()

    # The history spans both runs, and the resumed steps are the uninterrupted run's steps: weights,
    # optimizer, schedule, RNG and data order all came back.
    resumed = read_loss_history(out / "progress.jsonl").train
    uninterrupted = read_loss_history(reference_dir / "out" / "progress.jsonl").train
    assert [step for step, _ in resumed] == list(range(1, STEPS + 1))
    for (step, loss), (_, expected) in zip(resumed, uninterrupted, strict=True):
        assert loss == pytest.approx(expected, rel=1e-3, abs=1e-4), f"step {step}"
