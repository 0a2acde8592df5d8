"""The address plan of the local cluster's pod networks (pure: names and numbers, no I/O).

Every address comes from one block outside the private ranges a host may already use (10/8,
172.16/12, 192.168/16): the shared address space 100.64.0.0/10. It is cut into /16 slots, one
per environment running on the machine at the same time, so that several test sessions and the
demo never share an address, a bridge or a name. Slot ``N`` is ``100.(64+N).0.0/16``:

==================  ===================  ==================================================
range               example (slot 3)     what it is
==================  ===================  ==================================================
``.0.0/30``         100.67.0.0/30        link between the host and the slot's node namespace
``.0.1``            100.67.0.1           the host's end: API server, node agent, node InternalIP
``.0.2``            100.67.0.2           the node namespace's end (kube-proxy's health port)
``.64.0/18``        100.67.64.0/18       Services (``--service-cluster-ip-range``)
``.64.1``           100.67.64.1          the ``kubernetes`` Service
``.128.0/17``       100.67.128.0/17      pods (``--cluster-cidr``), one bridge
``.128.1``          100.67.128.1         the bridge: pods' gateway and the cluster DNS
==================  ===================  ==================================================

The rest of the slot, and every slot no environment holds, is unassigned: a blackhole route on
the whole block keeps packets addressed to it on the machine. The last slot (``100.127.0.0/16``)
is never handed out: clusters started without a pod network take their service range from it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

BLOCK = ipaddress.IPv4Network("100.64.0.0/10")
"""Every pod, Service and link address of every environment lies in this block."""
SLOT_PREFIX_LENGTH = 16
SLOT_COUNT = 2 ** (SLOT_PREFIX_LENGTH - BLOCK.prefixlen) - 1
"""Slots 0..62 are handed out; the last /16 of the block is reserved (see the module docstring)."""
RESERVED_SLOT = SLOT_COUNT
STANDALONE_SERVICE_CIDR = "100.127.64.0/18"
"""Service range of a control plane started without a pod network (no kube-proxy serves it)."""
STANDALONE_KUBERNETES_SERVICE_IP = "100.127.64.1"

CLUSTER_DOMAIN = "cluster.local"
NAME_PREFIX = "glmops-s"
"""Every host-visible name of a slot starts with ``glmops-s<N>``: namespaces, the host's link."""
BRIDGE_NAME = "cbr0"
NODE_UPLINK_NAME = "eth0"
POD_INTERFACE_NAME = "eth0"

_SLOT_NAME = re.compile(rf"^{NAME_PREFIX}(\d+)(?:-|$)")


class AddressPlanError(ValueError):
    """A slot number or an address outside the plan."""


