"""Remote locations of a run staged in local folders, so `train` and `export` only see local paths.

    with staged(config) as run:            # fetch inputs, restore the output's saved state
        result = train.main(run.config)    # run.config: the same job with local locations
        result = run.publish(result)       # upload the outputs, the manifest last

- An s3:// or hf:// dataset is downloaded once into the staging folder under its own file name
  (data errors keep saying `train.jsonl:12`).
- An s3:// output gets a local mirror. Before the run, the newest complete checkpoint, the
  progress history and a published adapter are restored from the bucket, so a replaced pod
  resumes and the export step finds its adapter. During the run a background thread uploads
  every checkpoint that has become complete (its files first, its COMPLETE marker last) and
  deletes in the bucket those that the local rotation deleted (marker first). At the end
  `publish` withdraws the bucket's manifest, uploads the artifacts (a file already there with the
  same size and sha256 is kept), then `result.json`, then `artifacts.json` last, with every URI
  pointing into the bucket. Until that last upload the bucket holds no manifest, and readers
  trust only the manifest.
- The result reaches `runtime.result_file` (the pod's termination message) only after the upload:
  the local run writes its result into the staging folder instead, and a pod killed while
  uploading reports a failure, never a success whose files are missing.

Local locations (file://, pvc://) pass through unchanged and nothing is uploaded. s3:// models
are fetched by `glmops_trainer.model.sources`, which uses the same storage functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from glmops_trainer.config import TrainerConfig
from glmops_trainer.storage import (
    HfLocation,
    Role,
    S3Location,
    StorageError,
    delete_objects,
    fetch_hf_file,
    fetch_s3_file,
    hf_token,
    is_remote,
    list_s3_files,
    local_files,
    parse_remote,
    s3_filesystem,
    s3_settings,
    upload_file,
    upload_tree,
)

log = logging.getLogger(__name__)

STAGING_DIR_ENV = "GLMOPS_STAGING_DIR"
"""Where remote locations are staged (default: `$TMPDIR/glmops-staging`, the pod's scratch volume)."""
SYNC_INTERVAL_ENV = "GLMOPS_CHECKPOINT_SYNC_SECONDS"
DEFAULT_SYNC_INTERVAL_S = 30.0

# Names of the output layout (train.py, checkpoints.py, export/publish.py); kept here as plain
# strings so staging imports no ML library.
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"
COMPLETE_MARKER = "COMPLETE"
ADAPTER_DIR = "adapter"
PROGRESS_FILE = "progress.jsonl"
RESULT_FILE = "result.json"
MANIFEST_NAME = "artifacts.json"
LOCAL_RESULT = ".local-result.json"
"""The local run's own result file (local URIs); `publish` writes the real one."""
LOCAL_ONLY = (".model-cache/", ".export-work/", ".export-journal.jsonl", LOCAL_RESULT)
"""Bookkeeping of the local run that is never uploaded (model cache, export scratch, export journal)."""
TEMPORARY_MARKERS = (".glmops-tmp", ".glmops-partial")

DATASET_FIELD = "dataset.source"
OUTPUT_FIELD = "output.destination"


def staging_root() -> Path:
    """The folder remote locations are staged in."""
    explicit = os.environ.get(STAGING_DIR_ENV)
    return Path(explicit) if explicit else Path(tempfile.gettempdir()) / "glmops-staging"


def _slot(uri: str) -> str:
    # One folder per location, named by its hash: two jobs or two URIs never share files.
    return hashlib.sha256(uri.encode("utf-8")).hexdigest()[:16]


def is_main_process() -> bool:
    """Global rank 0 (torchrun sets RANK); only it uploads."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Serialise the processes of one pod (torchrun ranks) on `folder`; the first one does the work.

    The lock file sits beside the folder, so nothing of it is ever uploaded.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with folder.with_name(folder.name + ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def rebase(value: Any, local_base: str, remote_base: str) -> Any:
    """`value` with every string that starts with `local_base` (a URI) moved under `remote_base`."""
    local_base, remote_base = local_base.rstrip("/"), remote_base.rstrip("/")
    if isinstance(value, str):
        if value == local_base:
            return remote_base
        if value.startswith(local_base + "/"):
            return remote_base + value[len(local_base) :]
        return value
    if isinstance(value, dict):
        return {k: rebase(v, local_base, remote_base) for k, v in value.items()}
    if isinstance(value, list):
        return [rebase(v, local_base, remote_base) for v in value]
    return value


def _uploadable(relative: str) -> bool:
    if relative.startswith(LOCAL_ONLY) or relative in LOCAL_ONLY:
        return False
    if relative.startswith(CHECKPOINTS_DIR + "/") or relative in (MANIFEST_NAME, RESULT_FILE):
        return False  # checkpoints are synced on their own; manifest and result go last
    # Leftovers of interrupted local writes: temp names of the publisher and downloads, and
    # `<name>.tmp` files or folders (the adapter is saved to `.adapter.tmp/` and renamed).
    parts = relative.split("/")
    return not any(marker in relative for marker in TEMPORARY_MARKERS) and not any(p.endswith(".tmp") for p in parts)


# ---- the dataset -----------------------------------------------------------------------------


def fetch_dataset(uri: str, root: Path, hf_token_env: str = "HF_TOKEN") -> Path:
    """The local copy of an s3:// or hf:// dataset file, downloaded once per pod."""
    location = parse_remote(uri, DATASET_FIELD, Role.dataset)
    folder = root / "dataset" / _slot(uri)
    with _locked(folder):
        if isinstance(location, HfLocation):
            return fetch_hf_file(
                location, folder / "hf-cache", token=hf_token(Role.dataset, hf_token_env), field=DATASET_FIELD
            )
        destination = folder / location.key.rsplit("/", 1)[-1]  # the dataset role names a file
        if destination.is_file():
            return destination
        fs = s3_filesystem(s3_settings(Role.dataset), DATASET_FIELD)
        return fetch_s3_file(fs, location, destination, role=Role.dataset, field=DATASET_FIELD)


# ---- the output --------------------------------------------------------------------------------


def _checkpoint_dirs(files: dict[str, int]) -> dict[str, set[str]]:
    """checkpoint name -> relative file names inside it, from a listing of the checkpoints prefix."""
    found: dict[str, set[str]] = {}
    for relative in files:
        name, sep, inside = relative.partition("/")
        if sep and name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX) :].isdigit():
            found.setdefault(name, set()).add(inside)
    return found


