"""The journal: every finished sample, appended as it finishes, so a new pod continues the run.

`OUTPUT.work/journal.jsonl` starts with a header line (what the run is: the prompts file's sha256,
samples per prompt and the settings that shape a sample) and then holds one line per finished
(prompt, sample) pair, kept or dropped. A line is written with one `write` and made durable
(`fsync`) before the sample counts as done, so a pod killed at any moment loses at most the
samples in flight, which the next pod makes again: no sample is lost, none is made twice (a key
already in the journal is never asked for again, and a repeated key is read once). A line cut
short by the kill is removed when the journal is opened. A journal of another run (other prompts
or settings) is refused rather than mixed in.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from glmops_trainer.generate.traces import Sample

JOURNAL_FILE = "journal.jsonl"
JOURNAL_VERSION = 1


class JournalMismatch(ValueError):
    """The work folder holds the journal of another run."""


class Journal:
    """Append-only record of finished samples in `work_dir`; thread-safe."""

    def __init__(self, work_dir: Path, header: dict[str, Any]) -> None:
        self.path = work_dir / JOURNAL_FILE
        self.header = {"journal": JOURNAL_VERSION, **header}
        self._lock = threading.Lock()
        self.samples: dict[tuple[int, int], Sample] = {}
        work_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._load()
        else:
            self._write_new()
        self._handle = self.path.open("a", encoding="utf-8")

    def _write_new(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(json.dumps(self.header, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.path)
        _fsync_dir(self.path.parent)

    def _load(self) -> None:
        data = self.path.read_bytes()
        good_end = 0
        lines = data.split(b"\n")
        header: dict[str, Any] | None = None
        offset = 0
        for index, raw in enumerate(lines):
            end = offset + len(raw) + 1
            complete = index < len(lines) - 1  # the part after the last newline was never finished
            if complete and raw.strip():
                try:
                    entry = json.loads(raw)
                except ValueError:
                    break  # a torn write can only be the last line; stop at it
                if header is None:
                    header = entry
                else:
                    sample = Sample.from_json(entry)
                    self.samples.setdefault((sample.prompt_index, sample.sample_index), sample)
                good_end = end
            elif complete:
                good_end = end
            offset = end
        if header is None:
            self._write_new()
            self.samples.clear()
            return
        if header != self.header:
            differs = sorted(k for k in set(header) | set(self.header) if header.get(k) != self.header.get(k))
            raise JournalMismatch(
                f"{self.path} belongs to a run with other {', '.join(differs)}: the prompts file or the settings changed "
                "after generation started. Restore them, or write to a new output (the journal keeps the finished samples)"
            )
        if good_end < len(data):
            with self.path.open("r+b") as handle:
                handle.truncate(good_end)
                handle.flush()
                os.fsync(handle.fileno())

    def done(self, key: tuple[int, int]) -> bool:
        """Whether (prompt, sample) is finished."""
        with self._lock:
            return key in self.samples

    def append(self, sample: Sample) -> bool:
        """Record a finished sample durably; False when its key was recorded before (then nothing is written)."""
        key = (sample.prompt_index, sample.sample_index)
        line = json.dumps(sample.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            if key in self.samples:
                return False
            self._handle.write(line)
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self.samples[key] = sample
            return True

    def ordered(self) -> list[Sample]:
        """Every finished sample in (prompt, sample) order."""
        with self._lock:
            return [self.samples[k] for k in sorted(self.samples)]

    def close(self) -> None:
        """Close the file."""
        self._handle.close()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
