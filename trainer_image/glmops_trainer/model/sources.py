"""Where the base model comes from: file://, pvc://, hf:// and s3:// sources resolved to a local directory.

`resolve_model_source(config.model.source, ...)` returns a directory holding config.json and the
safetensors. Local schemes are only checked; hf:// is fetched with `huggingface_hub.snapshot_download`
(token read from the environment variable the config names, never logged or echoed); s3:// is
copied with `glmops_trainer.storage` (s3fs, the optional `trainer-s3` extra; credentials and the
endpoint of S3-compatible stores from the environment).
Errors are `ModelSourceError`s that name the field (`spec.model.source`) and say how to fix it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from glmops.contract.uris import Scheme, UriError, UriRole, parse_uri

SOURCE_FIELD = "spec.model.source"
"""The FineTuneJob field users write the source in; errors name it."""

class ModelSourceError(ValueError):
    """The model source is malformed, missing, or cannot be fetched; the message says how to fix it."""


@dataclass(frozen=True)
class ModelSource:
    """A parsed model source URI."""

    scheme: Scheme
    location: str
    """file: absolute path; pvc: CLAIM/PATH; hf: ORG/NAME; s3: BUCKET/KEY."""
    revision: str | None = None
    """hf:// only: branch, tag or commit (decoded: `feature/x`, `refs/pr/3`)."""
    path_in_repo: str = ""
    """hf:// only: the folder inside the repository that holds the checkpoint; empty for its root."""


def parse_model_source(uri: str, field: str = SOURCE_FIELD) -> ModelSource:
    """Parse `uri` as a model location of the shared URI grammar (glmops.contract.uris), or raise ModelSourceError naming `field`."""
    try:
        parsed = parse_uri(uri, field, UriRole.model)
    except UriError as exc:
        raise ModelSourceError(str(exc)) from None
    if parsed.scheme == "hf":
        return ModelSource("hf", parsed.authority, parsed.revision, parsed.key)
    return ModelSource(parsed.scheme, parsed.location)


def resolve_model_source(
    uri: str,
    *,
    pvc_mount_root: str | Path,
    cache_dir: str | Path,
    hf_token_env: str = "HF_TOKEN",
    field: str = SOURCE_FIELD,
) -> Path:
    """A local directory with the model described by `uri`, downloading into `cache_dir` when remote."""
    source = parse_model_source(uri, field)
    if source.scheme == "file":
        return _existing_model_dir(Path(source.location), uri, field)
    if source.scheme == "pvc":
        claim = source.location.split("/", 1)[0]
        local = Path(pvc_mount_root) / source.location
        if not (Path(pvc_mount_root) / claim).is_dir():
            raise ModelSourceError(
                f"{field}: claim {claim!r} of {uri!r} is not mounted at {Path(pvc_mount_root) / claim}; "
                "check that the PersistentVolumeClaim exists in the job's namespace"
            )
        return _existing_model_dir(local, uri, field)
    if source.scheme == "hf":
        return _download_hf(source, uri, Path(cache_dir), hf_token_env, field)
    return _download_s3(source, uri, Path(cache_dir), field)


def _existing_model_dir(path: Path, uri: str, field: str) -> Path:
    if not path.exists():
        raise ModelSourceError(f"{field}: {uri!r} does not exist (looked at {path}); check the path")
    if not path.is_dir():
        raise ModelSourceError(
            f"{field}: {uri!r} is a file; point it at the model directory that holds config.json"
        )
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"{field}: {uri!r} has no config.json; point it at a Hugging Face model directory "
            "(config.json, *.safetensors, tokenizer files)"
        )
    if not any(path.glob("*.safetensors")):
        raise ModelSourceError(
            f"{field}: {uri!r} holds no *.safetensors weights; save the model with safetensors"
        )
    return path


def _download_hf(source: ModelSource, uri: str, cache_dir: Path, token_env: str, field: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    token = os.environ.get(token_env) or None
    # Only what a checkpoint needs; inside `path_in_repo` when the checkpoint is a folder of the repository.
    patterns = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.py"]
    folder = f"{source.path_in_repo}/" if source.path_in_repo else ""
    try:
        local = snapshot_download(
            repo_id=source.location,
            revision=source.revision,
            cache_dir=str(cache_dir),
            token=token,
            allow_patterns=[folder + p for p in patterns],
        )
    except GatedRepoError:
        raise ModelSourceError(
            f"{field}: {source.location} is gated; accept its licence on the Hub and put a token in the "
            f"secret named by spec.model.credentialsSecret (read as ${token_env})"
        ) from None
    except RevisionNotFoundError:
        raise ModelSourceError(
            f"{field}: revision {source.revision!r} of {source.location} does not exist; name a branch, tag or commit"
        ) from None
    except RepositoryNotFoundError:
        hint = "" if token else f" (no token was set in ${token_env}; private repositories need one)"
        raise ModelSourceError(f"{field}: repository {source.location} was not found{hint}") from None
    except Exception as exc:  # noqa: BLE001  (network/HTTP errors: keep the type, drop text that may carry the token)
        raise ModelSourceError(
            f"{field}: downloading {uri} failed ({type(exc).__name__}); check network access to the Hub "
            f"and the token in ${token_env}"
        ) from None
    return _existing_model_dir(Path(local) / source.path_in_repo, uri, field)


def _download_s3(source: ModelSource, uri: str, cache_dir: Path, field: str) -> Path:
    from glmops_trainer.storage import (
        Role,
        S3Location,
        StorageError,
        fetch_s3_tree,
        s3_filesystem,
        s3_settings,
    )

    bucket, _, key = source.location.partition("/")
    # The copy appears under its final name only once complete, so a restarted pod reuses it
    # and never takes half a download for a model.
    target = cache_dir / "s3" / source.location
    try:
        fs = s3_filesystem(s3_settings(Role.model), field)
        fetch_s3_tree(fs, S3Location(bucket, key), target, role=Role.model, field=field)
    except StorageError as exc:
        raise ModelSourceError(str(exc)) from None
    return _existing_model_dir(target, uri, field)
