"""Checkpoint selection: only a checkpoint whose COMPLETE marker matches its files is resumed from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glmops_trainer.checkpoints import (
    COMPLETE_MARKER,
    CheckpointMarkerCallback,
    find_resumable_checkpoint,
    remove_unusable_checkpoints,
    rotate_checkpoints,
    scan_checkpoints,
    verify_checkpoint,
    write_complete_marker,
)


def fake_checkpoint(root: Path, step: int, complete: bool, job_uid: str = "") -> Path:
    """A directory shaped like Trainer's checkpoint, marked complete or left as if the save was cut short."""
    directory = root / f"checkpoint-{step}"
    directory.mkdir(parents=True)
    (directory / "adapter_model.safetensors").write_bytes(b"weights-%d" % step)
    (directory / "optimizer.pt").write_bytes(b"optimizer-%d" % step * 10)
    (directory / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if complete:
        write_complete_marker(directory, step, job_uid)
    return directory


def test_newest_complete_checkpoint_is_chosen_over_a_newer_incomplete_one(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path, 10, complete=True)
    newest_complete = fake_checkpoint(tmp_path, 20, complete=True)
    fake_checkpoint(tmp_path, 30, complete=False)

    chosen = find_resumable_checkpoint(tmp_path)

    assert chosen is not None
    assert (chosen.step, chosen.path) == (20, newest_complete)


def test_steps_sort_numerically_not_by_name(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path, 9, complete=True)
    fake_checkpoint(tmp_path, 100, complete=True)

    chosen = find_resumable_checkpoint(tmp_path)

    assert chosen is not None and chosen.step == 100


def test_stray_files_and_foreign_directories_are_ignored(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path, 5, complete=True)
    (tmp_path / "checkpoint-99").write_text("a file, not a directory")
    (tmp_path / "checkpoint-latest").mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "notes.txt").write_text("hello")

    assert [c.step for c in scan_checkpoints(tmp_path)] == [5]
    chosen = find_resumable_checkpoint(tmp_path)
    assert chosen is not None and chosen.step == 5


def test_no_checkpoint_means_start_from_scratch(tmp_path: Path) -> None:
    assert find_resumable_checkpoint(tmp_path / "missing") is None
    fake_checkpoint(tmp_path, 10, complete=False)
    assert find_resumable_checkpoint(tmp_path) is None


def test_a_file_changed_after_marking_disqualifies_the_checkpoint(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path, 10, complete=True)
    damaged = fake_checkpoint(tmp_path, 20, complete=True)
    (damaged / "optimizer.pt").write_bytes(b"truncated")

    assert "optimizer.pt" in str(verify_checkpoint(damaged))
    chosen = find_resumable_checkpoint(tmp_path)
    assert chosen is not None and chosen.step == 10


def test_same_size_corruption_is_caught_by_the_checksum(tmp_path: Path) -> None:
    damaged = fake_checkpoint(tmp_path, 20, complete=True)
    original = (damaged / "adapter_model.safetensors").read_bytes()
    (damaged / "adapter_model.safetensors").write_bytes(bytes([original[0] ^ 1]) + original[1:])

    assert "sha256" in str(verify_checkpoint(damaged))
    assert verify_checkpoint(damaged, check_hashes=False) is None


def test_a_missing_file_disqualifies_the_checkpoint(tmp_path: Path) -> None:
    damaged = fake_checkpoint(tmp_path, 20, complete=True)
    (damaged / "trainer_state.json").unlink()

    assert "trainer_state.json is missing" == verify_checkpoint(damaged)


def test_a_checkpoint_of_another_job_is_not_resumed(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path, 10, complete=True, job_uid="uid-a")
    fake_checkpoint(tmp_path, 20, complete=True, job_uid="uid-b")

    chosen = find_resumable_checkpoint(tmp_path, job_uid="uid-a")

    assert chosen is not None and chosen.step == 10


