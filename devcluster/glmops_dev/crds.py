"""Install CustomResourceDefinitions from YAML files and wait until the API serves them.

The CRDs are created or replaced as whole objects (no client-side apply: its
``last-applied-configuration`` annotation overflows the 256 KiB limit on large schemas).

Old servers and CEL: ``x-kubernetes-validations`` (CEL rules) is known to the API server from
Kubernetes 1.23 (alpha, off by default) and enforced by default from 1.25. A 1.20 server, like
the local control plane, silently drops the unknown field on a plain create or replace, but
server-side apply rejects it ("field not declared in schema") and kubectl 1.20's client-side
validation rejects it too ("unknown field"). :func:`install_crds` therefore strips the rules
before sending a CRD to a server older than 1.25 and reports which CRDs lost rules; such a
server would never check them anyway, so the stored schema says what is really enforced.
Checks that matter on every server must also live in the operator.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from glmops_dev.cluster import api_server_version
from glmops_dev.rawapi import discard, read_json_or_none

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

CEL_FIELD = "x-kubernetes-validations"
CEL_ENFORCED_FROM = (1, 25)


@dataclass
class CrdInstallReport:
    """What :func:`install_crds` did."""

    installed: list[str] = field(default_factory=list)
    """Names of the CRDs created or replaced, in order."""
    cel_stripped: list[str] = field(default_factory=list)
    """CRDs whose ``x-kubernetes-validations`` rules were removed for an old server."""


def crd_files(folder: Path) -> list[Path]:
    """Every ``*.yaml``/``*.yml`` file of a folder, sorted (an absent folder gives none)."""
    if not folder.is_dir():
        return []
    return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])


def load_crds(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """The CustomResourceDefinition documents of some YAML files (other kinds are skipped)."""
    crds: list[dict[str, Any]] = []
    for path in paths:
        with path.open() as stream:
            for doc in yaml.safe_load_all(stream):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    crds.append(doc)
    return crds


def strip_cel_rules(node: Any) -> tuple[Any, bool]:
    """A copy of a schema without any ``x-kubernetes-validations``; the flag says if one was found."""
    found = False

    def walk(value: Any) -> Any:
        nonlocal found
        if isinstance(value, dict):
            if CEL_FIELD in value:
                found = True
            return {k: walk(v) for k, v in value.items() if k != CEL_FIELD}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(copy.deepcopy(node)), found


def _ext(api_client: ApiClient) -> Any:
    from kubernetes.client import ApiextensionsV1Api

    return ApiextensionsV1Api(api_client)


def _read_crd(api_client: ApiClient, name: str) -> dict[str, Any] | None:
    crd: dict[str, Any] | None = read_json_or_none(_ext(api_client).read_custom_resource_definition, name)
    return crd


def apply_crd(api_client: ApiClient, crd: dict[str, Any]) -> None:
    """Create a CRD, or replace the one of the same name."""
    from kubernetes.client.exceptions import ApiException

    ext = _ext(api_client)
    name = crd["metadata"]["name"]
    existing = _read_crd(api_client, name)
    if existing is None:
        try:
            discard(ext.create_custom_resource_definition(body=crd, _preload_content=False))
            return
        except ApiException as exc:
            if exc.status != 409:
                raise
            existing = _read_crd(api_client, name) or {}
    body = copy.deepcopy(crd)
    body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
    discard(ext.replace_custom_resource_definition(name, body=body, _preload_content=False))


def wait_established(api_client: ApiClient, names: Iterable[str], timeout_s: float = 60.0) -> None:
    """Wait until every named CRD has condition ``Established=True``; the error shows its conditions."""
    deadline = time.monotonic() + timeout_s
    for name in names:
        while True:
            crd = _read_crd(api_client, name) or {}
            conditions = crd.get("status", {}).get("conditions") or []
            if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
                break
            if time.monotonic() > deadline:
                summary = "; ".join(
                    f"{c.get('type')}={c.get('status')} ({c.get('reason')}: {c.get('message')})"
                    for c in conditions
                )
                raise TimeoutError(
                    f"CRD {name} not Established after {timeout_s:.0f} s: {summary or 'no conditions yet'}"
                )
            time.sleep(0.2)


def install_crds(api_client: ApiClient, paths: Iterable[Path], timeout_s: float = 60.0) -> CrdInstallReport:
    """Create or replace every CRD in ``paths`` and wait until each is Established.

    On servers older than 1.25 the CEL rules are stripped first (see the module docstring).
    """
    report = CrdInstallReport()
    crds = load_crds(paths)
    if not crds:
        return report
    old_server = api_server_version(api_client) < CEL_ENFORCED_FROM
    for crd in crds:
        name = crd["metadata"]["name"]
        if old_server:
            crd, had_rules = strip_cel_rules(crd)
            if had_rules:
                report.cel_stripped.append(name)
        apply_crd(api_client, crd)
        report.installed.append(name)
    wait_established(api_client, report.installed, timeout_s)
    return report
