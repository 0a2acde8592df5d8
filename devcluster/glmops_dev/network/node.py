"""A slot's node namespace: the bridge every pod hangs on, linked to the host, routed from it.

Layout of slot N (addresses from :mod:`~glmops_dev.network.addresses`)::

    host namespace                       node namespace glmops-sN-node        pod namespaces
    API server, node agent, tests        kube-proxy's iptables rules          glmops-sN-pod-<uid>
    glmops-sN  100.(64+N).0.1/30 ------- eth0  100.(64+N).0.2/30
    routes: pods, Services -> .0.2       cbr0  100.(64+N).128.1/17 ---------- eth0 (veth) pod IP
    blackhole 100.64.0.0/10              cluster DNS on the bridge address    route 100.64/10 via bridge

The node namespace forwards between the link and the bridge (its own ``ip_forward``; the host's
stays as it was) and passes bridged frames through iptables (``bridge-nf-call-iptables``), so
that a pod reaching a Service backed by a pod on the same bridge gets its answer un-NATed.
kube-proxy runs inside it: its rules, and the ``route_localnet`` it sets, belong to this
namespace and vanish with it, and several environments' kube-proxies never see each other.
Removing it is :func:`glmops_dev.network.slots.clean_slot`'s job (pods' namespaces first).
"""

from __future__ import annotations

import logging

from glmops_dev.network import iproute
from glmops_dev.network.addresses import BRIDGE_NAME, NODE_UPLINK_NAME, SlotPlan

log = logging.getLogger("glmops_dev.network")

BRIDGE_NF_SYSCTL = "net.bridge.bridge-nf-call-iptables"


class NodeNetworkError(iproute.PodNetworkError):
    """The node namespace could not be set up; the message says what failed and how to fix it."""


def _bridge_netfilter() -> None:
    """Make sure bridged frames can pass iptables (the br_netfilter module)."""
    if iproute.read_sysctl(BRIDGE_NF_SYSCTL) is not None:
        return
    iproute.load_module("br_netfilter")
    if iproute.read_sysctl(BRIDGE_NF_SYSCTL) is None:
        raise NodeNetworkError(
            "the kernel module br_netfilter is not loaded and could not be loaded (`modprobe br_netfilter`): "
            "without it a pod cannot reach a Service whose backend is on the same bridge"
        )


def create_node_namespace(plan: SlotPlan) -> None:
    """Create the node namespace, its link to the host, the bridge, and the host's routes into the slot."""
    iproute.require_tools("ip", "sysctl")
    _bridge_netfilter()
    ns = plan.node_netns
    iproute.ip("netns", "add", ns)
    iproute.ip("link", "set", "lo", "up", netns=ns)
    iproute.ip("link", "add", plan.host_link, "type", "veth", "peer", "name", NODE_UPLINK_NAME, "netns", ns)
    iproute.ip("address", "add", f"{plan.host_ip}/30", "dev", plan.host_link)
    iproute.ip("link", "set", plan.host_link, "up")
    iproute.ip("address", "add", f"{plan.node_link_ip}/30", "dev", NODE_UPLINK_NAME, netns=ns)
    iproute.ip("link", "set", NODE_UPLINK_NAME, "up", netns=ns)
    iproute.ip("link", "add", BRIDGE_NAME, "type", "bridge", netns=ns)
    iproute.ip("address", "add", f"{plan.bridge_ip}/{plan.pod_prefix_length}", "dev", BRIDGE_NAME, netns=ns)
    iproute.ip("link", "set", BRIDGE_NAME, "up", netns=ns)
    iproute.sysctl(ns, "net.ipv4.ip_forward", "1")
    iproute.sysctl(ns, BRIDGE_NF_SYSCTL, "1")
    # The host reaches pods and Services through the node namespace; the Service range needs its
    # route before kube-proxy's DNAT there rewrites the destination.
    for cidr in (plan.pod_cidr, plan.service_cidr):
        iproute.ip(
            "route", "replace", cidr, "via", plan.node_link_ip, "dev", plan.host_link, "src", plan.host_ip
        )
    log.info(
        "slot %d: node namespace %s with bridge %s/%s", plan.slot, ns, plan.bridge_ip, plan.pod_prefix_length
    )
