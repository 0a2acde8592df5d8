"""The storage functions against a real S3-compatible server (moto, signatures checked)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from s3server import S3Server

from glmops_trainer.storage import (
    PARTIAL_SUFFIX,
    Role,
    S3Location,
    S3Settings,
    StorageError,
    fetch_s3_file,
    fetch_s3_tree,
    list_s3_files,
    local_files,
    remote_sha256,
    s3_filesystem,
    upload_tree,
)

FIELD = "dataset.source"


def _fs(s3: S3Server, **overrides: str) -> Any:
    settings = S3Settings(s3.access_key, s3.secret_key, None, s3.endpoint_url, "us-east-1")
    return s3_filesystem(S3Settings(**{**settings.__dict__, **overrides}), FIELD)


def _put(s3: S3Server, bucket: str, key: str, body: bytes) -> None:
    s3.client().put_object(Bucket=bucket, Key=key, Body=body)


def test_an_object_is_downloaded_under_its_name_once_complete(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    body = b'{"messages": []}\n' * 1000
    _put(s3, bucket, "payments/train.jsonl", body)

    path = fetch_s3_file(_fs(s3), S3Location(bucket, "payments/train.jsonl"), tmp_path / "train.jsonl", role=Role.dataset, field=FIELD)

    assert path.read_bytes() == body
    assert [p.name for p in tmp_path.iterdir()] == ["train.jsonl"]  # no partial file left


def test_missing_object_prefix_and_wrong_key_are_clear_and_final(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    _put(s3, bucket, "payments/train.jsonl", b"{}\n")

    def fetch(key: str, fs: Any = None) -> StorageError:
        with pytest.raises(StorageError) as info:
            fetch_s3_file(fs or _fs(s3), S3Location(bucket, key), tmp_path / "x", role=Role.dataset, field=FIELD)
        assert str(info.value).startswith(f"{FIELD}: ")
        return info.value

    missing = fetch("payments/nope.jsonl")
    assert "does not exist" in str(missing) and not missing.transient
    prefix = fetch("payments")
    assert "is a prefix" in str(prefix)
    refused = fetch("payments/train.jsonl", _fs(s3, secret_access_key="wrong-secret-value"))
    assert "refused" in str(refused) and "credentialsSecret" in str(refused) and not refused.transient
    assert "wrong-secret-value" not in str(refused)
    assert not (tmp_path / "x").exists()


def test_an_unreachable_endpoint_is_transient_and_names_the_field(s3: S3Server, tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    fs = _fs(s3, endpoint_url=closed)
    with pytest.raises(StorageError) as info:
        fetch_s3_file(fs, S3Location("ml-data", "x.jsonl"), tmp_path / "x", role=Role.dataset, field=FIELD)
    assert info.value.transient and str(info.value).startswith(f"{FIELD}: ") and "spec.dataset.endpointUrl" in str(info.value)


class _FailingSecondDownload:
    """The real filesystem, whose second download fails as a dropped connection would."""

    def __init__(self, fs: Any) -> None:
        self.fs, self.calls = fs, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)

    def get_file(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        if self.calls == 2:
            raise ConnectionResetError("connection reset by peer")
        self.fs.get_file(*args, **kwargs)


def test_a_prefix_appears_locally_only_when_every_object_arrived(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    files = {"model/config.json": b"{}", "model/model-00001.safetensors": b"a" * 5000, "model/sub/tokenizer.json": b"{}"}
    for key, body in files.items():
        _put(s3, bucket, key, body)
    target = tmp_path / "cache" / "model"

    with pytest.raises(StorageError):
        fetch_s3_tree(_FailingSecondDownload(_fs(s3)), S3Location(bucket, "model"), target, role=Role.model, field="model.source")
    assert not target.exists()  # half a model never looks like a model

    fetch_s3_tree(_fs(s3), S3Location(bucket, "model"), target, role=Role.model, field="model.source")
    assert {p.relative_to(target).as_posix(): p.read_bytes() for p in target.rglob("*") if p.is_file()} == {
        k.removeprefix("model/"): v for k, v in files.items()
    }
    assert not any(PARTIAL_SUFFIX in p.name for p in target.parent.iterdir())


def test_upload_tree_puts_the_marker_last_and_keeps_what_is_already_there(s3: S3Server, bucket: str, tmp_path: Path) -> None:
    root = tmp_path / "out"
    (root / "gguf").mkdir(parents=True)
    (root / "gguf" / "model.gguf").write_bytes(b"g" * 10000)
    (root / "adapter.safetensors").write_bytes(b"a" * 100)
    (root / "MANIFEST").write_text("done")
    hashes = {rel: hashlib.sha256(path.read_bytes()).hexdigest() for rel, path in local_files(root, lambda rel: False)}
    files = list(local_files(root, lambda rel: rel == "MANIFEST"))
    location = S3Location(bucket, "runs/a")
    fs = _fs(s3)

    first = upload_tree(fs, root, location, files, role=Role.output, field="output.destination", hashes=hashes, last=[("MANIFEST", root / "MANIFEST")])
    assert first == ["adapter.safetensors", "gguf/model.gguf", "MANIFEST"]  # the marker after every file
    assert remote_sha256(fs, location.child("gguf/model.gguf")) == (10000, hashes["gguf/model.gguf"])

    # A retry uploads only what changed (and the marker).
    (root / "adapter.safetensors").write_bytes(b"b" * 100)
    hashes["adapter.safetensors"] = hashlib.sha256(b"b" * 100).hexdigest()
    second = upload_tree(fs, root, location, files, role=Role.output, field="output.destination", hashes=hashes, last=[("MANIFEST", root / "MANIFEST")])
    assert second == ["adapter.safetensors", "MANIFEST"]
    assert list_s3_files(fs, location, role=Role.output, field="output.destination") == {
        "adapter.safetensors": 100,
        "gguf/model.gguf": 10000,
        "MANIFEST": 4,
    }


def test_an_s3_model_is_fetched_with_the_models_secret_and_endpoint(
    s3: S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from glmops_trainer.model.sources import resolve_model_source

    # The model's Secret reaches the pod under the standard names; its endpointUrl under GLMOPS_MODEL_.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_key)
    monkeypatch.setenv("GLMOPS_MODEL_AWS_ENDPOINT_URL", s3.endpoint_url)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    for key, body in {"glm/config.json": b"{}", "glm/model.safetensors": b"w" * 1000}.items():
        _put(s3, bucket, key, body)

    local = resolve_model_source(f"s3://{bucket}/glm", pvc_mount_root=tmp_path, cache_dir=tmp_path / "cache", field="model.source")
    assert sorted(p.name for p in local.iterdir()) == ["config.json", "model.safetensors"]
    # A restarted pod with the same cache finds the complete copy and does not fetch again.
    s3.client().delete_object(Bucket=bucket, Key="glm/model.safetensors")
    assert resolve_model_source(f"s3://{bucket}/glm", pvc_mount_root=tmp_path, cache_dir=tmp_path / "cache", field="model.source") == local
