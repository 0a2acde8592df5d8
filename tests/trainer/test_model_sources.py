"""Model sources resolve to a local model directory; every failure names spec.model.source and the fix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from glmops_trainer.model import sources
from glmops_trainer.model.sources import (
    ModelSource,
    ModelSourceError,
    parse_model_source,
    resolve_model_source,
)


def _model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")
    return path


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("file:///models/glm", ModelSource("file", "/models/glm")),
        ("pvc://models/glm/flash", ModelSource("pvc", "models/glm/flash")),
        ("pvc://models", ModelSource("pvc", "models")),
        ("hf://zai-org/GLM-4.7-Flash", ModelSource("hf", "zai-org/GLM-4.7-Flash")),
        ("hf://zai-org/GLM-4.7@3f1c2a9", ModelSource("hf", "zai-org/GLM-4.7", "3f1c2a9")),
        ("hf://models/zai-org/GLM-4.7", ModelSource("hf", "zai-org/GLM-4.7")),
        # The Hub's order: revision after the name, then a folder of the repository.
        ("hf://org/checkpoints@feature%2Fsft/step-400/", ModelSource("hf", "org/checkpoints", "feature/sft", "step-400")),
        ("hf://org/checkpoints@refs/pr/7/step-400", ModelSource("hf", "org/checkpoints", "refs/pr/7", "step-400")),
        ("s3://my-bucket/models/glm/", ModelSource("s3", "my-bucket/models/glm")),
    ],
)
def test_parse(uri: str, expected: ModelSource) -> None:
    assert parse_model_source(uri) == expected


@pytest.mark.parametrize(
    ("uri", "hint"),
    [
        ("/models/glm", "no scheme"),
        ("file://models/glm", "three slashes"),
        ("pvc:///glm", "names no claim"),
        ("pvc://models/../etc", "'..'"),
        ("hf://GLM-4.7", "ORG/NAME"),
        ("hf://zai-org/GLM-4.7@", "empty revision"),
        ("hf://zai-org/GLM-4.7/step-400@v1", "revision goes right after the name"),
        ("hf://datasets/zai-org/agent-traces", "a model is hf://ORG/NAME"),
        ("s3://B/key", "bucket"),
        ("gs://bucket/key", "not supported"),
    ],
)
def test_malformed_sources_name_the_field_and_the_fix(uri: str, hint: str) -> None:
    with pytest.raises(ModelSourceError) as info:
        parse_model_source(uri)
    assert str(info.value).startswith("spec.model.source: ")
    assert hint in str(info.value)


def test_file_and_pvc_resolve_to_the_directory(tmp_path: Path) -> None:
    model = _model_dir(tmp_path / "plain")
    assert resolve_model_source(f"file://{model}", pvc_mount_root=tmp_path, cache_dir=tmp_path) == model
    mount = tmp_path / "mnt"
    in_claim = _model_dir(mount / "models" / "glm" / "flash")
    found = resolve_model_source("pvc://models/glm/flash", pvc_mount_root=mount, cache_dir=tmp_path)
    assert found == in_claim


def test_missing_claim_says_the_claim_is_not_mounted(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="claim 'models' .* is not mounted"):
        resolve_model_source("pvc://models/glm", pvc_mount_root=tmp_path, cache_dir=tmp_path)


@pytest.mark.parametrize(
    ("make", "hint"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_text("x"), "is a file"),
        (lambda p: p.mkdir(), "no config.json"),
        (lambda p: (p.mkdir(), (p / "config.json").write_text("{}")), "no \\*.safetensors"),
    ],
)
def test_incomplete_local_model_dirs_are_refused(tmp_path: Path, make: object, hint: str) -> None:
    target = tmp_path / "model"
    make(target)  # type: ignore[operator]
    with pytest.raises(ModelSourceError, match=hint) as info:
        resolve_model_source(f"file://{target}", pvc_mount_root=tmp_path, cache_dir=tmp_path)
    assert str(info.value).startswith("spec.model.source: ")


def test_hf_download_passes_repo_revision_and_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    seen: dict[str, object] = {}

    def fake_snapshot_download(**kwargs: object) -> str:
        seen.update(kwargs)
        return str(_model_dir(tmp_path / "snapshot"))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv("MY_TOKEN", "hf_secret_value")
    found = resolve_model_source(
        "hf://zai-org/GLM-4.7-Flash@v1",
        pvc_mount_root=tmp_path,
        cache_dir=tmp_path / "cache",
        hf_token_env="MY_TOKEN",
    )
    assert found == tmp_path / "snapshot"
    assert seen["repo_id"] == "zai-org/GLM-4.7-Flash"
    assert seen["revision"] == "v1"
    assert seen["token"] == "hf_secret_value"


def test_an_hf_folder_is_downloaded_alone_and_is_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    seen: dict[str, object] = {}

    def fake_snapshot_download(**kwargs: object) -> str:
        seen.update(kwargs)
        root = tmp_path / "snapshot"
        _model_dir(root / "runs" / "step-400")
        return str(root)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    found = resolve_model_source(
        "hf://org/checkpoints@feature%2Fsft/runs/step-400", pvc_mount_root=tmp_path, cache_dir=tmp_path / "cache"
    )
    assert found == tmp_path / "snapshot" / "runs" / "step-400"
    assert (seen["repo_id"], seen["revision"]) == ("org/checkpoints", "feature/sft")
    patterns = seen["allow_patterns"]
    assert isinstance(patterns, list) and "runs/step-400/*.safetensors" in patterns
    assert all(p.startswith("runs/step-400/") for p in patterns)


def test_hf_errors_never_echo_the_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def failing(**kwargs: object) -> str:
        raise OSError(f"401 Unauthorized for token {kwargs['token']}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", failing)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    with pytest.raises(ModelSourceError) as info:
        resolve_model_source("hf://zai-org/GLM-4.7", pvc_mount_root=tmp_path, cache_dir=tmp_path)
    message = str(info.value)
    assert "hf_secret_value" not in message
    assert message.startswith("spec.model.source: ") and "$HF_TOKEN" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_hf_missing_repo_hints_at_the_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    def missing(**kwargs: object) -> str:
        error = RepositoryNotFoundError.__new__(
            RepositoryNotFoundError
        )  # the hub's 404, without an HTTP response
        Exception.__init__(error, "404 Client Error")
        raise error

    monkeypatch.setattr(huggingface_hub, "snapshot_download", missing)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(ModelSourceError, match="was not found .*no token was set in \\$HF_TOKEN"):
        resolve_model_source("hf://zai-org/private", pvc_mount_root=tmp_path, cache_dir=tmp_path)


def test_s3_without_s3fs_says_which_extra_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "s3fs", None)  # an import of s3fs now fails, installed or not
    with pytest.raises(ModelSourceError, match="trainer-s3") as info:
        resolve_model_source("s3://my-bucket/models/glm", pvc_mount_root=tmp_path, cache_dir=tmp_path)
    assert str(info.value).startswith("spec.model.source: ")


def test_module_has_no_network_side_effect_at_import() -> None:
    # the remote clients are imported inside the download functions only
    assert "snapshot_download" not in vars(sources)