def _step(name: str) -> int:
    return int(name[len(CHECKPOINT_PREFIX) :])


class S3Output:
    """The bucket side of an s3:// output and its local mirror."""

    def __init__(self, location: S3Location, mirror: Path) -> None:
        self.location = location
        self.mirror = mirror
        self.fs = s3_filesystem(s3_settings(Role.output), OUTPUT_FIELD)
        self._lock = threading.Lock()

    def _list(self, relative: str) -> dict[str, int]:
        return list_s3_files(self.fs, self.location.child(relative), role=Role.output, field=OUTPUT_FIELD)

    def _download(self, relative: str, destination: Path) -> None:
        fetch_s3_file(self.fs, self.location.child(relative), destination, role=Role.output, field=OUTPUT_FIELD)

    def check_access(self) -> None:
        """Fail before training when the destination cannot be listed, written and deleted in.

        A missing bucket, a read-only key or a wrong endpoint would otherwise surface only when the
        first checkpoint or the final artifacts are uploaded, after hours of GPU time.
        """
        self._list("")
        probe = self.location.child(f".glmops-access-check-{os.getpid()}")
        with tempfile.NamedTemporaryFile(suffix=".check") as handle:
            upload_file(self.fs, Path(handle.name), probe, role=Role.output, field=OUTPUT_FIELD)
        delete_objects(self.fs, [probe], role=Role.output, field=OUTPUT_FIELD)

    # -- restore ---------------------------------------------------------------------------

    def restore(self) -> None:
        """Bring back what a previous pod saved: the newest complete checkpoint, progress, the adapter."""
        checkpoints = _checkpoint_dirs(self._list(CHECKPOINTS_DIR))
        complete = sorted((n for n, files in checkpoints.items() if COMPLETE_MARKER in files), key=_step)
        local_checkpoints = self.mirror / CHECKPOINTS_DIR
        if complete:
            newest = complete[-1]
            target = local_checkpoints / newest
            if not (target / COMPLETE_MARKER).is_file():
                partial = local_checkpoints / f".{newest}.glmops-partial"
                for inside in sorted(checkpoints[newest] - {COMPLETE_MARKER}):
                    self._download(f"{CHECKPOINTS_DIR}/{newest}/{inside}", partial / inside)
                self._download(f"{CHECKPOINTS_DIR}/{newest}/{COMPLETE_MARKER}", partial / COMPLETE_MARKER)
                if target.exists():
                    shutil.rmtree(target)
                os.replace(partial, target)
            log.info("restored checkpoint %s from %s", newest, self.location.uri)
        progress = self._list("").get(PROGRESS_FILE)
        if progress is not None and not (self.mirror / PROGRESS_FILE).exists():
            self._download(PROGRESS_FILE, self.mirror / PROGRESS_FILE)
        adapter = self._list(ADAPTER_DIR)
        if "adapter_config.json" in adapter and not (self.mirror / ADAPTER_DIR / "adapter_config.json").exists():
            for inside in sorted(adapter):
                self._download(f"{ADAPTER_DIR}/{inside}", self.mirror / ADAPTER_DIR / inside)

    # -- checkpoints -------------------------------------------------------------------------

    def sync_checkpoints(self) -> None:
        """Make the bucket's checkpoints those complete in the mirror: upload new ones, delete rotated ones."""
        with self._lock:
            self._sync_checkpoints()

    def _sync_checkpoints(self) -> None:
        local_root = self.mirror / CHECKPOINTS_DIR
        local = {
            d.name: d
            for d in (local_root.iterdir() if local_root.is_dir() else [])
            if d.is_dir() and d.name.startswith(CHECKPOINT_PREFIX) and (d / COMPLETE_MARKER).is_file()
        }
        remote = _checkpoint_dirs(self._list(CHECKPOINTS_DIR))
        remote_complete = {n for n, files in remote.items() if COMPLETE_MARKER in files}
        for name in sorted(set(local) - remote_complete, key=_step):
            self._upload_checkpoint(local[name])
        for name in sorted(set(remote) - set(local), key=_step):
            base = self.location.child(f"{CHECKPOINTS_DIR}/{name}")
            ordered = ([COMPLETE_MARKER] if COMPLETE_MARKER in remote[name] else []) + sorted(remote[name] - {COMPLETE_MARKER})
            delete_objects(self.fs, [base.child(f) for f in ordered], role=Role.output, field=OUTPUT_FIELD)
            log.info("deleted rotated checkpoint %s from %s", name, self.location.uri)
        progress = self.mirror / PROGRESS_FILE
        if progress.is_file():
            upload_file(self.fs, progress, self.location.child(PROGRESS_FILE), role=Role.output, field=OUTPUT_FIELD)

    def _upload_checkpoint(self, directory: Path) -> None:
        try:
            marker = json.loads((directory / COMPLETE_MARKER).read_text(encoding="utf-8"))
            hashes = {str(f["path"]): str(f["sha256"]) for f in marker["files"]}
            files = [(rel, directory / rel) for rel in sorted(hashes)]
            upload_tree(
                self.fs,
                directory,
                self.location.child(f"{CHECKPOINTS_DIR}/{directory.name}"),
                files,
                role=Role.output,
                field=OUTPUT_FIELD,
                hashes=hashes,
                last=[(COMPLETE_MARKER, directory / COMPLETE_MARKER)],
            )
        except (FileNotFoundError, StorageError) as exc:
            # Rotated away while uploading (or a transient error): the next sync decides again.
            log.warning("checkpoint %s not uploaded this time: %s", directory.name, exc)
            return
        log.info("uploaded checkpoint %s to %s", directory.name, self.location.uri)

    # -- publish -----------------------------------------------------------------------------

    def publish(self) -> list[str]:
        """Upload the run's outputs with the manifest last; returns the relative paths uploaded."""
        with self._lock:
            self._sync_checkpoints()
            manifest_path = self.mirror / MANIFEST_NAME
            manifest: dict[str, Any] | None = None
            if manifest_path.is_file():
                manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            # Withdraw the old manifest first: from now on files may change under it.
            delete_objects(self.fs, [self.location.child(MANIFEST_NAME)], role=Role.output, field=OUTPUT_FIELD)
            hashes = {str(a["path"]): str(a["sha256"]) for a in (manifest or {}).get("artifacts", [])}
            files = list(local_files(self.mirror, lambda rel: not _uploadable(rel)))
            uploaded = upload_tree(self.fs, self.mirror, self.location, files, role=Role.output, field=OUTPUT_FIELD, hashes=hashes)
            result = self.mirror / RESULT_FILE
            if result.is_file():
                self._upload_rebased(result, RESULT_FILE)
                uploaded.append(RESULT_FILE)
            if manifest is not None:
                self._check_listed(manifest)
                self._upload_rebased(manifest_path, MANIFEST_NAME)
                uploaded.append(MANIFEST_NAME)
            return uploaded

    def _check_listed(self, manifest: dict[str, Any]) -> None:
        sizes = self._list("")
        for artifact in manifest.get("artifacts", []):
            if sizes.get(str(artifact["path"])) != int(artifact["sizeBytes"]):
                raise StorageError(
                    f"{OUTPUT_FIELD}: {self.location.child(str(artifact['path'])).uri} is missing or of the wrong size "
                    "after upload; the manifest is not published"
                )

    def _upload_rebased(self, path: Path, relative: str) -> None:
        content = rebase(json.loads(path.read_text(encoding="utf-8")), self.local_uri, self.location.uri)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as handle:
            json.dump(content, handle, indent=2)
            handle.write("\n")
        try:
            upload_file(self.fs, Path(handle.name), self.location.child(relative), role=Role.output, field=OUTPUT_FIELD)
        finally:
            os.unlink(handle.name)

    @property
    def local_uri(self) -> str:
        """The mirror as a file:// URI (what the local run writes into its result and manifest)."""
        return f"file://{self.mirror}"


