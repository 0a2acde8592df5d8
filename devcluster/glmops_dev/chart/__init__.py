"""The Helm chart `charts/glmops`: rendered, linted and installed with Helm's own engine (helm-python-sdk).

    from glmops_dev.chart import install_release, uninstall_release
    release = install_release(cluster, {"replicaCount": 1})     # the operator then runs as a pod
    ...
    uninstall_release(cluster, release)

`install_release` installs into the release namespace (created when missing) with the values of
`charts/glmops/ci/local-values.yaml` under the caller's: images the node agent maps to this
machine (`ghcr.io/glmops/operator` and `ghcr.io/glmops/trainer` run as-is with the project's
Python; llama.cpp and vLLM run their local builds), trainer pods on CPU. CRDs that a tool other
than Helm installed (the local cluster installs crds/ at start) are adopted by the release
first, the documented way to hand existing objects to Helm.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from glmops_dev.binaries import repo_root

RELEASE = "glmops"
RELEASE_NAMESPACE = "glmops-system"


def chart_dir() -> Path:
    """The chart's folder, `charts/glmops`."""
    return repo_root() / "charts" / "glmops"


def crd_names() -> list[str]:
    """The names of the CRDs the chart installs (its copies of crds/), e.g. finetunejobs.glmops.io."""
    return sorted(str(yaml.safe_load(path.read_text())["metadata"]["name"]) for path in (chart_dir() / "files" / "crds").glob("*.yaml"))


def local_values() -> dict[str, Any]:
    """The values for the local cluster (`charts/glmops/ci/local-values.yaml`)."""
    loaded = yaml.safe_load((chart_dir() / "ci" / "local-values.yaml").read_text())
    return dict(loaded or {})


def merge_values(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `override` merged in, mapping by mapping (as Helm merges values files)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = value
    return merged


def render(values: Mapping[str, Any] | None = None, name: str = RELEASE, namespace: str = RELEASE_NAMESPACE) -> list[dict[str, Any]]:
    """The chart's manifests for `values` (offline: Helm assumes a current Kubernetes), as objects."""
    import helm_python

    chart = helm_python.Chart.load(chart_dir())
    rendered = chart.render(dict(values or {}), name=name, namespace=namespace)
    objects: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict)]
    return objects


@dataclass(frozen=True)
class Release:
    """An installed release: what `uninstall_release` needs, and the manifest Helm applied."""

    name: str
    namespace: str
    kubeconfig: Path
    manifest: str
    values: Mapping[str, Any]

    def objects(self) -> list[dict[str, Any]]:
        """The objects of the release's manifest."""
        return [doc for doc in yaml.safe_load_all(self.manifest) if isinstance(doc, dict)]


def _config(kubeconfig: Path, namespace: str) -> Any:
    import helm_python

    return helm_python.Config(kubeconfig_path=kubeconfig, namespace=namespace)


def adopt_crds(api: Any, name: str = RELEASE, namespace: str = RELEASE_NAMESPACE) -> list[str]:
    """Mark the glmops CRDs that exist as the release's (Helm's ownership label and annotations).

    Helm refuses to install over objects it did not create; these marks are how an existing CRD
    is handed to a release. Returns the names of the CRDs marked.
    """
    from glmops import kube

    adopted = []
    for crd in crd_names():
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}"
        patch = {
            "metadata": {
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {"meta.helm.sh/release-name": name, "meta.helm.sh/release-namespace": namespace},
            }
        }
        try:
            kube.request(api, "PATCH", path, body=patch, content_type=kube.MERGE_PATCH)
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                continue
            raise
        adopted.append(crd)
    return adopted


def _ensure_namespace(api: Any, namespace: str) -> None:
    from kubernetes.client.exceptions import ApiException

    from glmops import kube

    try:
        kube.request(api, "POST", "/api/v1/namespaces", body={"metadata": {"name": namespace}})
    except ApiException as exc:
        if exc.status != 409:
            raise


