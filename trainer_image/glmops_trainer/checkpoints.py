"""Resumable checkpoints: a completion marker, selection of the newest complete one, rotation.

transformers' `Trainer` writes `checkpoints/checkpoint-<step>/` file by file, so a pod killed
mid-save leaves a directory that looks like a checkpoint but is not one. After `Trainer` has
finished a save (it calls `on_save` only once `_save_checkpoint` has returned), the
`CheckpointMarkerCallback` lists every file with its size and sha256 into `COMPLETE`, written to
a temporary name and renamed, so the marker is either absent or whole. On start the trainer
resumes from the newest directory whose marker matches its files and deletes the rest of the
incomplete ones. Rotation is ours too (Trainer's `save_total_limit` would delete an older
complete checkpoint before the new one is marked, leaving a window with none).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from glmops_trainer.fsutil import fsync_dir, sha256_file

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
"""Trainer's own prefix for checkpoint directories (`PREFIX_CHECKPOINT_DIR`)."""
COMPLETE_MARKER = "COMPLETE"
"""File written last into a checkpoint directory; its presence (and matching contents) makes it resumable."""
MARKER_FORMAT_VERSION = 1

_CHECKPOINT_NAME = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d+)$")


@dataclass(frozen=True)
class CheckpointDir:
    """One `checkpoint-<step>` directory and whether it carries a completion marker."""

    step: int
    path: Path
    marked: bool


class CheckpointError(RuntimeError):
    """A checkpoint directory cannot be marked (e.g. it vanished before the marker was written)."""


def checkpoint_path(checkpoints_dir: Path, step: int) -> Path:
    """Directory Trainer saves the checkpoint of `step` into."""
    return checkpoints_dir / f"{CHECKPOINT_PREFIX}{step}"


def scan_checkpoints(checkpoints_dir: Path) -> list[CheckpointDir]:
    """All `checkpoint-<step>` directories under `checkpoints_dir`, oldest step first; other entries are ignored."""
    if not checkpoints_dir.is_dir():
        return []
    found: list[CheckpointDir] = []
    for entry in checkpoints_dir.iterdir():
        match = _CHECKPOINT_NAME.match(entry.name)
        if match is None or not entry.is_dir():
            continue
        found.append(CheckpointDir(int(match.group(1)), entry, (entry / COMPLETE_MARKER).is_file()))
    return sorted(found, key=lambda c: c.step)


def _checkpoint_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.rglob("*") if p.is_file() and p.name not in (COMPLETE_MARKER, COMPLETE_MARKER + ".tmp")
    )


def write_complete_marker(directory: Path, step: int, job_uid: str = "") -> Path:
    """List every file of a finished checkpoint (size, sha256) into its `COMPLETE` marker, atomically."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory does not exist, cannot mark it complete")
    files = [
        {"path": p.relative_to(directory).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in _checkpoint_files(directory)
    ]
    if not files:
        raise CheckpointError(f"{directory}: checkpoint directory is empty, cannot mark it complete")
    marker = {"version": MARKER_FORMAT_VERSION, "step": step, "job_uid": job_uid, "files": files}
    tmp = directory / (COMPLETE_MARKER + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(marker, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, directory / COMPLETE_MARKER)
    fsync_dir(directory)
    return directory / COMPLETE_MARKER


def verify_checkpoint(directory: Path, job_uid: str = "", check_hashes: bool = True) -> str | None:
    """Why `directory` is not a complete checkpoint of this job, or None when it is."""
    marker_path = directory / COMPLETE_MARKER
    if not marker_path.is_file():
        return "no COMPLETE marker (the save was interrupted)"
    try:
        marker: dict[str, Any] = json.loads(marker_path.read_text(encoding="utf-8"))
        files = marker["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable COMPLETE marker: {exc}"
    marker_uid = str(marker.get("job_uid", ""))
    if job_uid and marker_uid and marker_uid != job_uid:
        return f"written by another job (uid {marker_uid}, this job is {job_uid})"
    for entry in files:
        path = directory / str(entry["path"])
        if not path.is_file():
            return f"{entry['path']} is missing"
        if path.stat().st_size != int(entry["size"]):
            return f"{entry['path']} has {path.stat().st_size} bytes, the marker says {entry['size']}"
        if check_hashes and sha256_file(path) != entry["sha256"]:
            return f"{entry['path']} does not match its sha256 in the marker"
    return None


def find_resumable_checkpoint(checkpoints_dir: Path, job_uid: str = "") -> CheckpointDir | None:
    """The newest checkpoint whose marker matches its files; None when training starts from scratch."""
    for candidate in reversed(scan_checkpoints(checkpoints_dir)):
        problem = verify_checkpoint(candidate.path, job_uid)
        if problem is None:
            return candidate
        log.warning("not resuming from %s: %s", candidate.path, problem)
    return None


def _remove_checkpoint(directory: Path) -> None:
    # Marker first: a deletion cut short must not leave a directory that still claims to be complete.
    (directory / COMPLETE_MARKER).unlink(missing_ok=True)
    shutil.rmtree(directory, ignore_errors=True)


def remove_unusable_checkpoints(checkpoints_dir: Path, keep: CheckpointDir | None) -> list[Path]:
    """Delete every checkpoint directory other than `keep` that is unmarked or newer than it; returns them."""
    removed: list[Path] = []
    for candidate in scan_checkpoints(checkpoints_dir):
        if keep is not None and candidate.path == keep.path:
            continue
        newer = keep is None or candidate.step > keep.step
        if not candidate.marked or newer:
            # A marked checkpoint newer than the one we resume from failed verification: its steps will be
            # trained again and Trainer would write into the same directory, so it must go.
            _remove_checkpoint(candidate.path)
            removed.append(candidate.path)
    return removed


def rotate_checkpoints(checkpoints_dir: Path, keep_complete: int) -> list[Path]:
    """Keep the newest `keep_complete` marked checkpoints; delete older marked and older unmarked ones."""
    if keep_complete < 1:
        raise ValueError("keep_complete must be at least 1")
    all_dirs = scan_checkpoints(checkpoints_dir)
    marked = [c for c in all_dirs if c.marked]
    if not marked:
        return []
    kept = marked[-keep_complete:]
    oldest_kept = kept[0].step
    removed: list[Path] = []
    for candidate in all_dirs:
        if candidate in kept:
            continue
        # Unmarked directories newer than the kept ones may be a save still in flight on another rank.
        if candidate.marked or candidate.step < oldest_kept:
            _remove_checkpoint(candidate.path)
            removed.append(candidate.path)
    return removed


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class CheckpointMarkerCallback(TrainerCallback):
    """Marks each checkpoint complete after Trainer saved it (rank 0) and keeps `keep_checkpoints` of them."""

    def __init__(self, keep_checkpoints: int, job_uid: str = "") -> None:
        self.keep_checkpoints = keep_checkpoints
        self.job_uid = job_uid

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # Every rank writes its own RNG state into the directory: wait for all before listing files.
        _barrier()
        if state.is_world_process_zero:
            checkpoints_dir = Path(str(args.output_dir))
            directory = checkpoint_path(checkpoints_dir, state.global_step)
            write_complete_marker(directory, state.global_step, self.job_uid)
            rotate_checkpoints(checkpoints_dir, self.keep_checkpoints)
            log.info("checkpoint %s is complete", directory)
