"""The only module that talks to the Kubernetes API: get-or-create, status patches, facts.

Handlers call these functions; the planner never does. Objects travel as plain JSON dicts
over REST paths: the generated client's typed methods validate every argument with pydantic
and project bodies onto models of the newest API, which costs more CPU than the request
itself in a burst, and an operator must read what older and newer apiservers send alike.
The client still supplies the connection pool, TLS and authentication (including refreshed
service-account tokens). Creation is idempotent: an object that exists with our owner is left
alone, one that exists without it is reported.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from glmops.api.common import GROUP, VERSION
from glmops.plan.finetune import GPU_COUNT_LABEL, GPU_MEMORY_LABEL, GPU_PRODUCT_LABEL, GpuNode

Obj = dict[str, Any]
MERGE_PATCH = "application/merge-patch+json"
PARTIAL_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"

DEFAULT_TIMEOUT_S = 30.0
"""Every request ends within this many seconds unless the client says otherwise (`TimedApiClient`)."""


class TimedApiClient(client.ApiClient):
    """The Kubernetes client with a deadline for every request made through this module."""

    def __init__(self, configuration: client.Configuration, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(configuration)
        self.timeout_s = timeout_s


class ConflictError(RuntimeError):
    """A conditional write lost: the object changed since it was read (HTTP 409)."""


# Where each kind of child object lives: (API path prefix, plural).
CHILD_PATHS = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "Job": ("/apis/batch/v1", "jobs"),
}


class ForeignObjectError(RuntimeError):
    """An object with the name glmops wants exists but belongs to something else."""


def _path(prefix: str, plural: str, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    parts = [prefix]
    if namespace is not None:
        parts += ["namespaces", quote(namespace, safe="")]
    parts.append(plural)
    parts += [quote(p, safe="") for p in (name, sub) if p is not None]
    return "/".join(parts)


def request_raw(
    api: client.ApiClient,
    method: str,
    path: str,
    *,
    query: Mapping[str, str | int] | None = None,
    body: Any = None,
    content_type: str = "application/json",
    accept: str = "application/json",
) -> bytes:
    """One API request; returns the response body. A non-2xx answer raises ApiException."""
    serialized = api.param_serialize(
        method,
        path,
        query_params=list((query or {}).items()),
        header_params={"Accept": accept, "Content-Type": content_type},
        body=body,
        auth_settings=["BearerToken"],
    )
    timeout = getattr(api, "timeout_s", DEFAULT_TIMEOUT_S)
    # (connect, read) in seconds: a hung apiserver or a half-dead connection never blocks a handler.
    response = api.call_api(*serialized, _request_timeout=(min(10.0, timeout), timeout))
    try:
        data = bytes(response.read() or b"")  # type: ignore[no-untyped-call]
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return data
    finally:
        response.response.release_conn()


def request(api: client.ApiClient, method: str, path: str, **kwargs: Any) -> Any:
    """One API request; returns the parsed JSON body (None when empty)."""
    data = request_raw(api, method, path, **kwargs)
    return json.loads(data) if data else None


def describe_error(exc: Exception) -> str:
    """One line for a failed request: status, reason and the apiserver's own message."""
    if isinstance(exc, ApiException):
        detail = ""
        try:
            detail = str(json.loads(exc.body or "{}").get("message") or "")
        except (ValueError, AttributeError):
            detail = ""
        return f"{exc.status} {exc.reason}" + (f": {detail}" if detail else "")
    return f"{type(exc).__name__}: {exc}"


def _get_or_none(api: client.ApiClient, path: str) -> Obj | None:
    try:
        result: Obj = request(api, "GET", path)
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
    prefix, plural = CHILD_PATHS[kind]
    try:
        request(api, "POST", _path(prefix, plural, namespace), body=dict(obj))
        return True
    except ApiException as exc:
        if exc.status != 409:
            raise
    existing = _get_or_none(api, _path(prefix, plural, namespace, name))
    if existing is not None and not owned_by(existing, owner_uid):
        raise ForeignObjectError(f"{kind} {namespace}/{name} exists and is not owned by this resource; delete or rename it")
    return False


