"""The only module that talks to the Kubernetes API: get-or-create, status patches, facts.

Handlers call these functions; the planner never does. Conflicts and races are expected (a
restarted operator re-applies what it already created), so creation is idempotent: an object
that exists with our owner is left alone, one that exists without it is reported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from glmops.api.common import GROUP, VERSION
from glmops.plan.finetune import GPU_COUNT_LABEL, GPU_MEMORY_LABEL, GPU_PRODUCT_LABEL, GpuNode

log = logging.getLogger(__name__)


class ForeignObjectError(RuntimeError):
    """An object with the name glmops wants exists but belongs to something else."""


def _owned_by(metadata: Any, owner_uid: str) -> bool:
    refs = metadata.owner_references if hasattr(metadata, "owner_references") else metadata.get("ownerReferences")
    for ref in refs or []:
        uid = ref.uid if hasattr(ref, "uid") else ref.get("uid")
        if uid == owner_uid:
            return True
    return False


def apply_child(api: client.ApiClient, obj: Mapping[str, Any], owner_uid: str) -> bool:
    """Create `obj` unless it exists; returns True when created. Never replaces a running object."""
    kind = obj["kind"]
    namespace = obj["metadata"]["namespace"]
    name = obj["metadata"]["name"]
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    create, read = {
        "ConfigMap": (core.create_namespaced_config_map, core.read_namespaced_config_map),
        "Service": (core.create_namespaced_service, core.read_namespaced_service),
        "Job": (batch.create_namespaced_job, batch.read_namespaced_job),
    }[kind]
    try:
        create(namespace, obj)
        return True
    except ApiException as exc:
        if exc.status != 409:
            raise
    existing = read(name, namespace)
    if not _owned_by(existing.metadata, owner_uid):
        raise ForeignObjectError(f"{kind} {namespace}/{name} exists and is not owned by this resource; delete or rename it")
    return False


def patch_custom_status(api: client.ApiClient, plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
    """Merge-patch the status subresource of one of our resources."""
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, plural, name, {"status": dict(status)}
    )


def get_custom(api: client.ApiClient, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
    """One of our resources, or None when it is gone."""
    try:
        obj: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        return obj
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def list_custom(api: client.ApiClient, plural: str, namespace: str) -> list[dict[str, Any]]:
    """All resources of one of our kinds in a namespace."""
    result = client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, namespace, plural)
    items: list[dict[str, Any]] = result.get("items", [])
    return items


def secret_exists(api: client.ApiClient, namespace: str, name: str) -> bool:
    """Whether a Secret exists; its data is dropped unread (only existence is reported)."""
    try:
        client.CoreV1Api(api).read_namespaced_secret(name, namespace)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def pvc_exists(api: client.ApiClient, namespace: str, name: str) -> bool:
    """Whether a PersistentVolumeClaim exists."""
    try:
        client.CoreV1Api(api).read_namespaced_persistent_volume_claim(name, namespace)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def server_minor(api: client.ApiClient) -> int:
    """The apiserver's minor version (e.g. 30 for 1.30)."""
    info = client.VersionApi(api).get_code()
    return int("".join(ch for ch in info.minor if ch.isdigit()) or 0)


def gpu_nodes(api: client.ApiClient) -> tuple[GpuNode, ...]:
    """GPU offers of every schedulable node, from GPU feature discovery labels and allocatable GPUs."""
    nodes = client.CoreV1Api(api).list_node()
    result = []
    for node in nodes.items:
        if node.spec.unschedulable:
            continue
        labels = node.metadata.labels or {}
        allocatable = (node.status.allocatable or {}) if node.status else {}
        gpus = int(allocatable.get("nvidia.com/gpu", labels.get(GPU_COUNT_LABEL, "0")) or 0)
        memory = int(labels.get(GPU_MEMORY_LABEL, "0") or 0)
        result.append(GpuNode(node.metadata.name, gpus, memory, labels.get(GPU_PRODUCT_LABEL, "")))
    return tuple(result)


def job_pods(api: client.ApiClient, namespace: str, job_name: str) -> list[client.V1Pod]:
    """Pods of a batch/v1 Job, newest first."""
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"job-name={job_name}").items
    return sorted(pods, key=lambda p: p.metadata.creation_timestamp, reverse=True)


def pod_log_tail(api: client.ApiClient, namespace: str, pod: str, container: str, lines: int = 50) -> str:
    """The last lines of a container's log ('' when it has none yet)."""
    try:
        text: str = client.CoreV1Api(api).read_namespaced_pod_log(pod, namespace, container=container, tail_lines=lines)
        return text
    except ApiException as exc:
        if exc.status in (400, 404):
            return ""
        raise
