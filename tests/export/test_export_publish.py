"""Publishing is atomic: temp names and renames, a journal of finished files, the manifest last."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from glmops_trainer.export.publish import (
    JOURNAL_NAME,
    MANIFEST_NAME,
    TMP_MARKER,
    ArtifactStore,
    read_manifest,
    tmp_path_for,
)


def _store(root: Path) -> ArtifactStore:
    store = ArtifactStore(root, "pvc://models/job")
    store.begin()
    return store


def test_a_file_appears_only_complete_and_is_journaled(tmp_path: Path) -> None:
    store = _store(tmp_path)
    final = tmp_path / "gguf" / "Q8_0" / "m.gguf"
    seen_during_write: list[bool] = []

    def write(tmp: Path) -> None:
        tmp.write_bytes(b"x" * 1000)
        seen_during_write.append(final.exists())

    record = store.produce(final, write)
    assert seen_during_write == [False]
    assert final.read_bytes() == b"x" * 1000
    assert record.sha256 == hashlib.sha256(b"x" * 1000).hexdigest() and record.size_bytes == 1000
    journal = [json.loads(line) for line in (tmp_path / JOURNAL_NAME).read_text().splitlines()]
    assert journal == [{"path": "gguf/Q8_0/m.gguf", "size_bytes": 1000, "sha256": record.sha256}]
    assert not list(tmp_path.rglob(f"*{TMP_MARKER}*"))


def test_a_failed_write_leaves_neither_file_nor_temp(tmp_path: Path) -> None:
    store = _store(tmp_path)

    def write(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise RuntimeError("converter crashed")

    with pytest.raises(RuntimeError, match="converter crashed"):
        store.produce(tmp_path / "a.bin", write)
    assert not (tmp_path / "a.bin").exists()
    assert not list(tmp_path.rglob(f"*{TMP_MARKER}*"))


def test_retry_keeps_verified_files_and_redoes_changed_ones(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.write_bytes(tmp_path / "kept.bin", b"kept")
    store.write_bytes(tmp_path / "tampered.bin", b"original")
    (tmp_path / "tampered.bin").write_bytes(b"tampered")
    # A crash leaves a temp file and no manifest.
    tmp_path_for(tmp_path / "half.bin").write_bytes(b"half")

    retry = _store(tmp_path)
    assert not list(tmp_path.rglob(f"*{TMP_MARKER}*"))
    calls: list[str] = []

    def writer(content: bytes, name: str):
        def write(tmp: Path) -> None:
            calls.append(name)
            tmp.write_bytes(content)

        return write

    retry.produce(tmp_path / "kept.bin", writer(b"kept", "kept"))
    retry.produce(tmp_path / "tampered.bin", writer(b"original", "tampered"))
    assert calls == ["tampered"]
    assert (tmp_path / "tampered.bin").read_bytes() == b"original"


def test_manifest_is_written_last_and_withdrawn_when_an_export_starts(tmp_path: Path) -> None:
    store = _store(tmp_path)
    record = store.write_bytes(tmp_path / "adapter" / "a.json", b"{}")
    manifest = store.write_manifest(
        [store.artifact(record, "adapter", "hf://zai-org/GLM-4.7-Flash")], {"job": "j"}
    )
    assert read_manifest(tmp_path) == manifest
    assert manifest["artifacts"] == [
        {
            "path": "adapter/a.json",
            "uri": "pvc://models/job/adapter/a.json",
            "sizeBytes": 2,
            "sha256": hashlib.sha256(b"{}").hexdigest(),
            "format": "adapter",
            "quantization": None,
            "baseModel": "hf://zai-org/GLM-4.7-Flash",
        }
    ]
    _store(tmp_path)
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_manifest_refuses_a_missing_file(tmp_path: Path) -> None:
    store = _store(tmp_path)
    record = store.write_bytes(tmp_path / "a.bin", b"abc")
    (tmp_path / "a.bin").unlink()
    with pytest.raises(RuntimeError, match="missing or of the wrong size"):
        store.write_manifest([store.artifact(record, "merged", "file:///m")], {})
    assert not (tmp_path / MANIFEST_NAME).exists()
