"""Simulated GPU nodes: real Node objects with GPU capacity and labels, so the real scheduler places pods.

:data:`NODE_PROFILES` is a pure data table (reused by the operator's placement tests);
:func:`node_manifest` turns a profile into a Node object, :func:`create_nodes` registers nodes
through the API as a kubelet would, and :class:`NodeHeartbeat` keeps their ``Ready`` condition
fresh. The labels follow NVIDIA's GPU feature discovery (``nvidia.com/gpu.product``,
``nvidia.com/gpu.memory`` in MiB, ``nvidia.com/gpu.count``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from glmops_dev.rawapi import discard, read_json_or_none

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

GPU_RESOURCE = "nvidia.com/gpu"
LABEL_GPU_PRODUCT = "nvidia.com/gpu.product"
LABEL_GPU_MEMORY_MIB = "nvidia.com/gpu.memory"
LABEL_GPU_COUNT = "nvidia.com/gpu.count"
LABEL_HOSTNAME = "kubernetes.io/hostname"
LABEL_SIMULATED = "glmops.io/simulated"
LABEL_PROFILE = "glmops.io/node-profile"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
SIMULATED_KUBELET_VERSION = "v1.20.2"

MERGE_PATCH = "application/merge-patch+json"


@dataclass(frozen=True)
class NodeProfile:
    """One kind of machine: its GPUs (if any), CPUs, memory and pod capacity."""

    name: str
    """Profile id, e.g. ``h200x8``; also the default node name's suffix."""
    gpu_product: str | None
    """Value of ``nvidia.com/gpu.product``; None for a CPU-only node."""
    gpu_count: int
    gpu_memory_mib: int
    """Memory of one GPU in MiB, as ``nvidia.com/gpu.memory`` reports it."""
    cpu_cores: int
    memory_gib: int
    max_pods: int = 110

    @property
    def gpu_memory_gib(self) -> float:
        """Memory of one GPU in GiB."""
        return self.gpu_memory_mib / 1024

    @property
    def node_name(self) -> str:
        """The name :func:`create_nodes` gives this profile's node."""
        return f"sim-{self.name}"


NODE_PROFILES: tuple[NodeProfile, ...] = (
    NodeProfile("h200x8", "NVIDIA-H200", 8, 143771, cpu_cores=224, memory_gib=2048),
    NodeProfile("h100x8", "NVIDIA-H100-80GB-HBM3", 8, 81559, cpu_cores=224, memory_gib=2048),
    NodeProfile("a100-40x8", "NVIDIA-A100-SXM4-40GB", 8, 40960, cpu_cores=256, memory_gib=1024),
    NodeProfile("l40sx1", "NVIDIA-L40S", 1, 46068, cpu_cores=32, memory_gib=256),
    NodeProfile("l4x1", "NVIDIA-L4", 1, 23034, cpu_cores=16, memory_gib=64),
    NodeProfile("cpu", None, 0, 0, cpu_cores=16, memory_gib=64),
)
"""Every profile the local cluster offers, largest GPUs first."""

PROFILES_BY_NAME: dict[str, NodeProfile] = {p.name: p for p in NODE_PROFILES}


def profile(name: str) -> NodeProfile:
    """The profile called ``name``; the error lists the known ones."""
    try:
        return PROFILES_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown node profile {name!r}; known: {', '.join(PROFILES_BY_NAME)}") from None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_labels(prof: NodeProfile, node_name: str) -> dict[str, str]:
    """The labels a node of this profile carries."""
    labels = {
        LABEL_HOSTNAME: node_name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        LABEL_SIMULATED: "true",
        LABEL_PROFILE: prof.name,
    }
    if prof.gpu_product is not None:
        labels[LABEL_GPU_PRODUCT] = prof.gpu_product
        labels[LABEL_GPU_MEMORY_MIB] = str(prof.gpu_memory_mib)
        labels[LABEL_GPU_COUNT] = str(prof.gpu_count)
    return labels


def node_capacity(prof: NodeProfile) -> dict[str, str]:
    """Capacity (equal to allocatable here) in Kubernetes quantity strings."""
    capacity = {
        "cpu": str(prof.cpu_cores),
        "memory": f"{prof.memory_gib}Gi",
        "pods": str(prof.max_pods),
        "ephemeral-storage": "1Ti",
    }
    if prof.gpu_count:
        capacity[GPU_RESOURCE] = str(prof.gpu_count)
    return capacity


def ready_conditions(heartbeat: str, transition: str) -> list[dict[str, str]]:
    """The conditions of a healthy node (``Ready`` true, no pressure)."""
    healthy = [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        ("Ready", "True", "KubeletReady", "simulated node is posting ready status"),
    ]
    return [
        {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": heartbeat,
            "lastTransitionTime": transition,
        }
        for kind, status, reason, message in healthy
    ]


def node_manifest(
    prof: NodeProfile, node_name: str | None = None, internal_ip: str = "127.0.0.1"
) -> dict[str, Any]:
    """The Node object (spec and status) a kubelet on such a machine would register.

    ``internal_ip``: the node's address (with a pod network, the host's end of its slot's link).
    """
    name = node_name or prof.node_name
    now = _now()
    capacity = node_capacity(prof)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": node_labels(prof, name)},
        "spec": {},
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": ready_conditions(now, now),
            "addresses": [
                {"type": "InternalIP", "address": internal_ip},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "osImage": "glmops simulated node",
                "kernelVersion": "",
                "containerRuntimeVersion": "glmops-sim://0",
                "kubeletVersion": SIMULATED_KUBELET_VERSION,
                "kubeProxyVersion": SIMULATED_KUBELET_VERSION,
                "machineID": name,
                "systemUUID": name,
                "bootID": name,
            },
        },
    }


def _core(api_client: ApiClient) -> Any:
    from kubernetes.client import CoreV1Api

    return CoreV1Api(api_client)


def _read_node(api_client: ApiClient, name: str) -> dict[str, Any] | None:
    """The Node as plain JSON (None when absent); plain JSON copes with any server version."""
    node: dict[str, Any] | None = read_json_or_none(_core(api_client).read_node, name)
    return node


def create_node(
    api_client: ApiClient, prof: NodeProfile, node_name: str | None = None, internal_ip: str = "127.0.0.1"
) -> str:
    """Register (or refresh) one node of a profile: Ready, schedulable, without the not-ready taint.

    Creating a Node makes the API server's TaintNodesByCondition admission add
    ``node.kubernetes.io/not-ready:NoSchedule``; a kubelet's first status update would have the
    node lifecycle controller lift it, but neither runs here, so the taint is removed directly.
    """
    from kubernetes.client.exceptions import ApiException

    manifest = node_manifest(prof, node_name, internal_ip)
    name: str = manifest["metadata"]["name"]
    core = _core(api_client)
    try:
        discard(core.create_node(body=manifest, _preload_content=False))
    except ApiException as exc:
        if exc.status != 409:
            raise
    existing = _read_node(api_client, name) or {}
    taints = [t for t in existing.get("spec", {}).get("taints") or [] if t.get("key") != NOT_READY_TAINT]
    discard(
        core.patch_node(
            name,
            body={
                "metadata": {"labels": manifest["metadata"]["labels"]},
                "spec": {"taints": taints or None, "unschedulable": None},
            },
            _content_type=MERGE_PATCH,
            _preload_content=False,
        )
    )
    discard(
        core.patch_node_status(
            name, body={"status": manifest["status"]}, _content_type=MERGE_PATCH, _preload_content=False
        )
    )
    return name


def create_nodes(
    api_client: ApiClient, profiles: Iterable[NodeProfile] = NODE_PROFILES, internal_ip: str = "127.0.0.1"
) -> list[str]:
    """Register one node per profile (named ``sim-<profile>``); returns the node names."""
    return [create_node(api_client, prof, internal_ip=internal_ip) for prof in profiles]


def heartbeat(api_client: ApiClient, node_names: Sequence[str]) -> None:
    """Refresh ``lastHeartbeatTime`` of every condition of the given nodes (as a kubelet does)."""
    core = _core(api_client)
    now = _now()
    for name in node_names:
        node = _read_node(api_client, name)
        if node is None:
            continue
        conditions = node.get("status", {}).get("conditions") or ready_conditions(now, now)
        for condition in conditions:
            condition["lastHeartbeatTime"] = now
        discard(
            core.patch_node_status(
                name,
                body={"status": {"conditions": conditions}},
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        )


class NodeHeartbeat:
    """A daemon thread that calls :func:`heartbeat` every ``interval_s`` seconds until stopped.

    Nothing in the local cluster acts on stale heartbeats (the node lifecycle controller is
    off); the heartbeat keeps ``kubectl describe node`` honest and serves a future node agent.
    """

    def __init__(
        self,
        api_client: ApiClient,
        node_names: Sequence[str],
        interval_s: float = 10.0,
        *,
        close_client: bool = False,
    ) -> None:
        """``close_client``: close ``api_client`` when the heartbeat stops (it was made for it)."""
        self._api_client = api_client
        self._close_client = close_client
        self._node_names = list(node_names)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-heartbeat", daemon=True)
        self.errors: list[str] = []
        """Errors of failed beats (kept short); a beat that fails is retried at the next interval."""

    def start(self) -> NodeHeartbeat:
        """Start beating; returns self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and wait for the thread to end."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._interval_s + 5)
        if self._close_client:
            self._api_client.close()  # type: ignore[no-untyped-call]

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                heartbeat(self._api_client, self._node_names)
            except Exception as exc:  # noqa: BLE001 - keep beating through a transient API error
                self.errors = [*self.errors[-9:], f"{time.strftime('%H:%M:%S')} {exc}"]
