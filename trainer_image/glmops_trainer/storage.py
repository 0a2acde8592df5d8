"""Remote storage of the trainer: s3:// (AWS S3 and S3-compatible stores) and hf:// datasets.

Every function takes a parsed location (`S3Location`, `HfLocation`); `parse_remote` builds them
from a URI with the grammar the operator and the CRDs use (glmops.contract.uris).

Credentials are read from the environment, never from the config and never logged. The operator
puts the keys of the Secret a FineTuneJob names for a location into the trainer pod's env under
a per-location prefix (`GLMOPS_DATASET_AWS_ACCESS_KEY_ID`, `GLMOPS_OUTPUT_AWS_ENDPOINT_URL`, ...),
so the dataset, the output and the model can live in different accounts or stores. A location
whose prefixed keys are absent uses the standard variables (`AWS_ACCESS_KEY_ID`, `HF_TOKEN`, ...)
and then botocore's own chain (instance profile, web identity). The endpoint of an S3-compatible
store (MinIO, Ceph RGW) comes from `<PREFIX>AWS_ENDPOINT_URL`, else `AWS_ENDPOINT_URL_S3` or
`AWS_ENDPOINT_URL`; with an endpoint set, requests use path-style addressing, which those stores
expect.

What is downloaded appears under its final name only once complete (temporary name, then a
rename). What is uploaded is one object per file: S3 makes an object visible only when its upload
(single PUT or multipart) has completed, so a reader never sees half a file. A set of files is
made complete by a marker object uploaded last (`upload_tree(..., last=...)`); readers trust the
marker (the export manifest, a checkpoint's COMPLETE file), never a listing.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from glmops.contract.uris import RepoType, UriError, UriRole, format_hf_uri, parse_uri

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".glmops-partial"
"""Suffix of a download in progress; the final name appears by a rename once it is complete."""
SHA256_METADATA = "sha256"
"""User metadata key (`x-amz-meta-sha256`) that uploads carry when the file's hash is known."""


class StorageError(ValueError):
    """A remote location is malformed, missing, refused or unreachable; the message names the field and the fix.

    `transient` is true for failures a retry may cure (network, server errors); false for those
    the FineTuneJob must fix (no such object, access refused, malformed location).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class Role(StrEnum):
    """Which location of a job the credentials are for; the value is the env prefix's middle part."""

    model = "MODEL"
    dataset = "DATASET"
    output = "OUTPUT"


CREDENTIAL_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "HF_TOKEN",
)
"""Secret keys the trainer reads for a location (the operator maps the same keys into the pod)."""


def env_prefix(role: Role) -> str:
    """`GLMOPS_<ROLE>_`: the prefix of the per-location variables."""
    return f"GLMOPS_{role.value}_"


# ---- locations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Location:
    """An object or a prefix in a bucket."""

    bucket: str
    key: str
    """Object key or prefix, without a leading '/'; empty for the bucket's root."""

    @property
    def uri(self) -> str:
        """`s3://BUCKET/KEY`."""
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"

    @property
    def path(self) -> str:
        """`BUCKET/KEY` as s3fs names it."""
        return f"{self.bucket}/{self.key}".rstrip("/")

    def child(self, relative: str) -> S3Location:
        """The location `relative` (a '/'-separated path) below this one."""
        relative = relative.strip("/")
        return S3Location(self.bucket, f"{self.key.rstrip('/')}/{relative}".lstrip("/") if relative else self.key)


@dataclass(frozen=True)
class HfLocation:
    """A file or folder of a Hugging Face Hub repository: hf://[datasets/]ORG/NAME[@REVISION][/PATH]."""

    repo_id: str
    path_in_repo: str
    revision: str | None = None
    repo_type: RepoType = "dataset"

    @property
    def uri(self) -> str:
        """The location as an hf:// URI, in the Hub's form (a revision with '/' percent-encoded)."""
        return format_hf_uri(self.repo_id, self.path_in_repo, self.revision, self.repo_type)


RemoteLocation = S3Location | HfLocation


