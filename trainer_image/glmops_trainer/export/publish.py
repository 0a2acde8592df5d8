"""Atomic publishing of export artifacts: temp names, renames, a journal, and a manifest written last.

Every artifact file is written under a temporary name in its final folder and renamed into place
once complete (a rename within one filesystem is atomic). After each rename a line with the file's
size and sha256 is appended to a journal (`.export-journal.jsonl`). The manifest
(`artifacts.json`) is written last, also through a rename, so a reader that sees a manifest sees
complete files. An interrupted export leaves no manifest; the next attempt deletes temporary
leftovers, keeps every journaled file whose size and sha256 still match, and redoes the rest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from glmops_trainer.fsutil import fsync_dir, sha256_file

log = logging.getLogger(__name__)

MANIFEST_NAME = "artifacts.json"
"""The manifest at the root of the output folder; its presence means every listed file is complete."""
JOURNAL_NAME = ".export-journal.jsonl"
"""Append-only record of finished files (path, size, sha256) that lets a retry skip them."""
TMP_MARKER = ".glmops-tmp"
"""Part of every temporary name; anything carrying it is a leftover of an interrupted export."""
MANIFEST_VERSION = 1

ArtifactFormat = Literal["adapter", "merged", "gguf", "modelfile"]


@dataclass(frozen=True)
class FileRecord:
    """A finished file: its path relative to the output root, size and sha256."""

    path: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class Artifact:
    """One published file as listed in the manifest."""

    path: str
    uri: str
    size_bytes: int
    sha256: str
    format: ArtifactFormat
    quantization: str | None
    base_model: str

    def to_json(self) -> dict[str, Any]:
        """The manifest entry of this file."""
        return {
            "path": self.path,
            "uri": self.uri,
            "sizeBytes": self.size_bytes,
            "sha256": self.sha256,
            "format": self.format,
            "quantization": self.quantization,
            "baseModel": self.base_model,
        }


def tmp_path_for(final: Path) -> Path:
    """The temporary name a file is written under before it is renamed to `final`."""
    return final.with_name(f"{final.name}{TMP_MARKER}-{os.getpid()}")


def join_uri(base: str, relative: str) -> str:
    """`base` (a URI or a path) joined with a relative path using '/'."""
    return base.rstrip("/") + "/" + relative.lstrip("/")


class ArtifactStore:
    """The output folder of one export: atomic file writes, the journal of finished files, the manifest."""

    def __init__(self, root: Path, uri_base: str) -> None:
        self.root = root
        self.uri_base = uri_base
        self._journal: dict[str, FileRecord] = {}

    @property
    def manifest_path(self) -> Path:
        """Where the manifest goes."""
        return self.root / MANIFEST_NAME

    def begin(self) -> None:
        """Start (or resume) an export: withdraw an old manifest, delete temp leftovers, load the journal."""
        self.root.mkdir(parents=True, exist_ok=True)
        # The manifest promises that its files are complete and current; while this export may
        # rewrite files, no manifest may be visible.
        if self.manifest_path.exists():
            self.manifest_path.unlink()
            fsync_dir(self.root)
        for leftover in sorted(self._leftovers(), key=lambda p: len(p.parts), reverse=True):
            log.info("removing leftover of an interrupted export: %s", leftover)
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
        self._journal = self._read_journal()

    def _leftovers(self) -> Iterator[Path]:
        yield from self.root.rglob(f"*{TMP_MARKER}*")

    def _read_journal(self) -> dict[str, FileRecord]:
        journal_path = self.root / JOURNAL_NAME
        records: dict[str, FileRecord] = {}
        if not journal_path.is_file():
            return records
        for line in journal_path.read_text(encoding="utf-8").splitlines():
            try:
                raw = json.loads(line)
                record = FileRecord(str(raw["path"]), int(raw["size_bytes"]), str(raw["sha256"]))
            except (ValueError, KeyError, TypeError):
                # A line cut short by a crash: the file it describes is verified again or redone.
                continue
            records[record.path] = record
        return records

    def relative(self, path: Path) -> str:
        """`path` relative to the output root, with '/' separators."""
        return path.relative_to(self.root).as_posix()

    def finished(self, path: Path) -> FileRecord | None:
        """The journal record of `path` if the file exists and its size and sha256 still match."""
        record = self._journal.get(self.relative(path))
        if record is None or not path.is_file():
            return None
        if path.stat().st_size != record.size_bytes or sha256_file(path) != record.sha256:
            log.warning("%s does not match its journal record; it is written again", path)
            return None
        return record

    def forget(self, path: Path) -> None:
        """Drop `path` from the journal (the caller is about to rewrite or delete it)."""
        rel = self.relative(path)
        if rel in self._journal:
            del self._journal[rel]
            self._rewrite_journal()

    def _rewrite_journal(self) -> None:
        journal_path = self.root / JOURNAL_NAME
        tmp = tmp_path_for(journal_path)
        with tmp.open("w", encoding="utf-8") as handle:
            for record in self._journal.values():
                handle.write(json.dumps(record.__dict__) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, journal_path)
        fsync_dir(self.root)

    def record(self, path: Path, sha256: str | None = None) -> FileRecord:
        """Journal a file that is already in its final place (hashing it unless `sha256` is given)."""
        digest = sha256 if sha256 is not None else sha256_file(path)
        record = FileRecord(self.relative(path), path.stat().st_size, digest)
        self._journal[record.path] = record
        with (self.root / JOURNAL_NAME).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record.__dict__) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return record

    @contextlib.contextmanager
    def writing(self, final: Path) -> Iterator[Path]:
        """Yield a temporary path to write `final`'s content to; on success rename it into place.

        The caller journals the file afterwards with `record` (it may know the hash already).
        """
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = tmp_path_for(final)
        tmp.unlink(missing_ok=True)
        try:
            yield tmp
            with tmp.open("rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, final)
            fsync_dir(final.parent)
        finally:
            tmp.unlink(missing_ok=True)

    def produce(self, final: Path, write: Callable[[Path], str | None]) -> FileRecord:
        """Write `final` with `write(tmp_path)` unless a verified copy exists; returns its record.

        `write` may return the sha256 it computed while writing, which saves a second read.
        """
        existing = self.finished(final)
        if existing is not None:
            log.info("kept %s from an earlier attempt (size and sha256 match)", existing.path)
            return existing
        self.forget(final)
        with self.writing(final) as tmp:
            digest = write(tmp)
        return self.record(final, digest)

    def copy_file(self, source: Path, final: Path) -> FileRecord:
        """Publish a copy of `source` at `final`."""

        def write(tmp: Path) -> str | None:
            shutil.copyfile(source, tmp)
            return None

        return self.produce(final, write)

    def write_bytes(self, final: Path, data: bytes) -> FileRecord:
        """Publish `data` as the file `final`."""

        def write(tmp: Path) -> str:
            tmp.write_bytes(data)
            return hashlib.sha256(data).hexdigest()

        return self.produce(final, write)

    def artifact(
        self, record: FileRecord, fmt: ArtifactFormat, base_model: str, quantization: str | None = None
    ) -> Artifact:
        """The manifest entry for a finished file."""
        return Artifact(
            path=record.path,
            uri=join_uri(self.uri_base, record.path),
            size_bytes=record.size_bytes,
            sha256=record.sha256,
            format=fmt,
            quantization=quantization,
            base_model=base_model,
        )

    def write_manifest(self, artifacts: list[Artifact], extra: dict[str, Any]) -> dict[str, Any]:
        """Write `artifacts.json` last, atomically, after checking every listed file; returns its content."""
        for item in artifacts:
            path = self.root / item.path
            if not path.is_file() or path.stat().st_size != item.size_bytes:
                raise RuntimeError(f"{path}: listed in the manifest but missing or of the wrong size")
        manifest: dict[str, Any] = {
            "version": MANIFEST_VERSION,
            **extra,
            "artifacts": [item.to_json() for item in artifacts],
        }
        data = (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode("utf-8")
        with self.writing(self.manifest_path) as tmp:
            tmp.write_bytes(data)
        return manifest


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The manifest of an output folder, or None while an export is incomplete."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        return None
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded
