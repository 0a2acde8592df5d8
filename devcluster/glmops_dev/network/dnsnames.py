"""Which names the cluster DNS answers, from Services and Endpoints (pure, no I/O).

As Kubernetes' DNS specification says: a Service with a ClusterIP is ``NAME.NS.svc.DOMAIN`` on
that IP; a headless Service (``clusterIP: None``) is the same name on every ready address of
its Endpoints (not-ready ones too with ``publishNotReadyAddresses``), and an address carrying a
``hostname`` (a pod with ``hostname`` and ``subdomain`` = the Service's name) is also
``HOSTNAME.NAME.NS.svc.DOMAIN``. ExternalName Services (CNAMEs) are not served.

The host gets the same records in a marked block of its ``/etc/hosts``, with the short form
``NAME.NS.svc`` beside each full name (the host has no search path into the cluster).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from glmops_dev.network.addresses import CLUSTER_DOMAIN

Record = tuple[str, str]
"""(address, fully qualified name)."""


def _key(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def service_records(
    services: Iterable[Mapping[str, Any]],
    endpoints: Iterable[Mapping[str, Any]],
    domain: str = CLUSTER_DOMAIN,
) -> list[Record]:
    """Every (address, name) the cluster DNS answers, sorted by name then address."""
    by_service = {_key(e): e for e in endpoints}
    records: set[Record] = set()
    for service in services:
        namespace, name = _key(service)
        spec = service.get("spec") or {}
        if spec.get("type") == "ExternalName":
            continue
        fqdn = f"{name}.{namespace}.svc.{domain}"
        cluster_ip = str(spec.get("clusterIP") or "")
        if cluster_ip and cluster_ip != "None":
            records.add((cluster_ip, fqdn))
            continue
        if cluster_ip != "None":
            continue  # no IP allocated yet
        endpoint = by_service.get((namespace, name)) or {}
        for subset in endpoint.get("subsets") or []:
            addresses = list(subset.get("addresses") or [])
            if spec.get("publishNotReadyAddresses"):
                addresses += subset.get("notReadyAddresses") or []
            for address in addresses:
                ip = str(address.get("ip", ""))
                if not ip:
                    continue
                records.add((ip, fqdn))
                if address.get("hostname"):
                    records.add((ip, f"{address['hostname']}.{fqdn}"))
    return sorted(records, key=lambda record: (record[1], record[0]))


def _short_name(fqdn: str, domain: str) -> str | None:
    suffix = f".svc.{domain}"
    return fqdn[: -len(domain) - 1] if fqdn.endswith(suffix) else None


def dnsmasq_hosts(records: Iterable[Record]) -> str:
    """The cluster DNS's hosts file: one ``ADDRESS NAME`` line per record."""
    return "".join(f"{address} {name}\n" for address, name in records)


def host_lines(records: Iterable[Record], domain: str = CLUSTER_DOMAIN) -> list[str]:
    """The host's ``/etc/hosts`` lines: ``ADDRESS NAME.NS.svc NAME.NS.svc.DOMAIN`` per record."""
    lines = []
    for address, name in records:
        short = _short_name(name, domain)
        lines.append(f"{address}\t{short}\t{name}" if short else f"{address}\t{name}")
    return lines


def _markers(marker: str) -> tuple[str, str]:
    return f"# BEGIN {marker} (removed when its environment stops)", f"# END {marker}"


def without_block(text: str, marker: str) -> str:
    """``text`` (an /etc/hosts) without the block of ``marker``; everything else kept as it was."""
    begin, end = _markers(marker)
    kept: list[str] = []
    inside = False
    lines = text.splitlines(keepends=True)
    has_end = any(line.rstrip("\n") == end for line in lines)
    for line in lines:
        bare = line.rstrip("\n")
        if bare == begin:
            # A block whose end line is missing cannot be told apart from what follows it:
            # only its opening line goes.
            inside = has_end
            continue
        if inside:
            if bare == end:
                inside = False
            continue
        kept.append(line)
    return "".join(kept)


def with_block(text: str, marker: str, lines: list[str]) -> str:
    """``text`` with the block of ``marker`` replaced by ``lines`` (no block when empty), at the end."""
    rest = without_block(text, marker)
    if not lines:
        return rest
    begin, end = _markers(marker)
    if rest and not rest.endswith("\n"):
        rest += "\n"
    return rest + "\n".join([begin, *lines, end]) + "\n"


def block_markers_present(text: str, marker: str) -> bool:
    """Whether ``text`` holds the opening line of the block of ``marker``."""
    begin, _ = _markers(marker)
    return any(line == begin for line in text.splitlines())