def parse_remote(uri: str, field: str, role: Role) -> RemoteLocation:
    """An s3:// or hf:// URI of `role`'s location, parsed by the shared grammar (glmops.contract.uris).

    Raises StorageError naming `field`, what is wrong and the forms the role accepts.
    """
    if uri.partition("://")[0] not in ("s3", "hf"):
        raise StorageError(f"{field}: {uri!r} is not a remote location (s3:// or hf://)")
    try:
        parsed = parse_uri(uri, field, UriRole(role.name))
    except UriError as exc:
        raise StorageError(str(exc)) from None
    if parsed.scheme == "s3" and parsed.bucket is not None:
        return S3Location(parsed.bucket, parsed.key)
    assert parsed.repo_id is not None and parsed.repo_type is not None  # hf://, the only other scheme
    return HfLocation(parsed.repo_id, parsed.key, parsed.revision, parsed.repo_type)


def is_remote(uri: str) -> bool:
    """Whether `uri` names remote storage (s3:// or hf://) rather than a pod-local path."""
    return uri.startswith(("s3://", "hf://"))


# ---- credentials ----------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Settings:
    """How to reach one location's bucket; `repr` never shows the secrets."""

    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    endpoint_url: str | None = None
    region: str | None = None

    def __repr__(self) -> str:
        keys = "set" if self.access_key_id else "default chain"
        return f"S3Settings(credentials={keys}, endpoint_url={self.endpoint_url!r}, region={self.region!r})"


