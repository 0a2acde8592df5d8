"""The whole local environment in one call: pod network, control plane, simulated GPU nodes, CRDs, heartbeat.

Shared by the pytest fixtures and ``python -m glmops_dev up``. The pod network comes first: the
API server listens on the host's end of the network's link (pods reach it through the
``kubernetes`` Service) and hands out the network's Service range; kube-proxy and the cluster
DNS follow the API server. Closing stops them in the opposite order and removes every trace of
the network (namespaces, links, routes, iptables rules, /etc/hosts lines).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from glmops_dev.binaries import ensure_binaries, repo_root, require_kube_proxy
from glmops_dev.cluster import (
    ClusterAddressing,
    ExistingCluster,
    KubeCluster,
    LocalCluster,
    wants_existing_cluster,
)
from glmops_dev.crds import CrdInstallReport, crd_files, install_crds
from glmops_dev.network import ClusterNetwork
from glmops_dev.nodes import NODE_PROFILES, NodeHeartbeat, NodeProfile, create_nodes


def default_crds_dir() -> Path:
    """The repository's ``crds/`` folder."""
    return repo_root() / "crds"


@dataclass
class DevEnvironment:
    """A started cluster with simulated GPU nodes and the project's CRDs installed."""

    cluster: KubeCluster
    node_names: list[str]
    crds: CrdInstallReport
    heartbeat: NodeHeartbeat | None = None
    created_nodes: list[str] = field(default_factory=list)
    """Nodes that did not exist before (on an existing cluster, the ones :meth:`close` deletes)."""
    network: ClusterNetwork | None = None
    """The pod network (slot, kube-proxy, DNS); None when started with ``pod_network=False``."""
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        """Stop the heartbeat, DNS and kube-proxy; on an existing cluster delete the nodes added; stop a
        local one; remove the pod network."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.heartbeat is not None:
                self.heartbeat.stop()
            if self.network is not None:
                self.network.stop_services()
            if isinstance(self.cluster, ExistingCluster) and self.created_nodes:
                self.cluster.kubectl(
                    "delete", "node", "--ignore-not-found", "--wait=false", *self.created_nodes, check=False
                )
        finally:
            try:
                self.cluster.stop()
            finally:
                if self.network is not None:
                    self.network.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def start_environment(
    state_dir: Path | None = None,
    *,
    crds_dir: Path | None = None,
    profiles: Sequence[NodeProfile] = NODE_PROFILES,
    use_existing: bool | None = None,
    build: bool = False,
    keep_state: bool = False,
    heartbeat_interval_s: float | None = 10.0,
    pod_network: bool = True,
) -> DevEnvironment:
    """Start (or reach, see :meth:`LocalCluster.from_env`) a cluster, add nodes, install CRDs.

    ``build``: build the control plane's binaries (and kube-proxy) first when they are not cached.
    ``heartbeat_interval_s``: None starts no heartbeat thread.
    ``pod_network``: take a slot of the pod-network block and run kube-proxy and the cluster DNS
    (needs root); node agents need it. False: a bare control plane on 127.0.0.1.
    Call it from a thread that lives as long as the environment (kube-proxy and the DNS server
    end with the thread that started them).
    """
    network = ClusterNetwork.create() if pod_network else None
    try:
        return _start(network, state_dir, crds_dir, profiles, use_existing, build, keep_state, heartbeat_interval_s)
    except BaseException:
        if network is not None:
            network.close()
        raise


def _start(
    network: ClusterNetwork | None,
    state_dir: Path | None,
    crds_dir: Path | None,
    profiles: Sequence[NodeProfile],
    use_existing: bool | None,
    build: bool,
    keep_state: bool,
    heartbeat_interval_s: float | None,
) -> DevEnvironment:
    cluster: KubeCluster
    kube_proxy = None
    if wants_existing_cluster(use_existing):
        cluster = LocalCluster.from_env(use_existing=True)
        if network is not None:
            kube_proxy = require_kube_proxy()
    else:
        binaries = ensure_binaries(build=build)
        if network is not None:
            kube_proxy = require_kube_proxy(binaries)
        addressing = ClusterAddressing.for_slot(network.plan) if network is not None else None
        cluster = LocalCluster(state_dir, binaries=binaries, keep_state=keep_state, addressing=addressing).start()
    try:
        before = set(
            cluster.kubectl("get", "nodes", "-o", "jsonpath={.items[*].metadata.name}").stdout.split()
        )
        internal_ip = network.plan.host_ip if network is not None else "127.0.0.1"
        with cluster.api_client() as api_client:
            node_names = create_nodes(api_client, profiles, internal_ip=internal_ip)
            report = install_crds(api_client, crd_files(crds_dir or default_crds_dir()))
        if network is not None and kube_proxy is not None:
            # A local control plane publishes the `kubernetes` Service's endpoints; its rules
            # prove kube-proxy synced. An existing cluster's endpoints are not reachable here.
            ready_ip = network.plan.kubernetes_service_ip if isinstance(cluster, LocalCluster) else None
            network.start_services(cluster, node_names[0], kube_proxy, cluster.kube_proxy_kubeconfig, ready_ip)
            cluster.network = network
        beat = None
        if heartbeat_interval_s is not None:
            beat = NodeHeartbeat(
                cluster.api_client(), node_names, heartbeat_interval_s, close_client=True
            ).start()
        return DevEnvironment(
            cluster=cluster,
            node_names=node_names,
            crds=report,
            heartbeat=beat,
            created_nodes=[n for n in node_names if n not in before],
            network=network,
        )
    except BaseException:
        if network is not None:
            network.stop_services()
        cluster.stop()
        raise


def describe(env: DevEnvironment) -> str:
    """A short human summary: server, nodes, CRDs."""
    lines = [f"API server: {env.cluster.server}", f"kubeconfig: {env.cluster.kubeconfig}"]
    lines.append(f"nodes: {', '.join(env.node_names)}")
    if env.network is not None:
        lines.append(env.network.describe())
    lines.append(f"CRDs: {', '.join(env.crds.installed) or '(none in crds/)'}")
    if env.crds.cel_stripped:
        lines.append(
            "CEL rules (x-kubernetes-validations) removed for this old server from: "
            + ", ".join(env.crds.cel_stripped)
        )
    return "\n".join(lines)