class _CheckpointSyncThread(threading.Thread):
    def __init__(self, output: S3Output, interval_s: float) -> None:
        super().__init__(name="glmops-checkpoint-sync", daemon=True)
        self.output = output
        self.interval_s = interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                self.output.sync_checkpoints()
            except Exception as exc:  # noqa: BLE001  (the next round retries; the final publish must succeed)
                log.warning("checkpoint upload failed, retrying in %.0f s: %s", self.interval_s, exc)


@dataclasses.dataclass
class StagedRun:
    """A run whose remote locations are staged: `config` is what the recipe sees."""

    config: TrainerConfig
    original: TrainerConfig
    output: S3Output | None = None

    def publish(self, result: Any) -> Any:
        """Upload the outputs (main process only), then write `result` with remote URIs where the original config says.

        `result` is a `glmops_trainer.progress.TrainResult`; the local run wrote it with local URIs
        into the staging folder.
        """
        if self.output is None:
            return result
        from glmops_trainer.progress import write_result

        remote = dataclasses.replace(
            result,
            output_uri=rebase(result.output_uri, self.output.local_uri, self.output.location.uri),
            artifacts=rebase(result.artifacts, self.output.local_uri, self.output.location.uri),
        )
        if is_main_process():
            self.output.publish()
            write_result(remote, Path(self.original.runtime.result_file), None)
        return remote

    def publish_outputs(self) -> None:
        """Upload the outputs (main process only) when the output is remote; for runs without a result (export)."""
        if self.output is not None and is_main_process():
            self.output.publish()


