"""Pod networking of the local cluster: a namespace and IP per pod, kube-proxy, cluster DNS.

Modules: :mod:`~glmops_dev.network.addresses` (the address plan, pure),
:mod:`~glmops_dev.network.podfiles` and :mod:`~glmops_dev.network.dnsnames` (files and records,
pure), :mod:`~glmops_dev.network.slots` (who holds which slot; sweeping dead ones),
:mod:`~glmops_dev.network.node` (the slot's bridge namespace), :mod:`~glmops_dev.network.sandbox`
(pods' namespaces and addresses), :mod:`~glmops_dev.network.kubeproxy`,
:mod:`~glmops_dev.network.dns`, :mod:`~glmops_dev.network.cluster_network` (all of it for one
environment), :mod:`~glmops_dev.network.iproute` (the commands). docs/architecture.md explains
the model.
"""

from glmops_dev.network.addresses import BLOCK, SlotPlan
from glmops_dev.network.cluster_network import ClusterNetwork, service_host_names
from glmops_dev.network.iproute import PodNetworkError
from glmops_dev.network.sandbox import PodNetwork, PodSandbox, SandboxError

__all__ = [
    "BLOCK",
    "ClusterNetwork",
    "PodNetwork",
    "PodNetworkError",
    "PodSandbox",
    "SandboxError",
    "SlotPlan",
    "service_host_names",
]
