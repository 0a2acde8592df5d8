"""The node agent's only door to the API server: pods (list, watch, status, delete), nodes, events, objects.

Plain JSON throughout (see :mod:`glmops_dev.rawapi`): the generated client's models follow a newer
API than the local control plane serves.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from glmops_dev.rawapi import discard, read_json, read_json_or_none, watch_events

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

log = logging.getLogger("glmops_dev.agent")

MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = (5.0, 30.0)
"""(connect, read) seconds for ordinary calls; watches set their own."""
COMPONENT = "glmops-node-agent"


class PodGone(Exception):
    """The pod was deleted, or replaced by another one of the same name."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AgentApi:
    """Typed-enough wrappers over ``CoreV1Api`` for the node agent."""

    def __init__(self, api_client: ApiClient) -> None:
        from kubernetes.client import CoreV1Api

        self.api_client = api_client
        # Any: every call passes plain JSON and reads the raw response (see rawapi).
        self.core: Any = CoreV1Api(api_client)

    # -- objects that pods refer to ------------------------------------------------------------

    def _read_or_none(self, method: Any, *args: Any) -> dict[str, Any] | None:
        result: dict[str, Any] | None = read_json_or_none(method, *args, _request_timeout=REQUEST_TIMEOUT)
        return result

    def config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ConfigMap, or None when it does not exist."""
        return self._read_or_none(self.core.read_namespaced_config_map, name, namespace)

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Secret, or None when it does not exist."""
        return self._read_or_none(self.core.read_namespaced_secret, name, namespace)

    def service_account_token(
        self,
        namespace: str,
        service_account: str,
        audience: str | None,
        expiration_s: int,
        pod: Mapping[str, Any],
    ) -> str:
        """A token of the ServiceAccount bound to the pod (TokenRequest API)."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                # No audiences: the API server's own (what in-cluster clients need).
                "audiences": [audience] if audience else [],
                "expirationSeconds": expiration_s,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod["metadata"]["name"],
                    "uid": pod["metadata"]["uid"],
                },
            },
        }
        response = self.core.create_namespaced_service_account_token(
            service_account, namespace, body, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
        )
        return str(read_json(response)["status"]["token"])

    # -- pods ----------------------------------------------------------------------------------

    def list_pods(self) -> tuple[list[dict[str, Any]], str]:
        """Every pod of the cluster and the list's resourceVersion."""
        body = read_json(
            self.core.list_pod_for_all_namespaces(_preload_content=False, _request_timeout=(5.0, 120.0))
        )
        return list(body.get("items") or []), str(body["metadata"]["resourceVersion"])

    def watch_pods(self, resource_version: str, timeout_s: int) -> Iterator[tuple[str, dict[str, Any]]]:
        """(type, object) events after ``resource_version`` until the server ends the watch.

        Raises :class:`WatchExpired` on 410 Gone. The response is exposed as :attr:`watch_response`
        while it streams so that another thread may close it to stop the watch early.
        """
        response = self.core.list_pod_for_all_namespaces(
            watch=True,
            resource_version=resource_version,
            timeout_seconds=timeout_s,
            allow_watch_bookmarks=True,
            _preload_content=False,
            _request_timeout=(5.0, timeout_s + 15.0),
        )
        self.watch_response = response
        try:
            yield from watch_events(response, "pod")
        finally:
            self.watch_response = None
            response.release_conn()

    watch_response: Any = None

    def patch_pod_status(self, pod: Mapping[str, Any], status: Mapping[str, Any]) -> None:
        """Merge-patch the status subresource (lists are replaced whole); :class:`PodGone` if the pod is not there."""
        from kubernetes.client.exceptions import ApiException

        meta = pod["metadata"]
        # metadata.uid in the patch is a precondition: the API server rejects a patch for a new
        # pod that reuses the name.
        body = {"metadata": {"uid": meta["uid"]}, "status": dict(status)}
        try:
            discard(
                self.core.patch_namespaced_pod_status(
                    meta["name"],
                    meta["namespace"],
                    body,
                    _content_type=MERGE_PATCH,
                    _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT,
                )
            )
        except ApiException as exc:
            if exc.status in (404, 409, 422):
                raise PodGone(f"{meta['namespace']}/{meta['name']}: {exc.reason}") from exc
            raise

    def delete_pod_now(self, pod: Mapping[str, Any]) -> None:
        """Delete the pod with grace period 0 (as a kubelet does once its containers stopped)."""
        from kubernetes.client.exceptions import ApiException

        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": meta["uid"]},
        }
        try:
            discard(
                self.core.delete_namespaced_pod(
                    meta["name"],
                    meta["namespace"],
                    body=body,
                    grace_period_seconds=0,
                    _preload_content=False,
                    _request_timeout=REQUEST_TIMEOUT,
                )
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def emit_event(
        self, pod: Mapping[str, Any], event_type: str, reason: str, message: str, container: str | None = None
    ) -> None:
        """Record an Event on the pod (best effort: a failure is only logged)."""
        meta = pod["metadata"]
        node = str(pod["spec"].get("nodeName", ""))
        involved: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        }
        if container:
            involved["fieldPath"] = f"spec.containers{{{container}}}"
        now = _now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": involved,
            "reason": reason,
            "message": message[:1024],
            "type": event_type,
            "source": {"component": COMPONENT, "host": node},
            "reportingComponent": COMPONENT,
            "reportingInstance": node,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            discard(
                self.core.create_namespaced_event(
                    meta["namespace"], body, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
                )
            )
        except Exception as exc:  # noqa: BLE001 - events are informational; never fail a pod over one
            log.debug("event %s for %s/%s not recorded: %s", reason, meta["namespace"], meta["name"], exc)

    def kubernetes_service(self) -> tuple[str, int] | None:
        """ClusterIP and port of the ``kubernetes`` Service when it has endpoints (pods reach the API there)."""
        service = self._read_or_none(self.core.read_namespaced_service, "kubernetes", "default")
        endpoints = self._read_or_none(self.core.read_namespaced_endpoints, "kubernetes", "default")
        if not service or not endpoints:
            return None
        if not any(subset.get("addresses") for subset in endpoints.get("subsets") or []):
            return None
        cluster_ip = str((service.get("spec") or {}).get("clusterIP") or "")
        ports = (service.get("spec") or {}).get("ports") or []
        if not cluster_ip or cluster_ip == "None" or not ports:
            return None
        return cluster_ip, int(ports[0]["port"])

    # -- nodes ---------------------------------------------------------------------------------

    def list_nodes(self, label_selector: str) -> list[dict[str, Any]]:
        """The nodes matching a label selector."""
        body = read_json(
            self.core.list_node(
                label_selector=label_selector, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
            )
        )
        return list(body.get("items") or [])

    def patch_node_status(self, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch a node's status."""
        discard(
            self.core.patch_node_status(
                name,
                {"status": dict(status)},
                _content_type=MERGE_PATCH,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        )
