"""One environment's pod network: a slot of the block, its node namespace, kube-proxy and the cluster DNS.

Life cycle (what :func:`glmops_dev.environment.start_environment` does)::

    network = ClusterNetwork.create()                  # slot + node namespace + host routes
    cluster = LocalCluster(addressing=ClusterAddressing.for_slot(network.plan)).start()
    network.start_services(cluster, node_name)         # kube-proxy + DNS (need the API server)
    ...                                                # node agents set up pods (network.pods)
    network.stop_services(); cluster.stop(); network.close()

:meth:`close` removes every namespace, link, route, iptables rule (they live in the
namespaces) and /etc/hosts line of the slot, and gives the slot back. It also runs when the
object is garbage collected or the interpreter exits; a process killed outright leaves them to
the next environment that takes a slot (see :mod:`~glmops_dev.network.slots`).
"""

from __future__ import annotations

import logging
import shutil
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Self

from glmops_dev.network.addresses import CLUSTER_DOMAIN, SlotPlan
from glmops_dev.network.dns import ClusterDns
from glmops_dev.network.kubeproxy import KubeProxy
from glmops_dev.network.node import create_node_namespace
from glmops_dev.network.sandbox import PodNetwork
from glmops_dev.network.slots import SlotLease, acquire_slot, block_lock, clean_slot, hosts_lock_path

if TYPE_CHECKING:
    from glmops_dev.cluster import KubeCluster

log = logging.getLogger("glmops_dev.network")


def service_host_names(name: str, namespace: str, domain: str = CLUSTER_DOMAIN) -> list[str]:
    """The names a Service has: pods resolve all of them, the host the last two."""
    return [name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.{domain}"]


class _Services:
    """kube-proxy and the DNS of a network, once started."""

    def __init__(self) -> None:
        self.kube_proxy: KubeProxy | None = None
        self.dns: ClusterDns | None = None

    def stop(self) -> None:
        dns, self.dns = self.dns, None
        proxy, self.kube_proxy = self.kube_proxy, None
        if dns is not None:
            dns.stop()
        if proxy is not None:
            proxy.stop()


def _teardown(lease: SlotLease, services: _Services, state_dir: Path, remove_state: bool) -> None:
    try:
        services.stop()
    finally:
        try:
            with block_lock():
                clean_slot(lease.plan)
        finally:
            lease.release()
            if remove_state:
                shutil.rmtree(state_dir, ignore_errors=True)


class ClusterNetwork:
    """The pod network of one environment (see the module docstring)."""

    def __init__(self, lease: SlotLease, state_dir: Path, keep_state: bool) -> None:
        """Use :meth:`create`."""
        self._lease = lease
        self.plan: SlotPlan = lease.plan
        """The slot's addresses and names."""
        self.state_dir = state_dir
        """Where kube-proxy's and dnsmasq's logs go."""
        self.pods = PodNetwork(lease.plan)
        """What node agents use to give pods their namespace and address."""
        self._services = _Services()
        self._finalizer = weakref.finalize(self, _teardown, lease, self._services, state_dir, not keep_state)

    @classmethod
    def create(cls, state_dir: Path | None = None, *, keep_state: bool = False) -> ClusterNetwork:
        """Take a free slot and build its node namespace and host routes (needs root).

        ``state_dir``: where kube-proxy's and dnsmasq's logs go (default: the slot's runtime
        folder under /run, removed with the slot); ``keep_state`` keeps a given one after close.
        """
        lease = acquire_slot()
        try:
            create_node_namespace(lease.plan)
        except BaseException:
            with block_lock():
                clean_slot(lease.plan)
            lease.release()
            raise
        # By default the logs live in the slot's runtime folder, which the sweep removes even
        # after a run that was killed outright.
        folder = state_dir if state_dir is not None else lease.runtime_dir / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        return cls(lease, folder, keep_state and state_dir is not None)

    # -- services ------------------------------------------------------------------------------

    @property
    def kube_proxy(self) -> KubeProxy | None:
        """kube-proxy, once :meth:`start_services` ran."""
        return self._services.kube_proxy

    @property
    def dns(self) -> ClusterDns | None:
        """The cluster DNS, once :meth:`start_services` ran."""
        return self._services.dns

    def start_services(
        self,
        cluster: KubeCluster,
        node_name: str,
        kube_proxy_binary: Path,
        kube_proxy_kubeconfig: Path,
        ready_service_ip: str | None,
    ) -> None:
        """Start kube-proxy and the DNS for ``cluster`` and record the slot as serving its API server.

        ``node_name``: the Node kube-proxy runs as (any simulated node: they share this machine).
        ``ready_service_ip``: a ClusterIP whose rules prove kube-proxy synced (the ``kubernetes``
        Service's when the control plane publishes its endpoints), None to wait for health only.
        Call from a thread that lives as long as the network: the processes die with it.
        """
        self._lease.record_owner(cluster.server)
        proxy = KubeProxy(
            kube_proxy_binary, self.plan, kube_proxy_kubeconfig, node_name, self.state_dir / "kube-proxy.log"
        )
        self._services.kube_proxy = proxy
        proxy.start(ready_service_ip)
        dns = ClusterDns(
            self.plan,
            cluster.api_client(),
            self._lease.runtime_dir,
            self.state_dir / "dnsmasq.log",
            hosts_lock_path(),
        )
        self._services.dns = dns
        dns.start()

    def stop_services(self) -> None:
        """Stop the DNS and kube-proxy (removing their rules and /etc/hosts lines); before the API server stops."""
        self._services.stop()

    def close(self) -> None:
        """Remove everything of the slot and give it back (idempotent)."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return not self._finalizer.alive

    def describe(self) -> str:
        """A short human summary of the ranges and where things listen."""
        plan = self.plan
        return "\n".join(
            [
                f"pod network: slot {plan.slot} ({plan.network}), node namespace {plan.node_netns}",
                f"  pods {plan.pod_cidr} on bridge {plan.bridge_ip}; Services {plan.service_cidr}",
                f"  cluster DNS {plan.dns_ip}; the host resolves NAME.NAMESPACE.svc through /etc/hosts",
            ]
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
