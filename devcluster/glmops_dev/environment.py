"""The whole local environment in one call: control plane, simulated GPU nodes, CRDs, heartbeat.

Shared by the pytest fixtures and ``python -m glmops_dev up``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from glmops_dev.binaries import ensure_binaries, repo_root
from glmops_dev.cluster import ExistingCluster, KubeCluster, LocalCluster, wants_existing_cluster
from glmops_dev.crds import CrdInstallReport, crd_files, install_crds
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
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        """Stop the heartbeat; on an existing cluster delete the nodes added; stop a local one."""
        if self._closed:
            return
        self._closed = True
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if isinstance(self.cluster, ExistingCluster) and self.created_nodes:
            self.cluster.kubectl(
                "delete", "node", "--ignore-not-found", "--wait=false", *self.created_nodes, check=False
            )
        self.cluster.stop()

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
) -> DevEnvironment:
    """Start (or reach, see :meth:`LocalCluster.from_env`) a cluster, add nodes, install CRDs.

    ``build``: build the control plane's binaries first when they are not cached.
    ``heartbeat_interval_s``: None starts no heartbeat thread.
    """
    cluster: KubeCluster
    if wants_existing_cluster(use_existing):
        cluster = LocalCluster.from_env(use_existing=True)
    else:
        binaries = ensure_binaries(build=build)
        cluster = LocalCluster(state_dir, binaries=binaries, keep_state=keep_state).start()
    try:
        before = set(
            cluster.kubectl("get", "nodes", "-o", "jsonpath={.items[*].metadata.name}").stdout.split()
        )
        with cluster.api_client() as api_client:
            node_names = create_nodes(api_client, profiles)
            report = install_crds(api_client, crd_files(crds_dir or default_crds_dir()))
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
        )
    except BaseException:
        cluster.stop()
        raise


def describe(env: DevEnvironment) -> str:
    """A short human summary: server, nodes, CRDs."""
    lines = [f"API server: {env.cluster.server}", f"kubeconfig: {env.cluster.kubeconfig}"]
    lines.append(f"nodes: {', '.join(env.node_names)}")
    lines.append(f"CRDs: {', '.join(env.crds.installed) or '(none in crds/)'}")
    if env.crds.cel_stripped:
        lines.append(
            "CEL rules (x-kubernetes-validations) removed for this old server from: "
            + ", ".join(env.crds.cel_stripped)
        )
    return "\n".join(lines)