def install_release(
    cluster: Any,
    values: Mapping[str, Any] | None = None,
    *,
    name: str = RELEASE,
    namespace: str = RELEASE_NAMESPACE,
    local: bool = True,
    timeout_s: int = 300,
) -> Release:
    """Install the chart into `cluster` (a glmops_dev KubeCluster) and return the release.

    With `local` (the default), `ci/local-values.yaml` comes first and `values` on top. The call
    returns once Helm has applied the manifest; wait for the operator with `wait_for_leader`.
    """
    import helm_python

    merged = merge_values(local_values(), values or {}) if local else dict(values or {})
    with cluster.api_client() as api:
        _ensure_namespace(api, namespace)
        adopt_crds(api, name, namespace)
    config = _config(cluster.kubeconfig, namespace)
    try:
        chart = helm_python.Chart.load(chart_dir())
        result = config.install(chart, name, merged, namespace=namespace, timeout=timeout_s)
    finally:
        config.close()
    return Release(name, namespace, Path(cluster.kubeconfig), str(_field(result, "manifest")), merged)


def upgrade_release(cluster: Any, release: Release, values: Mapping[str, Any] | None = None, timeout_s: int = 300) -> Release:
    """`helm upgrade` of `release` to the chart as it is now, with `values` over the release's own."""
    import helm_python

    merged = merge_values(release.values, values or {})
    config = _config(cluster.kubeconfig, release.namespace)
    try:
        chart = helm_python.Chart.load(chart_dir())
        result = config.upgrade(chart, release.name, merged, namespace=release.namespace, timeout=timeout_s)
    finally:
        config.close()
    return Release(release.name, release.namespace, release.kubeconfig, str(_field(result, "manifest")), merged)


def uninstall_release(cluster: Any, release: Release | str = RELEASE, namespace: str = RELEASE_NAMESPACE, timeout_s: int = 300) -> None:
    """`helm uninstall` (a release that is not there is fine); CRDs stay when crds.keep is set."""
    name = release.name if isinstance(release, Release) else release
    namespace = release.namespace if isinstance(release, Release) else namespace
    config = _config(cluster.kubeconfig, namespace)
    try:
        config.uninstall(name, ignore_not_found=True, timeout=timeout_s)
    finally:
        config.close()


def _field(result: Any, key: str) -> Any:
    if isinstance(result, Mapping):
        if key in result:
            return result[key]
        inner = result.get("release")
        if isinstance(inner, Mapping) and key in inner:
            return inner[key]
    return getattr(result, key, "")


def lease_holder(api: Any, namespace: str = RELEASE_NAMESPACE, lease: str = RELEASE) -> str:
    """The pod whose operator process holds the Lease now; empty when none does."""
    from kubernetes.client.exceptions import ApiException

    from glmops import kube

    try:
        body = kube.request(api, "GET", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{lease}")
    except ApiException as exc:
        if exc.status == 404:
            return ""
        raise
    from glmops.leader import holder_pod

    holder = str((body.get("spec") or {}).get("holderIdentity") or "")
    return holder_pod(holder) if holder else ""


def wait_for_leader(cluster: Any, namespace: str = RELEASE_NAMESPACE, lease: str = RELEASE, timeout_s: float = 180.0) -> str:
    """Wait until an operator replica holds the Lease, and return its pod name."""
    deadline = time.monotonic() + timeout_s
    with cluster.api_client() as api:
        while time.monotonic() < deadline:
            holder = lease_holder(api, namespace, lease)
            if holder:
                return holder
            time.sleep(0.5)
    raise TimeoutError(f"no operator replica took the Lease {namespace}/{lease} within {timeout_s:.0f} s")


def dumps(objects: list[dict[str, Any]]) -> str:
    """Objects as one YAML stream (for checkov and for humans)."""
    return "".join("---\n" + yaml.safe_dump(obj, sort_keys=False) for obj in objects)


__all__ = [
    "RELEASE",
    "RELEASE_NAMESPACE",
    "Release",
    "chart_dir",
    "install_release",
    "lease_holder",
    "local_values",
    "render",
    "uninstall_release",
    "upgrade_release",
    "wait_for_leader",
]
