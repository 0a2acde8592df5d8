"""Staging s3:// datasets and outputs for a run: fetch, restore, checkpoint sync, publish with the manifest last."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from polling import wait_for
from s3server import S3Server

from glmops_trainer import staging, storage
from glmops_trainer.checkpoints import verify_checkpoint, write_complete_marker
from glmops_trainer.config import TrainerConfig
from glmops_trainer.export.publish import ArtifactStore
from glmops_trainer.progress import TrainResult, write_result
from glmops_trainer.staging import staged


def _config(tmp_path: Path, dataset: str, destination: str) -> TrainerConfig:
    return TrainerConfig.model_validate(
        {
            "job": {"name": "payments-coder", "namespace": "ml", "uid": "uid-1"},
            "model": {"source": "file:///models/glm", "variant": "flash"},
            "data": {"source": dataset},
            "output": {"destination": destination, "formats": ["adapter"]},
            "runtime": {"result_file": str(tmp_path / "termination-log")},
        }
    )


def _names(s3: S3Server, bucket: str, prefix: str = "") -> list[str]:
    """Keys under a prefix (listing only: safe while the sync thread deletes)."""
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _keys(s3: S3Server, bucket: str, prefix: str = "") -> dict[str, bytes]:
    client = s3.client()
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def _checkpoint(output: Path, step: int) -> Path:
    directory = output / "checkpoints" / f"checkpoint-{step}"
    directory.mkdir(parents=True)
    (directory / "adapter_model.safetensors").write_bytes(bytes([step]) * 4096)
    (directory / "optimizer.pt").write_bytes(b"o" * 2048)
    write_complete_marker(directory, step, "uid-1")
    return directory


def _finish_run(local: Path) -> TrainResult:
    """What a local run leaves in its output folder: adapter, a manifest (real ArtifactStore), result, caches."""
    (local / "adapter").mkdir(parents=True, exist_ok=True)
    (local / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (local / "adapter" / "adapter_model.safetensors").write_bytes(b"w" * 3000)
    (local / ".model-cache" / "s3").mkdir(parents=True)
    (local / ".model-cache" / "s3" / "huge.safetensors").write_bytes(b"m" * 100)
    (local / "progress.jsonl").write_text('{"step": 30}\n')
    store = ArtifactStore(local, f"file://{local}")
    store.begin()
    artifacts = [
        store.artifact(store.record(local / "adapter" / name), "adapter", "file:///models/glm")
        for name in ("adapter_config.json", "adapter_model.safetensors")
    ]
    store.write_manifest(artifacts, {"job": {"name": "payments-coder"}})
    result = TrainResult(
        status="Succeeded",
        step=30,
        total_steps=30,
        output_uri=f"file://{local}",
        artifacts={"adapter": f"file://{local}/adapter", "manifest": f"file://{local}/artifacts.json"},
    )
    write_result(result, local / staging.LOCAL_RESULT, local)
    return result


def test_local_locations_pass_through(tmp_path: Path) -> None:
    config = _config(tmp_path, "file:///data/train.jsonl", "pvc://models/out")
    with staged(config, root=tmp_path / "staging") as run:
        assert run.config == config and run.output is None
    assert not (tmp_path / "staging").exists()


def test_an_s3_dataset_is_fetched_once_under_its_own_name(output_env: S3Server, bucket: str, tmp_path: Path) -> None:
    output_env.client().put_object(Bucket=bucket, Key="payments/train.jsonl", Body=b'{"text": "hi"}\n')
    config = _config(tmp_path, f"s3://{bucket}/payments/train.jsonl", "file:///out")

    with staged(config, root=tmp_path / "staging") as run:
        local = Path(run.config.data.source.removeprefix("file://"))
        assert local.name == "train.jsonl" and local.read_bytes() == b'{"text": "hi"}\n'
        assert run.config.output == config.output and config.data.source.startswith("s3://")
    # A second process of the same pod (or a retry in it) reuses the copy.
    output_env.client().delete_object(Bucket=bucket, Key="payments/train.jsonl")
    with staged(config, root=tmp_path / "staging") as run:
        assert Path(run.config.data.source.removeprefix("file://")) == local


def test_the_export_stages_no_dataset(output_env: S3Server, bucket: str, tmp_path: Path) -> None:
    # The export never reads the dataset: staging it would fail an export whose pod cannot reach
    # the dataset's store, or whose dataset has been deleted since training.
    config = _config(tmp_path, f"s3://{bucket}/payments/gone.jsonl", "file:///out")
    with staged(config, root=tmp_path / "staging", dataset=False) as run:
        assert run.config == config
    with pytest.raises(storage.StorageError, match="dataset.source"), staged(config, root=tmp_path / "staging"):
        pass


def test_publish_uploads_everything_then_the_manifest_and_reports_bucket_uris(
    output_env: S3Server, bucket: str, tmp_path: Path
) -> None:
    destination = f"s3://{bucket}/runs/payments-coder"
    config = _config(tmp_path, "file:///data/train.jsonl", destination)
    with staged(config, root=tmp_path / "staging", sync_interval_s=3600) as run:
        local = Path(run.config.output.destination.removeprefix("file://"))
        assert run.config.runtime.result_file != config.runtime.result_file  # the termination message waits
        _checkpoint(local, 30)
        result = _finish_run(local)
        assert not (tmp_path / "termination-log").exists()
        remote = run.publish(result)

    objects = _keys(output_env, bucket, "runs/payments-coder/")
    names = {key.removeprefix("runs/payments-coder/") for key in objects}
    assert names == {
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "checkpoints/checkpoint-30/adapter_model.safetensors",
        "checkpoints/checkpoint-30/optimizer.pt",
        "checkpoints/checkpoint-30/COMPLETE",
        "progress.jsonl",
        "result.json",
        "artifacts.json",
    }  # no model cache, export journal or local result
    manifest = json.loads(objects["runs/payments-coder/artifacts.json"])
    assert {a["uri"] for a in manifest["artifacts"]} == {
        f"{destination}/adapter/adapter_config.json",
        f"{destination}/adapter/adapter_model.safetensors",
    }
    for artifact in manifest["artifacts"]:
        assert len(objects[f"runs/payments-coder/{artifact['path']}"]) == artifact["sizeBytes"]
    termination = json.loads((tmp_path / "termination-log").read_text())
    assert termination["status"] == "Succeeded" and termination["outputUri"] == destination
    assert termination["artifacts"] == {"adapter": f"{destination}/adapter", "manifest": f"{destination}/artifacts.json"}
    assert remote.artifacts == termination["artifacts"]
    assert json.loads(objects["runs/payments-coder/result.json"])["outputUri"] == destination


def test_an_interrupted_publish_leaves_no_manifest(
    output_env: S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination = f"s3://{bucket}/runs/a"
    config = _config(tmp_path, "file:///data/train.jsonl", destination)
    with staged(config, root=tmp_path / "staging", sync_interval_s=3600) as run:
        result = _finish_run(Path(run.config.output.destination.removeprefix("file://")))
        run.publish(result)  # a first, complete export
    assert f"runs/a/{staging.MANIFEST_NAME}" in _keys(output_env, bucket)
    (tmp_path / "termination-log").unlink()

    real_upload = storage.upload_file

    def drop_the_weights(fs: Any, source: Path, location: storage.S3Location, **kwargs: Any) -> None:
        if location.key.endswith("adapter_model.safetensors"):
            raise storage.StorageError("output.destination: uploading failed (connection reset)", transient=True)
        real_upload(fs, source, location, **kwargs)

    monkeypatch.setattr(storage, "upload_file", drop_the_weights)
    with staged(config, root=tmp_path / "staging2", sync_interval_s=3600) as run:
        local = Path(run.config.output.destination.removeprefix("file://"))
        (local / "adapter").mkdir(parents=True, exist_ok=True)
        result = _finish_run(local)
        (local / "adapter" / "adapter_model.safetensors").write_bytes(b"new weights")  # the re-export changed it
        with pytest.raises(storage.StorageError):
            run.publish(result)

    # The old manifest was withdrawn before anything changed, and no new one was written.
    assert f"runs/a/{staging.MANIFEST_NAME}" not in _keys(output_env, bucket)
    assert not (tmp_path / "termination-log").exists()


def test_a_new_pod_restores_the_newest_complete_checkpoint_progress_and_adapter(
    output_env: S3Server, bucket: str, tmp_path: Path
) -> None:
    destination = f"s3://{bucket}/runs/b"
    config = _config(tmp_path, "file:///data/train.jsonl", destination)
    with staged(config, root=tmp_path / "first", sync_interval_s=3600) as run:
        local = Path(run.config.output.destination.removeprefix("file://"))
        _checkpoint(local, 10)
        _checkpoint(local, 20)
        (local / "progress.jsonl").write_text('{"step": 20}\n')
        run.output.sync_checkpoints()  # type: ignore[union-attr]
        (local / "adapter").mkdir()
        (local / "adapter" / "adapter_config.json").write_text("{}")
        run.publish_outputs()
    # A checkpoint whose upload was cut short: files without COMPLETE.
    client = output_env.client()
    client.put_object(Bucket=bucket, Key="runs/b/checkpoints/checkpoint-30/optimizer.pt", Body=b"partial")

    with staged(config, root=tmp_path / "second", sync_interval_s=3600) as run:
        local = Path(run.config.output.destination.removeprefix("file://"))
        checkpoints = sorted(p.name for p in (local / "checkpoints").iterdir() if p.is_dir())
        assert checkpoints == ["checkpoint-20"]  # the newest complete one, nothing half-uploaded
        assert verify_checkpoint(local / "checkpoints" / "checkpoint-20", "uid-1") is None
        assert (local / "progress.jsonl").read_text() == '{"step": 20}\n'
        assert (local / "adapter" / "adapter_config.json").read_text() == "{}"


def test_checkpoints_reach_the_bucket_while_training_and_rotated_ones_leave_it(
    output_env: S3Server, bucket: str, tmp_path: Path
) -> None:
    destination = f"s3://{bucket}/runs/c"
    config = _config(tmp_path, "file:///data/train.jsonl", destination)

    def remote_checkpoints() -> set[str]:
        return {k.split("/")[3] for k in _names(output_env, bucket, "runs/c/checkpoints/") if k.endswith("/COMPLETE")}

    with staged(config, root=tmp_path / "staging", sync_interval_s=0.2) as run:
        local = Path(run.config.output.destination.removeprefix("file://"))
        first = _checkpoint(local, 5)
        wait_for("checkpoint-5 in the bucket", lambda: remote_checkpoints() == {"checkpoint-5"}, 60)
        _checkpoint(local, 10)
        import shutil

        (first / "COMPLETE").unlink()  # rotation: marker first, then the files
        shutil.rmtree(first)
        wait_for("the bucket to follow the rotation", lambda: remote_checkpoints() == {"checkpoint-10"}, 60)
    assert not any("checkpoint-5/" in k for k in _names(output_env, bucket, "runs/c/"))


def test_a_missing_bucket_fails_before_training(output_env: S3Server, tmp_path: Path) -> None:
    config = _config(tmp_path, "file:///data/train.jsonl", "s3://no-such-bucket-here/out")
    with pytest.raises(storage.StorageError) as info, staged(config, root=tmp_path / "staging"):
        pytest.fail("the run must not start")
    assert str(info.value).startswith("output.destination: ") and "does not exist" in str(info.value)
    assert not info.value.transient


def test_a_bucket_the_keys_cannot_reach_fails_before_training(output_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLMOPS_OUTPUT_AWS_SECRET_ACCESS_KEY", "not-the-secret")
    config = _config(tmp_path, "file:///data/train.jsonl", "s3://no-such-bucket-here/out")
    with pytest.raises(storage.StorageError) as info, staged(config, root=tmp_path / "staging"):
        pytest.fail("the run must not start")
    assert str(info.value).startswith("output.destination: ") and "not-the-secret" not in str(info.value)


@pytest.mark.parametrize(
    ("relative", "uploaded"),
    [
        ("adapter/adapter_model.safetensors", True),
        ("gguf/Q4_K_M/x-Q4_K_M.gguf", True),
        ("loss_curve.png", True),
        (".adapter.tmp/adapter_model.safetensors", False),  # a save cut short
        ("gguf/Q4_K_M/x.gguf.glmops-tmp-12", False),  # the publisher's temp name
        (".model-cache/s3/bucket/model/model.safetensors", False),
        (".export-work/merged/model.safetensors", False),
        (".export-journal.jsonl", False),
        ("checkpoints/checkpoint-5/optimizer.pt", False),  # synced on their own, marker last
        ("artifacts.json", False),  # goes last, rewritten
        ("result.json", False),
    ],
)
def test_what_publish_uploads_with_the_files(relative: str, uploaded: bool) -> None:
    assert staging._uploadable(relative) is uploaded


def test_a_checkpoint_upload_cut_short_leaves_no_marker_and_the_next_sync_finishes_it(
    output_env: S3Server, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path, "file:///data/train.jsonl", f"s3://{bucket}/runs/d")
    real_upload = storage.upload_file

    def connection_drops(fs: Any, source: Path, location: storage.S3Location, **kwargs: Any) -> None:
        if location.key.endswith("optimizer.pt"):
            raise storage.StorageError("output.destination: uploading failed (connection reset)", transient=True)
        real_upload(fs, source, location, **kwargs)

    with staged(config, root=tmp_path / "staging", sync_interval_s=3600) as run:
        assert run.output is not None
        _checkpoint(Path(run.config.output.destination.removeprefix("file://")), 7)
        monkeypatch.setattr(storage, "upload_file", connection_drops)
        run.output.sync_checkpoints()
        names = _names(output_env, bucket, "runs/d/checkpoints/")
        assert not any(name.endswith("/COMPLETE") for name in names), names  # not resumable from the bucket
        monkeypatch.setattr(storage, "upload_file", real_upload)
        run.output.sync_checkpoints()
    assert set(_names(output_env, bucket, "runs/d/checkpoints/")) == {
        f"runs/d/checkpoints/checkpoint-7/{name}" for name in ("adapter_model.safetensors", "optimizer.pt", "COMPLETE")
    }
