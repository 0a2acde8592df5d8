"""The only module that talks to the Kubernetes API: get-or-create, status patches, facts.

Handlers call these functions; the planner never does. Objects travel as plain JSON dicts
(`_preload_content=False`): the generated client's typed models follow the newest API, and
an operator must read what older and newer apiservers send alike. Creation is idempotent: an
object that exists with our owner is left alone, one that exists without it is reported.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from glmops.api.common import GROUP, VERSION
from glmops.plan.finetune import GPU_COUNT_LABEL, GPU_MEMORY_LABEL, GPU_PRODUCT_LABEL, GpuNode

Obj = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"


class ForeignObjectError(RuntimeError):
    """An object with the name glmops wants exists but belongs to something else."""


def _json(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a generated client method and return its parsed JSON body."""
    response = call(*args, _preload_content=False, **kwargs)
    try:
        return json.loads(response.data) if response.data else None
    finally:
        response.release_conn()


def _get_or_none(call: Callable[..., Any], *args: Any) -> Obj | None:
    try:
        result: Obj = _json(call, *args)
        return result
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def owned_by(obj: Mapping[str, Any], owner_uid: str) -> bool:
    """Whether `obj` names `owner_uid` among its owner references."""
    return any(ref.get("uid") == owner_uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def apply_child(api: client.ApiClient, obj: Mapping[str, Any], owner_uid: str) -> bool:
    """Create `obj` unless it exists; returns True when created. Never replaces a running object."""
    kind = obj["kind"]
    namespace = obj["metadata"]["namespace"]
    name = obj["metadata"]["name"]
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    methods: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
        "ConfigMap": (core.create_namespaced_config_map, core.read_namespaced_config_map),
        "Service": (core.create_namespaced_service, core.read_namespaced_service),
        "Job": (batch.create_namespaced_job, batch.read_namespaced_job),
    }
    create, read = methods[kind]
    try:
        _json(create, namespace, dict(obj))
        return True
    except ApiException as exc:
        if exc.status != 409:
            raise
    existing = _get_or_none(read, name, namespace)
    if existing is not None and not owned_by(existing, owner_uid):
        raise ForeignObjectError(f"{kind} {namespace}/{name} exists and is not owned by this resource; delete or rename it")
    return False


def patch_custom_status(api: client.ApiClient, plural: str, namespace: str, name: str, status: Mapping[str, Any]) -> None:
    """Merge-patch the status subresource of one of our resources."""
    _json(
        client.CustomObjectsApi(api).patch_namespaced_custom_object_status,
        GROUP, VERSION, namespace, plural, name, {"status": dict(status)},
        _content_type=MERGE_PATCH,
    )


def get_custom(api: client.ApiClient, plural: str, namespace: str, name: str) -> Obj | None:
    """One of our resources, or None when it is gone."""
    return _get_or_none(client.CustomObjectsApi(api).get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name)


def list_custom(api: client.ApiClient, plural: str, namespace: str) -> list[Obj]:
    """All resources of one of our kinds in a namespace."""
    result: Obj = _json(client.CustomObjectsApi(api).list_namespaced_custom_object, GROUP, VERSION, namespace, plural)
    return list(result.get("items", []))


def secret_exists(api: client.ApiClient, namespace: str, name: str) -> bool:
    """Whether a Secret exists; its data is dropped unread (only existence is reported)."""
    return _get_or_none(client.CoreV1Api(api).read_namespaced_secret, name, namespace) is not None


def pvc_exists(api: client.ApiClient, namespace: str, name: str) -> bool:
    """Whether a PersistentVolumeClaim exists."""
    return _get_or_none(client.CoreV1Api(api).read_namespaced_persistent_volume_claim, name, namespace) is not None


def server_minor(api: client.ApiClient) -> int:
    """The apiserver's minor version (e.g. 30 for 1.30)."""
    info: Obj = _json(client.VersionApi(api).get_code)
    return int("".join(ch for ch in str(info.get("minor", "")) if ch.isdigit()) or 0)


def gpu_nodes(api: client.ApiClient) -> tuple[GpuNode, ...]:
    """GPU offers of every schedulable node, from GPU feature discovery labels and allocatable GPUs."""
    nodes: Obj = _json(client.CoreV1Api(api).list_node)
    result = []
    for node in nodes.get("items", []):
        if node.get("spec", {}).get("unschedulable"):
            continue
        labels = node["metadata"].get("labels") or {}
        allocatable = node.get("status", {}).get("allocatable") or {}
        gpus = int(allocatable.get("nvidia.com/gpu", labels.get(GPU_COUNT_LABEL, "0")) or 0)
        memory = int(labels.get(GPU_MEMORY_LABEL, "0") or 0)
        result.append(GpuNode(node["metadata"]["name"], gpus, memory, labels.get(GPU_PRODUCT_LABEL, "")))
    return tuple(result)


def get_job(api: client.ApiClient, namespace: str, name: str) -> Obj | None:
    """A batch/v1 Job, or None."""
    return _get_or_none(client.BatchV1Api(api).read_namespaced_job, name, namespace)


def delete_job(api: client.ApiClient, namespace: str, name: str) -> None:
    """Delete a Job and, in the background, its pods (a gone Job is fine)."""
    try:
        _json(client.BatchV1Api(api).delete_namespaced_job, name, namespace, propagation_policy="Background")
    except ApiException as exc:
        if exc.status != 404:
            raise


def job_pods(api: client.ApiClient, namespace: str, job_name: str) -> list[Obj]:
    """Pods of a batch/v1 Job, newest first."""
    pods: Obj = _json(client.CoreV1Api(api).list_namespaced_pod, namespace, label_selector=f"job-name={job_name}")
    return sorted(pods.get("items", []), key=lambda p: str(p["metadata"].get("creationTimestamp", "")), reverse=True)


def pod_log_tail(api: client.ApiClient, namespace: str, pod: str, container: str, lines: int = 50) -> str:
    """The last lines of a container's log ('' when it has none yet)."""
    try:
        response: Any = client.CoreV1Api(api).read_namespaced_pod_log(
            pod, namespace, container=container, tail_lines=lines, _preload_content=False
        )
    except ApiException as exc:
        if exc.status in (400, 404, 500, 502, 503):
            return ""  # no log yet, or the node cannot serve it right now: try again next poll
        raise
    try:
        return bytes(response.data).decode("utf-8", errors="replace")
    finally:
        response.release_conn()