@contextlib.contextmanager
def staged(
    config: TrainerConfig, root: Path | None = None, sync_interval_s: float | None = None, *, dataset: bool = True
) -> Iterator[StagedRun]:
    """Stage `config`'s remote dataset and output (see the module docstring); yields the local run.

    `dataset=False` leaves the dataset where it is: the export step never reads it, and a store
    that is unreachable from the export pod must not fail an export that does not need it.
    """
    remote_data = dataset and is_remote(config.data.source)
    remote_output = config.output.destination.startswith("s3://")
    if not (remote_data or remote_output):
        yield StagedRun(config, config)
        return
    root = root or staging_root()
    data: dict[str, Any] = {}
    output: dict[str, Any] = {}
    runtime: dict[str, Any] = {}
    if remote_data:
        data["source"] = f"file://{fetch_dataset(config.data.source, root, config.runtime.hf_token_env)}"
    s3_output: S3Output | None = None
    if remote_output:
        location = parse_remote(config.output.destination, OUTPUT_FIELD, Role.output)
        assert isinstance(location, S3Location)
        mirror = root / "output" / _slot(config.output.destination)
        s3_output = S3Output(location, mirror)
        with _locked(mirror):
            s3_output.check_access()
            s3_output.restore()
        output["destination"] = s3_output.local_uri
        # The termination message is written by `publish`, after the upload.
        runtime["result_file"] = str(mirror / LOCAL_RESULT)
    local = config.model_copy(
        update={
            "data": config.data.model_copy(update=data),
            "output": config.output.model_copy(update=output),
            "runtime": config.runtime.model_copy(update=runtime),
        }
    )
    run = StagedRun(local, config, s3_output)
    sync: _CheckpointSyncThread | None = None
    if s3_output is not None and is_main_process():
        interval = sync_interval_s if sync_interval_s is not None else float(os.environ.get(SYNC_INTERVAL_ENV, DEFAULT_SYNC_INTERVAL_S))
        sync = _CheckpointSyncThread(s3_output, interval)
        sync.start()
    try:
        yield run
    finally:
        if sync is not None:
            sync.stopped.set()
            sync.join()
            # Whatever happened, the checkpoints written so far reach the bucket (best effort on failure).
            try:
                s3_output.sync_checkpoints()  # type: ignore[union-attr]
            except StorageError as exc:
                log.warning("final checkpoint upload failed: %s", exc)
