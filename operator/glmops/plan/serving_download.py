"""Models on the Hugging Face Hub: downloaded once into a cache PVC that every replica mounts read-only. Pure.

Serving pods never download: an `hf://ORG/NAME[@REVISION][/FILE]` model (the Hub's own form, read
by glmops.contract.uris) is fetched by one Job (`hf download`, in the trainer image, which ships
huggingface_hub) into a PersistentVolumeClaim the ModelDeployment owns; the replicas then mount that claim read-only like any `pvc://` model.
Each URI gets its own claim and Job (named by a hash of the URI), so a new model is downloaded
beside the one still serving; the old cache is deleted once the new version serves.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from glmops.api.common import API_VERSION
from glmops.api.modeldeployment import KIND
from glmops.contract.uris import UriError, UriRole, parse_uri
from glmops.plan import names
from glmops.plan.memory import GIB
from glmops.plan.placement import container_security_context, pod_security_context
from glmops.settings import Settings

CACHE_LABEL = "glmops.io/model-cache"
"""Label of a ModelDeployment's cache claims and download Jobs; its value is the URI's hash."""
CACHE_MOUNT = "/cache"
MODEL_DIR = "model"


@dataclass(frozen=True)
class HubModel:
    """A parsed hf:// model location."""

    repo: str
    revision: str | None = None
    file: str | None = None
    """A file inside the repository (a .gguf); None: the whole repository (a checkpoint)."""


def parse_hub_uri(uri: str, field: str = "spec.source.uri") -> HubModel | str:
    """The repository, revision and file of an hf:// model URI (glmops.contract.uris), or what is wrong with it."""
    try:
        parsed = parse_uri(uri, field, UriRole.model)
    except UriError as exc:
        return str(exc)
    if parsed.scheme != "hf" or parsed.repo_id is None:
        return f"{field}: {uri!r} is not an hf:// model; write hf://ORG/NAME[@REVISION][/FILE]"
    return HubModel(parsed.repo_id, parsed.revision, parsed.key or None)


def uri_hash(uri: str) -> str:
    """Eight hex digits that name a URI's cache claim and download Job."""
    return hashlib.sha256(uri.encode()).hexdigest()[:8]


def cache_names(deployment: str, uri: str) -> tuple[str, str]:
    """(claim, Job) names of a ModelDeployment's download of `uri`."""
    digest = uri_hash(uri)
    return names.child_name(deployment, f"model-{digest}"), names.child_name(deployment, f"download-{digest}", max_length=52)


@dataclass(frozen=True)
class DownloadPlan:
    """Where a Hub model is cached and the objects that put it there."""

    claim: str
    job: str
    local_uri: str
    """The model inside the claim, as a pvc:// URI."""
    objects: tuple[dict[str, Any], ...]
    """The cache claim, then the download Job: created once, never changed."""


def cache_size_gib(weight_bytes: float) -> int:
    """Room for the model's files with a margin (tokenizer, configs, the Hub's partial files)."""
    return math.ceil(weight_bytes * 1.1 / GIB + 2)


def plan_download(
    deployment: str,
    namespace: str,
    owner_uid: str,
    uri: str,
    model: HubModel,
    weight_bytes: float,
    credentials_secret: str | None,
    settings: Settings,
) -> DownloadPlan:
    """The cache claim and download Job of one hf:// model of a ModelDeployment."""
    claim, job = cache_names(deployment, uri)
    digest = uri_hash(uri)
    labels = {
        "app.kubernetes.io/name": "glmops-model-cache",
        "app.kubernetes.io/instance": deployment,
        "app.kubernetes.io/managed-by": "glmops",
        "glmops.io/modeldeployment": deployment,
        CACHE_LABEL: digest,
    }
    owner = {"apiVersion": API_VERSION, "kind": KIND, "name": deployment, "uid": owner_uid, "controller": True, "blockOwnerDeletion": True}

    def metadata(name: str) -> dict[str, Any]:
        return {"name": name, "namespace": namespace, "labels": dict(labels), "ownerReferences": [dict(owner)]}

    pvc_spec: dict[str, Any] = {
        "accessModes": [settings.model_cache_access_mode],
        "resources": {"requests": {"storage": f"{cache_size_gib(weight_bytes)}Gi"}},
    }
    if settings.model_cache_storage_class:
        pvc_spec["storageClassName"] = settings.model_cache_storage_class
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata(claim), "spec": pvc_spec}

    local_dir = f"{CACHE_MOUNT}/{MODEL_DIR}"
    command = ["hf", "download", model.repo, *([model.file] if model.file else []), "--local-dir", local_dir]
    if model.revision:
        command += ["--revision", model.revision]
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/scratch"},
        {"name": "HF_HOME", "value": "/scratch/hf"},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
    ]
    if credentials_secret:
        # By reference: the kubelet reads the token when it starts the container.
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": credentials_secret, "key": "HF_TOKEN"}}})
    job_obj = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(job),
        "spec": {
            "backoffLimit": 3,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": pod_security_context(),
                    "containers": [
                        {
                            "name": "download",
                            "image": settings.trainer_image,
                            "command": command,
                            "env": env,
                            "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
                            "volumeMounts": [
                                {"name": "cache", "mountPath": CACHE_MOUNT},
                                {"name": "scratch", "mountPath": "/scratch"},
                            ],
                            "securityContext": container_security_context(),
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                        }
                    ],
                    "volumes": [
                        {"name": "cache", "persistentVolumeClaim": {"claimName": claim}},
                        {"name": "scratch", "emptyDir": {}},
                    ],
                },
            },
        },
    }
    local_uri = f"pvc://{claim}/{MODEL_DIR}" + (f"/{model.file}" if model.file else "")
    return DownloadPlan(claim, job, local_uri, (pvc, job_obj))


def download_state(job: dict[str, Any] | None) -> str | None:
    """`succeeded`, `failed: WHY` or `running` from a download Job as read; None when it does not exist."""
    if job is None:
        return None
    conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}
    if "Complete" in conditions:
        return "succeeded"
    if "Failed" in conditions:
        failed = conditions["Failed"]
        return f"failed: {failed.get('message') or failed.get('reason') or 'the download failed'}"
    return "running"