def test_marker_lists_every_file_with_size_and_checksum(tmp_path: Path) -> None:
    directory = fake_checkpoint(tmp_path, 7, complete=False)
    (directory / "nested").mkdir()
    (directory / "nested" / "rng_state_1.pth").write_bytes(b"rng")

    marker = json.loads(write_complete_marker(directory, 7, "uid").read_text())

    assert marker["step"] == 7 and marker["job_uid"] == "uid"
    assert sorted(f["path"] for f in marker["files"]) == [
        "adapter_model.safetensors",
        "nested/rng_state_1.pth",
        "optimizer.pt",
        "trainer_state.json",
    ]
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in marker["files"])
    assert not (directory / (COMPLETE_MARKER + ".tmp")).exists()


def test_cleanup_removes_unmarked_and_newer_directories_and_keeps_stray_files(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path, 10, complete=True)
    fake_checkpoint(tmp_path, 15, complete=False)
    keep = fake_checkpoint(tmp_path, 20, complete=True)
    fake_checkpoint(tmp_path, 30, complete=False)
    (tmp_path / "notes.txt").write_text("hello")
    chosen = find_resumable_checkpoint(tmp_path)
    assert chosen is not None and chosen.path == keep

    removed = remove_unusable_checkpoints(tmp_path, chosen)

    assert sorted(p.name for p in removed) == ["checkpoint-15", "checkpoint-30"]
    assert [c.step for c in scan_checkpoints(tmp_path)] == [10, 20]
    assert (tmp_path / "notes.txt").exists()


def test_cleanup_removes_a_marked_but_damaged_newer_checkpoint(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path, 10, complete=True)
    damaged = fake_checkpoint(tmp_path, 20, complete=True)
    (damaged / "optimizer.pt").unlink()
    chosen = find_resumable_checkpoint(tmp_path)

    remove_unusable_checkpoints(tmp_path, chosen)

    assert [c.step for c in scan_checkpoints(tmp_path)] == [10]


def test_rotation_keeps_the_newest_complete_ones(tmp_path: Path) -> None:
    for step in (10, 20, 30, 40):
        fake_checkpoint(tmp_path, step, complete=True)

    removed = rotate_checkpoints(tmp_path, keep_complete=2)

    assert sorted(p.name for p in removed) == ["checkpoint-10", "checkpoint-20"]
    assert [c.step for c in scan_checkpoints(tmp_path)] == [30, 40]


def test_rotation_never_counts_an_unmarked_checkpoint_as_kept(tmp_path: Path) -> None:
    fake_checkpoint(tmp_path, 10, complete=True)
    fake_checkpoint(tmp_path, 20, complete=True)
    fake_checkpoint(tmp_path, 30, complete=False)

    rotate_checkpoints(tmp_path, keep_complete=1)

    # checkpoint-20 is the only complete one left; the unmarked newer one may be a save in flight.
    assert [(c.step, c.marked) for c in scan_checkpoints(tmp_path)] == [(20, True), (30, False)]


def test_callback_marks_the_saved_checkpoint_and_rotates(tmp_path: Path) -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    fake_checkpoint(tmp_path, 10, complete=True)
    fake_checkpoint(tmp_path, 20, complete=False)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    state = TrainerState(global_step=20)

    CheckpointMarkerCallback(keep_checkpoints=1, job_uid="uid").on_save(args, state, TrainerControl())

    assert [(c.step, c.marked) for c in scan_checkpoints(tmp_path)] == [(20, True)]
    assert verify_checkpoint(tmp_path / "checkpoint-20", job_uid="uid") is None


def test_callback_on_a_non_main_rank_writes_nothing(tmp_path: Path) -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    fake_checkpoint(tmp_path, 20, complete=False)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    state = TrainerState(global_step=20, is_world_process_zero=False)

    CheckpointMarkerCallback(keep_checkpoints=1).on_save(args, state, TrainerControl())

    assert not (tmp_path / "checkpoint-20" / COMPLETE_MARKER).exists()


def test_rotation_requires_keeping_at_least_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        rotate_checkpoints(tmp_path, keep_complete=0)