def _custom_path(plural: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
    return _path(f"/apis/{GROUP}/{VERSION}", plural, namespace, name, sub)


def patch_custom_status(
    api: client.ApiClient, plural: str, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None = None
) -> Obj:
    """Merge-patch the status of one of our resources if it is still at `resource_version`.

    The resourceVersion in the patch is a precondition the apiserver enforces: a write based on
    a stale read fails with ConflictError instead of undoing what another writer recorded.
    Keys set to None in `status` are removed. Without `resource_version` the write is
    unconditional, which a writer that computes status from what it read must not use.
    """
    body: dict[str, Any] = {"status": dict(status)}
    if resource_version is not None:
        body["metadata"] = {"resourceVersion": resource_version}
    try:
        result: Obj = request(api, "PATCH", _custom_path(plural, namespace, name, "status"), body=body, content_type=MERGE_PATCH)
    except ApiException as exc:
        if exc.status == 409:
            raise ConflictError(f"{plural} {namespace}/{name} changed since resourceVersion {resource_version}") from exc
        raise
    return result


def get_custom(api: client.ApiClient, plural: str, namespace: str, name: str) -> Obj | None:
    """One of our resources, or None when it is gone."""
    return _get_or_none(api, _custom_path(plural, namespace, name))


def list_custom(api: client.ApiClient, plural: str, namespace: str) -> list[Obj]:
    """All resources of one of our kinds in a namespace."""
    result: Obj = request(api, "GET", _custom_path(plural, namespace))
    return list(result.get("items", []))


def secret_exists(api: client.ApiClient, namespace: str, name: str) -> bool:
    """Whether a Secret exists. Only its metadata is asked for: the values never reach the operator."""
    path = _path("/api/v1", "secrets", namespace, name)
    try:
        # Servers that know PartialObjectMetadata answer with names and labels only; older ones
        # fall back to the whole object, which is dropped unread.
        request_raw(api, "GET", path, accept=f"{PARTIAL_METADATA}, application/json")
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def pvc_exists(api: client.ApiClient, namespace: str, name: str) -> bool:
    """Whether a PersistentVolumeClaim exists (its metadata only is asked for)."""
    try:
        request_raw(api, "GET", _path("/api/v1", "persistentvolumeclaims", namespace, name), accept=f"{PARTIAL_METADATA}, application/json")
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def server_minor(api: client.ApiClient) -> int:
    """The apiserver's minor version (e.g. 30 for 1.30)."""
    info: Obj = request(api, "GET", "/version")
    return int("".join(ch for ch in str(info.get("minor", "")) if ch.isdigit()) or 0)


def gpu_nodes(api: client.ApiClient) -> tuple[GpuNode, ...]:
    """GPU offers of every schedulable node, from GPU feature discovery labels and allocatable GPUs."""
    nodes: Obj = request(api, "GET", "/api/v1/nodes")
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
    return _get_or_none(api, _path("/apis/batch/v1", "jobs", namespace, name))


def list_jobs(api: client.ApiClient, namespace: str, label_selector: str) -> list[Obj]:
    """batch/v1 Jobs matching a label selector (terminating ones included)."""
    found: Obj = request(api, "GET", _path("/apis/batch/v1", "jobs", namespace), query={"labelSelector": label_selector})
    return list(found.get("items", []))


def get_child(api: client.ApiClient, kind: str, namespace: str, name: str) -> Obj | None:
    """One of the child kinds of CHILD_PATHS, or None."""
    prefix, plural = CHILD_PATHS[kind]
    return _get_or_none(api, _path(prefix, plural, namespace, name))


def delete_job(api: client.ApiClient, namespace: str, name: str) -> None:
    """Delete a Job and, in the background, its pods (a gone Job is fine)."""
    delete_child(api, "Job", namespace, name)


def delete_child(api: client.ApiClient, kind: str, namespace: str, name: str, propagation: str = "Background") -> None:
    """Delete one of the child kinds of CHILD_PATHS (dependents in the background, or with `Foreground`
    before the object itself goes); a gone object is fine."""
    prefix, plural = CHILD_PATHS[kind]
    try:
        request(api, "DELETE", _path(prefix, plural, namespace, name), body={"propagationPolicy": propagation})
    except ApiException as exc:
        if exc.status != 404:
            raise


def job_pods(api: client.ApiClient, namespace: str, job_name: str) -> list[Obj]:
    """Pods of a batch/v1 Job, newest first."""
    pods: Obj = request(api, "GET", _path("/api/v1", "pods", namespace), query={"labelSelector": f"job-name={job_name}"})
    return sorted(pods.get("items", []), key=lambda p: str(p["metadata"].get("creationTimestamp", "")), reverse=True)


def post_event(api: client.ApiClient, involved: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Record a core/v1 Event about `involved` (one of our resources), as `kubectl describe` shows them."""
    metadata = involved["metadata"]
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{metadata['name']}.", "namespace": metadata["namespace"]},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion", f"{GROUP}/{VERSION}"),
            "kind": involved.get("kind", ""),
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata.get("uid", ""),
            "resourceVersion": metadata.get("resourceVersion", ""),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": "glmops"},
        "reportingComponent": "glmops",
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    request(api, "POST", _path("/api/v1", "events", metadata["namespace"]), body=event)


# --- pod endpoints (not the API) ----------------------------------------------------------------

_POD_HTTP = urllib3.PoolManager(retries=False)


def read_pod_endpoint(pod_ip: str, port: int, path: str, timeout_s: float = 3.0) -> str | None:
    """GET http://POD_IP:PORT/PATH (a pod's own endpoint, e.g. the trainer's /metrics); None when unreachable."""
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    try:
        response = _POD_HTTP.request("GET", f"http://{host}:{port}{path}", timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s))
    except urllib3.exceptions.HTTPError:
        return None
    if response.status != 200:
        return None
    return response.data.decode("utf-8", errors="replace")


# --- serving (ModelDeployment): server-side apply of owned objects, observation, conditional status ---

APPLY_PATCH = "application/apply-patch+yaml"
FIELD_MANAGER = "glmops"
SERVING_PATHS = {
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Service": ("/api/v1", "services"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Job": ("/apis/batch/v1", "jobs"),
}


def apply_owned(api: client.ApiClient, obj: Mapping[str, Any], owner_uid: str) -> Obj:
    """Create or update `obj` by server-side apply (glmops owns the fields it sets; others keep theirs).

    An object of that name that another owner holds is never taken over: ForeignObjectError.
    Applying the same object again changes nothing on the server.
    """
    kind, metadata = obj["kind"], obj["metadata"]
    prefix, plural = SERVING_PATHS[kind]
    path = _path(prefix, plural, metadata["namespace"], metadata["name"])
    existing = _get_or_none(api, path)
    if existing is not None and not owned_by(existing, owner_uid):
        raise ForeignObjectError(
            f"{kind} {metadata['namespace']}/{metadata['name']} exists and is not owned by this resource; delete or rename it"
        )
    result: Obj = request(
        api, "PATCH", path, query={"fieldManager": FIELD_MANAGER, "force": "true"}, body=dict(obj), content_type=APPLY_PATCH
    )
    return result


def get_deployment(api: client.ApiClient, namespace: str, name: str) -> Obj | None:
    """An apps/v1 Deployment, or None."""
    return _get_or_none(api, _path("/apis/apps/v1", "deployments", namespace, name))


def list_replica_sets(api: client.ApiClient, namespace: str, label_selector: str) -> list[Obj]:
    """ReplicaSets matching a label selector."""
    found: Obj = request(api, "GET", _path("/apis/apps/v1", "replicasets", namespace), query={"labelSelector": label_selector})
    return list(found.get("items", []))


def list_pods(api: client.ApiClient, namespace: str, label_selector: str) -> list[Obj]:
    """Pods matching a label selector."""
    found: Obj = request(api, "GET", _path("/api/v1", "pods", namespace), query={"labelSelector": label_selector})
    return list(found.get("items", []))


def read_secret_value(api: client.ApiClient, namespace: str, name: str, key: str) -> str | None:
    """One value of a Secret, decoded; None when the Secret or key is missing.

    Only `glmops connect --show-key` calls it, with the user's own credentials, to print the key
    the user asked for. The operator never reads Secret values (tests/test_layers.py checks it).
    """
    import base64

    secret = _get_or_none(api, _path("/api/v1", "secrets", namespace, name))
    if secret is None:
        return None
    raw = (secret.get("data") or {}).get(key)
    return base64.b64decode(raw).decode("utf-8") if isinstance(raw, str) else None


def create_owned(api: client.ApiClient, obj: Mapping[str, Any], owner_uid: str) -> bool:
    """Create `obj` unless it exists (True when created); one of another owner is ForeignObjectError.

    For objects that are never changed once made (a cache claim, a download Job).
    """
    kind, metadata = obj["kind"], obj["metadata"]
    prefix, plural = SERVING_PATHS[kind]
    try:
        request(api, "POST", _path(prefix, plural, metadata["namespace"]), body=dict(obj))
        return True
    except ApiException as exc:
        if exc.status != 409:
            raise
    existing = _get_or_none(api, _path(prefix, plural, metadata["namespace"], metadata["name"]))
    if existing is not None and not owned_by(existing, owner_uid):
        raise ForeignObjectError(
            f"{kind} {metadata['namespace']}/{metadata['name']} exists and is not owned by this resource; delete or rename it"
        )
    return False


def delete_labelled(api: client.ApiClient, kind: str, namespace: str, label_selector: str, keep: str) -> list[str]:
    """Delete the objects of `kind` matching a selector, except the one named `keep`; returns the names deleted.

    A claim still mounted by a terminating pod stays until that pod is gone (PVC protection).
    """
    prefix, plural = SERVING_PATHS[kind]
    found: Obj = request(api, "GET", _path(prefix, plural, namespace), query={"labelSelector": label_selector})
    deleted = []
    for item in found.get("items", []):
        name = item["metadata"]["name"]
        if name == keep or item["metadata"].get("deletionTimestamp"):
            continue
        try:
            request(api, "DELETE", _path(prefix, plural, namespace, name), body={"propagationPolicy": "Background"})
            deleted.append(name)
        except ApiException as exc:
            if exc.status != 404:
                raise
    return deleted


# --- leader election: the operator's Lease (coordination.k8s.io/v1) ------------------------------


def _lease_path(namespace: str, name: str | None = None) -> str:
    return _path("/apis/coordination.k8s.io/v1", "leases", namespace, name)


def get_lease(api: client.ApiClient, namespace: str, name: str) -> Obj | None:
    """The Lease, or None when it does not exist yet."""
    return _get_or_none(api, _lease_path(namespace, name))


def create_lease(api: client.ApiClient, namespace: str, name: str, spec: Mapping[str, Any]) -> Obj | None:
    """Create the Lease with `spec`; None when another replica created it first (409)."""
    body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name, "namespace": namespace}, "spec": dict(spec)}
    try:
        result: Obj = request(api, "POST", _lease_path(namespace), body=body)
    except ApiException as exc:
        if exc.status == 409:
            return None
        raise
    return result


def replace_lease(api: client.ApiClient, lease: Mapping[str, Any], spec: Mapping[str, Any]) -> Obj | None:
    """Write `spec` into the Lease if it is still at the resourceVersion read; None when it changed (409)."""
    metadata = lease["metadata"]
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "resourceVersion": metadata["resourceVersion"],
            # Kept as they are: the Lease may belong to a Helm release (its ownership marks).
            "labels": metadata.get("labels") or {},
            "annotations": metadata.get("annotations") or {},
        },
        "spec": dict(spec),
    }
    try:
        result: Obj = request(api, "PUT", _lease_path(metadata["namespace"], metadata["name"]), body=body)
    except ApiException as exc:
        if exc.status == 409:
            return None
        raise
    return result