def s3_settings(role: Role, environ: Mapping[str, str] | None = None) -> S3Settings:
    """The credentials and endpoint of `role`'s location, from its prefixed variables or the standard ones.

    Nothing is mixed between the two sets: when the prefixed access key is present, the secret
    key, session token and endpoint are taken from the prefixed variables only (no endpoint there
    means AWS itself).
    """
    env = os.environ if environ is None else environ
    prefix = env_prefix(role)

    def get(name: str) -> str | None:
        return env.get(name) or None

    if get(prefix + "AWS_ACCESS_KEY_ID"):
        # A Secret of its own: its store may be another one than the shared variables describe.
        key, secret, token = (get(prefix + k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"))
        endpoint = get(prefix + "AWS_ENDPOINT_URL")
    else:
        key, secret, token = (get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"))
        endpoint = get(prefix + "AWS_ENDPOINT_URL") or get("AWS_ENDPOINT_URL_S3") or get("AWS_ENDPOINT_URL")
    region = get(prefix + "AWS_REGION") or get("AWS_REGION") or get("AWS_DEFAULT_REGION")
    return S3Settings(key, secret, token, endpoint, region)


def hf_token(role: Role, fallback_env: str = "HF_TOKEN", environ: Mapping[str, str] | None = None) -> str | None:
    """The Hub token of `role`'s location: `<PREFIX>HF_TOKEN`, else the variable `fallback_env`."""
    env = os.environ if environ is None else environ
    return env.get(env_prefix(role) + "HF_TOKEN") or env.get(fallback_env) or None


# ---- S3 -------------------------------------------------------------------------------------


def s3_filesystem(settings: S3Settings, field: str) -> Any:
    """An s3fs filesystem for `settings` (no listing cache: markers must be seen as soon as they exist)."""
    try:
        import s3fs  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise StorageError(
            f"{field}: s3:// needs the s3fs package, which this trainer image lacks; install the 'trainer-s3' "
            "extra (pip install 'glmops[trainer-s3]') or use a pvc:// location"
        ) from None
    client_kwargs: dict[str, Any] = {}
    # The endpoint is decided here, per location; botocore must not add one from the environment.
    config_kwargs: dict[str, Any] = {"ignore_configured_endpoint_urls": True}
    if settings.endpoint_url:
        client_kwargs["endpoint_url"] = settings.endpoint_url
        # MinIO and Ceph serve buckets under the endpoint's path, not as DNS names.
        config_kwargs["s3"] = {"addressing_style": "path"}
    if settings.region:
        client_kwargs["region_name"] = settings.region
    return s3fs.S3FileSystem(
        key=settings.access_key_id,
        secret=settings.secret_access_key,
        token=settings.session_token,
        client_kwargs=client_kwargs,
        config_kwargs=config_kwargs,
        use_listings_cache=False,
        skip_instance_cache=True,
    )


def _describe(exc: BaseException) -> str:
    """An exception as `Type: message`, for messages that must never carry credentials.

    botocore's messages name the operation, bucket and error code, never the keys.
    """
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _storage_error(field: str, what: str, location: RemoteLocation, exc: BaseException, fix: str) -> StorageError:
    if isinstance(exc, FileNotFoundError):
        return StorageError(f"{field}: {location.uri} does not exist; {fix}")
    if isinstance(exc, PermissionError):
        return StorageError(f"{field}: access to {location.uri} was refused ({_describe(exc)}); {fix}")
    return StorageError(f"{field}: {what} {location.uri} failed ({_describe(exc)}); {fix}", transient=True)


def _credentials_hint(role: Role) -> str:
    spec_field = {Role.model: "spec.model", Role.dataset: "spec.dataset", Role.output: "spec.output"}[role]
    return (
        f"check the bucket and key, the keys in the Secret named by {spec_field}.credentialsSecret "
        f"and the endpoint ({spec_field}.endpointUrl) for S3-compatible stores"
    )


def fetch_s3_file(fs: Any, location: S3Location, destination: Path, *, role: Role, field: str) -> Path:
    """Download one object to `destination` (written under a temporary name, then renamed)."""
    hint = _credentials_hint(role)
    try:
        info = fs.info(location.path)
    except Exception as exc:  # noqa: BLE001  (botocore/aiohttp errors have no common base)
        raise _storage_error(field, "reading", location, exc, hint) from None
    if info.get("type") != "file":
        raise StorageError(f"{field}: {location.uri} is a prefix (a folder), not an object; name the file itself")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + PARTIAL_SUFFIX)
    try:
        fs.get_file(location.path, str(partial))
    except Exception as exc:  # noqa: BLE001
        partial.unlink(missing_ok=True)
        raise _storage_error(field, "downloading", location, exc, hint) from None
    size = partial.stat().st_size
    if size != int(info.get("size", size)):
        partial.unlink(missing_ok=True)
        raise StorageError(f"{field}: downloading {location.uri} stopped after {size} of {info['size']} bytes; retry")
    os.replace(partial, destination)
    return destination


def fetch_s3_tree(fs: Any, location: S3Location, destination: Path, *, role: Role, field: str) -> Path:
    """Download every object under a prefix into `destination`, which appears (by a rename) only when complete.

    An existing `destination` is taken as complete (it can only exist after that rename).
    """
    if destination.is_dir():
        return destination
    hint = _credentials_hint(role)
    try:
        objects = {name: info for name, info in fs.find(location.path + "/", detail=True).items() if info.get("type") == "file"}
    except Exception as exc:  # noqa: BLE001
        raise _storage_error(field, "listing", location, exc, hint) from None
    if not objects:
        raise StorageError(f"{field}: {location.uri} holds no objects; {hint}")
    partial = destination.with_name(destination.name + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    prefix = location.path + "/"
    for name in sorted(objects):
        relative = name[len(prefix) :]
        target = partial / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fs.get_file(name, str(target))
        except Exception as exc:  # noqa: BLE001
            raise _storage_error(field, "downloading", S3Location(location.bucket, name.split("/", 1)[1]), exc, hint) from None
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, destination)
    return destination


def list_s3_files(fs: Any, location: S3Location, *, role: Role, field: str) -> dict[str, int]:
    """Relative path -> size of every object under a prefix (empty when there is none)."""
    try:
        found = fs.find(location.path + "/", detail=True)
    except FileNotFoundError:
        return {}
    except Exception as exc:  # noqa: BLE001
        raise _storage_error(field, "listing", location, exc, _credentials_hint(role)) from None
    prefix = location.path + "/"
    return {
        name[len(prefix) :]: int(info.get("size", 0))
        for name, info in found.items()
        if info.get("type") == "file" and name.startswith(prefix)
    }


def s3_exists(fs: Any, location: S3Location, *, role: Role, field: str) -> bool:
    """Whether the object exists."""
    try:
        return bool(fs.isfile(location.path))
    except Exception as exc:  # noqa: BLE001
        raise _storage_error(field, "reading", location, exc, _credentials_hint(role)) from None


def upload_file(
    fs: Any, source: Path, location: S3Location, *, role: Role, field: str, sha256: str | None = None
) -> None:
    """Upload one file as one object (visible only once complete); `sha256` goes into its metadata."""
    extra: dict[str, Any] = {"Metadata": {SHA256_METADATA: sha256}} if sha256 else {}
    try:
        fs.put_file(str(source), location.path, **extra)
    except Exception as exc:  # noqa: BLE001
        raise _storage_error(field, "uploading to", location, exc, _credentials_hint(role)) from None


def remote_sha256(fs: Any, location: S3Location) -> tuple[int, str | None] | None:
    """(size, sha256 metadata) of an object, or None when it does not exist or cannot be read."""
    try:
        info = fs.info(location.path)
        metadata = fs.metadata(location.path)
    except Exception:  # noqa: BLE001  (absent or unreadable: upload it again)
        return None
    return int(info.get("size", -1)), (metadata or {}).get(SHA256_METADATA)


def delete_objects(fs: Any, locations: Iterable[S3Location], *, role: Role, field: str) -> None:
    """Delete objects in the given order (absent ones are fine)."""
    for location in locations:
        try:
            fs.rm_file(location.path)
        except FileNotFoundError:
            continue
        except Exception as exc:  # noqa: BLE001
            raise _storage_error(field, "deleting", location, exc, _credentials_hint(role)) from None


def local_files(root: Path, skip: Callable[[str], bool]) -> Iterator[tuple[str, Path]]:
    """(relative '/'-path, path) of every regular file under `root` that `skip` does not exclude, sorted."""
    if not root.is_dir():
        return
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            relative = path.relative_to(root).as_posix()
            if not skip(relative):
                yield relative, path


def upload_tree(
    fs: Any,
    root: Path,
    location: S3Location,
    files: Iterable[tuple[str, Path]],
    *,
    role: Role,
    field: str,
    hashes: Mapping[str, str] | None = None,
    last: Iterable[tuple[str, Path]] = (),
) -> list[str]:
    """Upload `files` below `location`, then `last` (the marker that makes the set complete).

    A file whose sha256 is known (`hashes`) and whose remote copy has the same size and sha256
    metadata is not uploaded again, so a retried publish costs only what changed. Returns the
    relative paths uploaded.
    """
    known = dict(hashes or {})
    uploaded: list[str] = []
    for relative, path in files:
        target = location.child(relative)
        digest = known.get(relative)
        if digest is not None and remote_sha256(fs, target) == (path.stat().st_size, digest):
            log.info("kept %s (same size and sha256 already uploaded)", target.uri)
            continue
        upload_file(fs, path, target, role=role, field=field, sha256=digest)
        uploaded.append(relative)
    for relative, path in last:
        upload_file(fs, path, location.child(relative), role=role, field=field, sha256=known.get(relative))
        uploaded.append(relative)
    return uploaded


# ---- Hugging Face Hub ------------------------------------------------------------------------


def fetch_hf_file(location: HfLocation, cache_dir: Path, *, token: str | None, field: str) -> Path:
    """One file of a Hub dataset repository, through huggingface_hub's cache (downloads are atomic there).

    Fails at once with a message naming `field` when the Hub cannot be reached (no network in
    the pod, HF_HUB_OFFLINE=1 and the file not cached) or refuses the request.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        local = hf_hub_download(
            repo_id=location.repo_id,
            filename=location.path_in_repo,
            repo_type=location.repo_type,
            revision=location.revision,
            cache_dir=str(cache_dir),
            token=token or False,
        )
    except GatedRepoError:
        raise StorageError(
            f"{field}: {location.repo_id} is gated; accept its terms on the Hub and put a token (key HF_TOKEN) "
            "in the Secret named by spec.dataset.credentialsSecret"
        ) from None
    except RevisionNotFoundError:
        raise StorageError(
            f"{field}: revision {location.revision!r} of dataset {location.repo_id} does not exist; "
            "name a branch, tag or commit"
        ) from None
    except RepositoryNotFoundError:
        hint = "" if token else " (no token was given; private repositories need HF_TOKEN in spec.dataset.credentialsSecret)"
        raise StorageError(f"{field}: dataset repository {location.repo_id} was not found{hint}") from None
    except LocalEntryNotFoundError:
        raise StorageError(
            f"{field}: {location.uri} cannot be fetched: the Hugging Face Hub is not reachable from the trainer "
            "(no network, or HF_HUB_OFFLINE is set) and the file is not cached; give the pod access to the Hub "
            "or copy the file to a PVC or bucket and use pvc:// or s3://"
        ) from None
    except RemoteEntryNotFoundError:
        raise StorageError(
            f"{field}: {location.path_in_repo} is not a file of dataset {location.repo_id}"
            + (f" at {location.revision}" if location.revision else "")
            + "; check the path inside the repository"
        ) from None
    except Exception as exc:  # noqa: BLE001  (HTTP/network errors: keep the type, drop text that may carry the token)
        raise StorageError(
            f"{field}: fetching {location.uri} from the Hugging Face Hub failed ({type(exc).__name__}); check "
            "network access to the Hub and the token (HF_TOKEN in spec.dataset.credentialsSecret)"
        ) from None
    return Path(local)
