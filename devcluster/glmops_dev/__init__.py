"""Local development cluster: a real control plane with simulated GPU nodes, for tests and the demo.

    python -m glmops_dev up      # pod network, etcd + kube-apiserver + controller-manager + scheduler, GPU nodes, CRDs

Modules: :mod:`~glmops_dev.binaries` (where the binaries come from), :mod:`~glmops_dev.cluster`
(the processes), :mod:`~glmops_dev.nodes` (GPU node profiles), :mod:`~glmops_dev.crds`,
:mod:`~glmops_dev.namespaces`, :mod:`~glmops_dev.network` (pod networking: a slot of
100.64.0.0/10, kube-proxy, cluster DNS), :mod:`~glmops_dev.agent` (the node agent),
:mod:`~glmops_dev.environment` (all of it in one call).
"""

from glmops_dev.binaries import K8S_VERSION, BinariesNotFoundError, ControlPlaneBinaries, find_binaries
from glmops_dev.cluster import ClusterStartError, ExistingCluster, KubeCluster, LocalCluster
from glmops_dev.nodes import NODE_PROFILES, NodeProfile

__all__ = [
    "K8S_VERSION",
    "NODE_PROFILES",
    "BinariesNotFoundError",
    "ClusterStartError",
    "ControlPlaneBinaries",
    "ExistingCluster",
    "KubeCluster",
    "LocalCluster",
    "NodeProfile",
    "find_binaries",
]
