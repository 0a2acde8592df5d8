"""Pod sandboxes: a network namespace, a veth on the slot's bridge and an IP per pod.

What a CNI bridge plugin with host-local IPAM does for a kubelet: :meth:`PodNetwork.setup`
gives a pod (by uid) the namespace ``glmops-sN-pod-<uid>`` with ``lo`` up, an ``eth0`` whose
peer hangs on the bridge (hairpin on, so a pod reaches itself through its own Service), an
address of the pod range and one route, the block via the bridge: no default route, nothing
outside the block is reachable. :meth:`PodNetwork.teardown` undoes it.

Addresses are files under the slot's runtime folder (``ips/<address>`` holding the pod's uid),
created with ``O_EXCL`` under a lock, so every node agent of the slot shares one allocator. The
next address is taken after the last one handed out, so a freed address is not reused at once
(kube-proxy's rules may still name it for a moment).
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from glmops_dev.network import iproute
from glmops_dev.network.addresses import BLOCK, BRIDGE_NAME, POD_INTERFACE_NAME, SlotPlan
from glmops_dev.network.slots import runtime_dir

log = logging.getLogger("glmops_dev.network")


class SandboxError(iproute.PodNetworkError):
    """A pod's network could not be set up; the message says which step failed."""


@dataclass(frozen=True)
class PodSandbox:
    """A pod's network: its namespace and address."""

    uid: str
    netns: str
    """Name of the pod's network namespace."""
    netns_path: str
    """The file that names the namespace (what the launcher's ``--netns`` enters)."""
    ip: str
    """The pod's address (``status.podIP``)."""


class PodNetwork:
    """The pods of one slot; shared by every node agent of the environment holding it."""

    def __init__(self, plan: SlotPlan) -> None:
        self.plan = plan

    @property
    def node_ip(self) -> str:
        """Every node's InternalIP (and so every pod's ``hostIP``): the host's end of the slot's link."""
        return self.plan.host_ip

    @property
    def dns_ip(self) -> str:
        """The cluster DNS server of pods' resolv.conf."""
        return self.plan.dns_ip

    @property
    def _ips_dir(self) -> Path:
        return runtime_dir(self.plan.slot) / "ips"

    def available(self) -> str | None:
        """None when the slot's node namespace exists (pods can be set up); otherwise why not."""
        if not iproute.netns_exists(self.plan.node_netns):
            return (
                f"the node network namespace {self.plan.node_netns} of slot {self.plan.slot} does not exist: "
                "the environment that held the slot has stopped"
            )
        return None

    # -- addresses -------------------------------------------------------------------------

    def _allocate(self, uid: str) -> str:
        folder = self._ips_dir
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            candidates = self.plan.pod_addresses()
            try:
                last = int(ipaddress.IPv4Address((folder / ".last").read_text().strip()))
                start = candidates.index(last) + 1 if last in candidates else 0
            except (OSError, ValueError):
                start = 0
            for step in range(len(candidates)):
                value = candidates[(start + step) % len(candidates)]
                address = str(ipaddress.IPv4Address(value))
                try:
                    fd = os.open(folder / address, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    continue
                with os.fdopen(fd, "w") as record:
                    record.write(uid + "\n")
                (folder / ".last").write_text(address + "\n")
                return address
        raise SandboxError(f"no free address left in the pod range {self.plan.pod_cidr}")

    def _release(self, uid: str) -> None:
        folder = self._ips_dir
        if not folder.is_dir():
            return
        for entry in folder.iterdir():
            if entry.name.startswith("."):
                continue
            try:
                if entry.read_text().strip() == uid:
                    entry.unlink()
            except OSError:
                continue

    def address_of(self, uid: str) -> str | None:
        """The address allocated to a pod, if any."""
        folder = self._ips_dir
        if folder.is_dir():
            for entry in folder.iterdir():
                try:
                    if not entry.name.startswith(".") and entry.read_text().strip() == uid:
                        return entry.name
                except OSError:
                    continue
        return None

    # -- sandboxes -------------------------------------------------------------------------

    def setup(self, uid: str) -> PodSandbox:
        """Give the pod its namespace, veth and address (anything left of an earlier try is removed first)."""
        problem = self.available()
        if problem:
            raise SandboxError(problem)
        plan = self.plan
        self.teardown(uid)
        address = self._allocate(uid)
        netns, veth, node = plan.pod_netns(uid), plan.pod_veth(uid), plan.node_netns
        try:
            iproute.ip("netns", "add", netns)
            iproute.ip("link", "set", "lo", "up", netns=netns)
            iproute.ip(
                "link",
                "add",
                veth,
                "type",
                "veth",
                "peer",
                "name",
                POD_INTERFACE_NAME,
                "netns",
                netns,
                netns=node,
            )
            iproute.ip("link", "set", veth, "master", BRIDGE_NAME, netns=node)
            iproute.ip("link", "set", veth, "type", "bridge_slave", "hairpin", "on", netns=node)
            iproute.ip("link", "set", veth, "up", netns=node)
            iproute.ip(
                "address",
                "add",
                f"{address}/{plan.pod_prefix_length}",
                "dev",
                POD_INTERFACE_NAME,
                netns=netns,
            )
            iproute.ip("link", "set", POD_INTERFACE_NAME, "up", netns=netns)
            iproute.ip(
                "route", "add", str(BLOCK), "via", plan.bridge_ip, "dev", POD_INTERFACE_NAME, netns=netns
            )
        except iproute.NetworkCommandError as exc:
            self.teardown(uid)
            raise SandboxError(f"setting up the network of pod {uid}: {exc}") from exc
        log.debug("pod %s: namespace %s, address %s", uid, netns, address)
        return PodSandbox(uid=uid, netns=netns, netns_path=iproute.netns_path(netns), ip=address)

    def teardown(self, uid: str) -> None:
        """Remove the pod's namespace (killing what still runs in it), its veth and its address."""
        plan = self.plan
        if iproute.netns_exists(plan.node_netns):
            iproute.delete_link(plan.pod_veth(uid), netns=plan.node_netns)
        iproute.delete_netns(plan.pod_netns(uid))
        self._release(uid)

    def pod_uids(self) -> list[str]:
        """Uids of the pods that have a namespace in this slot."""
        found = (self.plan.pod_uid_of_netns(name) for name in iproute.netns_names())
        return sorted(uid for uid in found if uid)
