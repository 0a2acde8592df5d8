"""Namespaces that are usable at once and that really go away.

Creating: before Kubernetes 1.24 a pod is only admitted once its ServiceAccount has a token
Secret, which the controller-manager adds a moment after the namespace appears; so
:func:`create_namespace` waits for it.

Deleting: no kubelet confirms that a bound pod stopped, so a deleted pod would stay
``Terminating`` forever, keep its GPUs in the scheduler's books and hold its namespace in
``Terminating``. :func:`delete_namespace` therefore force-deletes (grace period 0) the pods of
the namespace it deletes, as a kubelet's final status would.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import TYPE_CHECKING, Any

from glmops_dev.cluster import api_server_version
from glmops_dev.rawapi import discard, read_json

if TYPE_CHECKING:
    from kubernetes.client import ApiClient


def _core(api_client: ApiClient) -> Any:
    from kubernetes.client import CoreV1Api

    return CoreV1Api(api_client)


def namespace_name(hint: str, max_hint_len: int = 40) -> str:
    """A fresh, valid namespace name derived from ``hint`` (e.g. a test's name)."""
    base = re.sub(r"[^a-z0-9-]+", "-", hint.lower()).strip("-")[:max_hint_len].strip("-") or "ns"
    return f"{base}-{secrets.token_hex(3)}"


def create_namespace(api_client: ApiClient, name: str, timeout_s: float = 60.0) -> None:
    """Create a namespace and wait until pods can be admitted in it."""
    from kubernetes.client.exceptions import ApiException

    core = _core(api_client)
    discard(
        core.create_namespace(
            body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}, _preload_content=False
        )
    )
    needs_token_secret = api_server_version(api_client) < (1, 24)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            response = core.read_namespaced_service_account("default", name, _preload_content=False)
            account = read_json(response)
            if not needs_token_secret or account.get("secrets"):
                return
        except ApiException as exc:
            if exc.status != 404:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"namespace {name}: the `default` ServiceAccount (and its token) did not appear within "
                f"{timeout_s:.0f} s; is kube-controller-manager running?"
            )
        time.sleep(0.1)


def force_delete_pods(api_client: ApiClient, namespace: str) -> int:
    """Delete every pod of a namespace with grace period 0; returns how many were there."""
    from kubernetes.client.exceptions import ApiException

    core = _core(api_client)
    pods = read_json(core.list_namespaced_pod(namespace, _preload_content=False))["items"]
    for pod in pods:
        try:
            discard(
                core.delete_namespaced_pod(
                    pod["metadata"]["name"],
                    namespace,
                    grace_period_seconds=0,
                    body={"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0},
                    _preload_content=False,
                )
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
    return len(pods)


def delete_namespace(
    api_client: ApiClient, name: str, timeout_s: float = 60.0, *, wait_gone: bool = True
) -> bool:
    """Delete a namespace and force-delete its pods; False if that did not finish within ``timeout_s``.

    ``wait_gone``: wait until the namespace object is gone (the namespace controller takes a few
    seconds); otherwise return once the namespace is terminating and holds no pods, which is
    enough to free every node resource its pods held.
    """
    from kubernetes.client.exceptions import ApiException

    core = _core(api_client)
    try:
        discard(core.delete_namespace(name, _preload_content=False))
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # New pods cannot appear: the namespace is terminating. Pods its controllers delete
        # gracefully would wait for a kubelet forever.
        had_pods = force_delete_pods(api_client, name)
        if not wait_gone and not had_pods:
            return True
        try:
            discard(core.read_namespace(name, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        time.sleep(0.5)
    return False