@dataclass(frozen=True)
class SlotPlan:
    """Addresses and names of one environment's slot (see the module docstring)."""

    slot: int

    def __post_init__(self) -> None:
        if not 0 <= self.slot < SLOT_COUNT:
            raise AddressPlanError(f"slot {self.slot} is outside 0..{SLOT_COUNT - 1}")

    # -- ranges ----------------------------------------------------------------------------

    @property
    def network(self) -> ipaddress.IPv4Network:
        """The whole slot (a /16 of the block)."""
        return slot_network(self.slot)

    def _address(self, offset: int) -> str:
        return str(self.network.network_address + offset)

    @property
    def link_cidr(self) -> str:
        """The /30 between the host and the node namespace."""
        return f"{self._address(0)}/30"

    @property
    def host_ip(self) -> str:
        """The host's address on the link: API server, node agent, each node's InternalIP."""
        return self._address(1)

    @property
    def node_link_ip(self) -> str:
        """The node namespace's address on the link (the next hop of the slot's routes)."""
        return self._address(2)

    @property
    def service_cidr(self) -> str:
        """The Service range (``--service-cluster-ip-range``)."""
        return f"{self._address(64 * 256)}/18"

    @property
    def kubernetes_service_ip(self) -> str:
        """ClusterIP of the ``kubernetes`` Service (the first of the Service range)."""
        return self._address(64 * 256 + 1)

    @property
    def pod_cidr(self) -> str:
        """The pod range (``--cluster-cidr``): one bridge holds every pod of the slot."""
        return f"{self._address(128 * 256)}/17"

    @property
    def bridge_ip(self) -> str:
        """The bridge's address: every pod's gateway, and where the cluster DNS listens."""
        return self._address(128 * 256 + 1)

    @property
    def dns_ip(self) -> str:
        """The cluster DNS server pods use (``nameserver`` of their resolv.conf)."""
        return self.bridge_ip

    @property
    def pod_prefix_length(self) -> int:
        """Prefix length of the pod range (the pods' interface address is ``IP/this``)."""
        return ipaddress.IPv4Network(self.pod_cidr).prefixlen

    def pod_addresses(self) -> range:
        """Integer values of the addresses pods may get (the range less network, bridge and broadcast)."""
        pods = ipaddress.IPv4Network(self.pod_cidr)
        first = int(pods.network_address) + 2
        return range(first, int(pods.broadcast_address))

    # -- names -----------------------------------------------------------------------------

    @property
    def name_prefix(self) -> str:
        """``glmops-s<N>``: the start of every host-visible name of this slot."""
        return f"{NAME_PREFIX}{self.slot}"

    @property
    def node_netns(self) -> str:
        """The network namespace holding the bridge, kube-proxy's rules and the cluster DNS."""
        return f"{self.name_prefix}-node"

    @property
    def host_link(self) -> str:
        """The host's end of the link to the node namespace (at most 15 characters)."""
        return self.name_prefix

    def pod_netns(self, uid: str) -> str:
        """The network namespace of the pod with this uid."""
        return f"{self.name_prefix}-pod-{uid}"

    def pod_uid_of_netns(self, name: str) -> str | None:
        """The pod uid a namespace name of this slot carries, None for other names."""
        prefix = f"{self.name_prefix}-pod-"
        return name[len(prefix) :] if name.startswith(prefix) else None

    @staticmethod
    def pod_veth(uid: str) -> str:
        """The bridge-side end of a pod's veth pair, inside the node namespace (15 characters)."""
        return "veth" + hashlib.sha256(uid.encode()).hexdigest()[:11]

    @property
    def hosts_block_marker(self) -> str:
        """The text that opens and closes this slot's block in the host's /etc/hosts."""
        return f"glmops pod network slot {self.slot}"


def slot_network(slot: int) -> ipaddress.IPv4Network:
    """The /16 of a slot (any slot number of the block, the reserved one included)."""
    if not 0 <= slot <= RESERVED_SLOT:
        raise AddressPlanError(f"slot {slot} is outside 0..{RESERVED_SLOT}")
    subnets = 2 ** (32 - SLOT_PREFIX_LENGTH)
    return ipaddress.IPv4Network((int(BLOCK.network_address) + slot * subnets, SLOT_PREFIX_LENGTH))


def slot_of_address(address: str) -> int | None:
    """The slot an address lies in; None outside the block or in the reserved slot."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return None
    if ip not in BLOCK:
        return None
    slot = (int(ip) - int(BLOCK.network_address)) >> (32 - SLOT_PREFIX_LENGTH)
    return slot if slot < SLOT_COUNT else None


def slot_of_name(name: str) -> int | None:
    """The slot a host-visible name (``glmops-s3-node``, ``glmops-s3``) belongs to; None for others."""
    match = _SLOT_NAME.match(name)
    if match is None:
        return None
    slot = int(match.group(1))
    return slot if slot < SLOT_COUNT else None


def is_private_range(cidr: str) -> bool:
    """Whether a range overlaps 10/8, 172.16/12 or 192.168/16 (which this plan never uses)."""
    network = ipaddress.IPv4Network(cidr)
    return any(
        network.overlaps(ipaddress.IPv4Network(private))
        for private in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
    )
