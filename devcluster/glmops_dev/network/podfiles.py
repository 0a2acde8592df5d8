"""The files the kubelet writes for a pod's network: resolv.conf, hosts and hostname (pure, no I/O).

Containers of a pod see these at ``/etc/resolv.conf``, ``/etc/hosts`` and ``/etc/hostname``
(bound over the host's). The DNS policy follows the kubelet: ``ClusterFirst`` (the default) and
``ClusterFirstWithHostNet`` use the cluster DNS with the pod's search path; ``None`` uses only
``dnsConfig``; ``dnsConfig`` adds nameservers, searches and options to the others. ``Default``
would inherit the node's resolver, which is not reachable from a pod's namespace here (pods
have no route out of the block), so it resolves through the cluster DNS as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from glmops_dev.network.addresses import CLUSTER_DOMAIN

MAX_NAMESERVERS = 3
MAX_SEARCHES = 6
CLUSTER_NDOTS = 5


class PodDnsError(ValueError):
    """A pod's DNS settings cannot be honoured; the message names the field."""


def pod_hostname(pod: Mapping[str, Any]) -> str:
    """``spec.hostname`` or the pod's name, cut to 63 characters as the kubelet does."""
    spec = pod.get("spec") or {}
    return str(spec.get("hostname") or pod["metadata"]["name"])[:63].rstrip("-.")


def search_path(namespace: str, domain: str = CLUSTER_DOMAIN) -> list[str]:
    """The search domains of a pod in ``namespace``: its namespace's Services first."""
    return [f"{namespace}.svc.{domain}", f"svc.{domain}", domain]


def resolv_conf(pod: Mapping[str, Any], dns_ip: str, domain: str = CLUSTER_DOMAIN) -> str:
    """The pod's ``/etc/resolv.conf``."""
    spec = pod.get("spec") or {}
    policy = str(spec.get("dnsPolicy") or "ClusterFirst")
    config = spec.get("dnsConfig") or {}
    nameservers: list[str] = []
    searches: list[str] = []
    options: dict[str, str | None] = {}
    if policy in ("ClusterFirst", "ClusterFirstWithHostNet", "Default"):
        nameservers.append(dns_ip)
        searches.extend(search_path(str(pod["metadata"]["namespace"]), domain))
        options["ndots"] = str(CLUSTER_NDOTS)
    elif policy != "None":
        raise PodDnsError(
            f"spec.dnsPolicy: unknown policy {policy!r} (ClusterFirst, ClusterFirstWithHostNet, Default or None)"
        )
    nameservers.extend(str(n) for n in config.get("nameservers") or [] if str(n) not in nameservers)
    searches.extend(str(s) for s in config.get("searches") or [] if str(s) not in searches)
    for option in config.get("options") or []:
        value = option.get("value")
        options[str(option["name"])] = None if value is None else str(value)
    if policy == "None" and not nameservers:
        raise PodDnsError("spec.dnsConfig.nameservers: dnsPolicy None needs at least one nameserver")
    lines = [f"nameserver {server}" for server in nameservers[:MAX_NAMESERVERS]]
    if searches:
        lines.append("search " + " ".join(searches[:MAX_SEARCHES]))
    if options:
        lines.append(
            "options "
            + " ".join(name if value is None else f"{name}:{value}" for name, value in options.items())
        )
    return "\n".join(lines) + "\n"


def hosts_file(pod: Mapping[str, Any], pod_ip: str, domain: str = CLUSTER_DOMAIN) -> str:
    """The pod's ``/etc/hosts``: localhost, the pod's own name on its IP, then ``hostAliases``."""
    spec = pod.get("spec") or {}
    hostname = pod_hostname(pod)
    subdomain = spec.get("subdomain")
    lines = [
        "# Kubernetes-managed hosts file.",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    if subdomain:
        namespace = pod["metadata"]["namespace"]
        lines.append(f"{pod_ip}\t{hostname}.{subdomain}.{namespace}.svc.{domain}\t{hostname}")
    else:
        lines.append(f"{pod_ip}\t{hostname}")
    aliases = spec.get("hostAliases") or []
    if aliases:
        lines.append("")
        lines.append("# Entries added by HostAliases.")
        lines.extend(f"{alias['ip']}\t" + "\t".join(alias.get("hostnames") or []) for alias in aliases)
    return "\n".join(lines) + "\n"
