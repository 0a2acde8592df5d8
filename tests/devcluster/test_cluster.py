"""The local control plane: healthy, with Ready GPU nodes the real scheduler places pods on."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes.utils import parse_quantity as _parse_quantity
from polling import wait_for

from glmops_dev.binaries import (
    BUILD_RECIPE,
    K8S_VERSION,
    KUBE_PROXY_RECIPE,
    BinariesNotFoundError,
    build_script,
    find_binaries,
    find_kube_proxy,
    kube_proxy_cache_dir,
    require_kube_proxy,
)
from glmops_dev.cluster import (
    ClusterAddressing,
    ClusterStartError,
    ExistingCluster,
    KubeCluster,
    LocalCluster,
)
from glmops_dev.crds import install_crds, strip_cel_rules
from glmops_dev.network import SlotPlan
from glmops_dev.nodes import (
    GPU_RESOURCE,
    LABEL_GPU_COUNT,
    LABEL_GPU_MEMORY_MIB,
    LABEL_GPU_PRODUCT,
    LABEL_HOSTNAME,
    LABEL_SIMULATED,
    NODE_PROFILES,
    NOT_READY_TAINT,
    heartbeat,
    profile,
)


def parse_quantity(quantity: str) -> Any:
    """A Kubernetes quantity ("2Ti", "500m") as a number."""
    return _parse_quantity(quantity)  # type: ignore[no-untyped-call]


def get_json(cluster: KubeCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def gpu_pod(name: str, gpus: int, min_gpu_memory_mib: int) -> dict[str, Any]:
    """A pod asking for ``gpus`` GPUs on a node whose GPUs have more than ``min_gpu_memory_mib``."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "registry.k8s.io/pause:3.9",
                    "resources": {"limits": {GPU_RESOURCE: str(gpus)}},
                }
            ],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    # Gt takes exactly one integer, as a string.
                                    {
                                        "key": LABEL_GPU_MEMORY_MIB,
                                        "operator": "Gt",
                                        "values": [str(min_gpu_memory_mib)],
                                    }
                                ]
                            }
                        ]
                    }
                }
            },
        },
    }


def create_pod(cluster: KubeCluster, namespace: str, pod: dict[str, Any]) -> None:
    cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod))


def test_api_server_is_ready_and_controllers_run(cluster: KubeCluster) -> None:
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    # The controller-manager's service-account controller created this:
    account = get_json(cluster, "serviceaccount", "default", "-n", "default")
    assert account["metadata"]["name"] == "default"
    assert cluster.server.startswith("https://")
    assert Path(cluster.kubeconfig).is_file()


@pytest.mark.parametrize("prof", NODE_PROFILES, ids=[p.name for p in NODE_PROFILES])
def test_every_profile_has_a_ready_untainted_node_with_gpu_labels_and_capacity(
    cluster: KubeCluster, prof: Any
) -> None:
    node = get_json(cluster, "node", prof.node_name)
    labels = node["metadata"]["labels"]
    assert labels[LABEL_HOSTNAME] == prof.node_name
    assert labels[LABEL_SIMULATED] == "true"
    status = node["status"]
    if prof.gpu_product is None:
        assert not {LABEL_GPU_PRODUCT, LABEL_GPU_MEMORY_MIB, LABEL_GPU_COUNT} & labels.keys()
        assert GPU_RESOURCE not in status["capacity"]
    else:
        assert labels[LABEL_GPU_PRODUCT] == prof.gpu_product
        assert labels[LABEL_GPU_MEMORY_MIB] == str(prof.gpu_memory_mib)
        assert labels[LABEL_GPU_COUNT] == str(prof.gpu_count)
        assert status["capacity"][GPU_RESOURCE] == str(prof.gpu_count)
        assert status["allocatable"][GPU_RESOURCE] == str(prof.gpu_count)
    for amounts in (status["capacity"], status["allocatable"]):
        assert parse_quantity(amounts["cpu"]) == prof.cpu_cores
        assert parse_quantity(amounts["memory"]) == prof.memory_gib * 2**30
        assert parse_quantity(amounts["pods"]) == prof.max_pods
    ready = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True"
    assert NOT_READY_TAINT not in {t["key"] for t in node["spec"].get("taints") or []}
    assert not node["spec"].get("unschedulable")


def test_profile_table_matches_the_gpus_it_names() -> None:
    assert profile("h200x8").gpu_memory_mib == 143771
    assert profile("h100x8").gpu_memory_mib == 81559
    assert profile("a100-40x8").gpu_memory_mib == 40960
    assert profile("l40sx1").gpu_memory_mib == 46068
    assert profile("l4x1").gpu_memory_mib == 23034
    assert profile("cpu").gpu_count == 0
    with pytest.raises(KeyError, match="known: h200x8"):
        profile("tpu")


def test_eight_gpu_pods_needing_80_gib_gpus_fill_the_h100_and_h200_nodes_only(
    cluster: KubeCluster, namespace: str
) -> None:
    # Two such pods exist room for: one on the H100 node and one on the H200 node. The A100-40
    # node also has 8 free GPUs, so a scheduler that ignored the affinity would use it.
    for name in ("train-a", "train-b"):
        create_pod(cluster, namespace, gpu_pod(name, gpus=8, min_gpu_memory_mib=79999))

    def bound_nodes() -> list[str] | None:
        pods = get_json(cluster, "pods", "-n", namespace)["items"]
        nodes = [p["spec"].get("nodeName") for p in pods]
        return nodes if len(nodes) == 2 and all(nodes) else None

    nodes = wait_for("both pods to be bound", bound_nodes, 30)
    assert sorted(nodes) == sorted([profile("h100x8").node_name, profile("h200x8").node_name])
    assert profile("a100-40x8").node_name not in nodes


def test_pod_needing_more_gpu_memory_than_any_node_has_stays_pending_as_unschedulable(
    cluster: KubeCluster, namespace: str
) -> None:
    create_pod(cluster, namespace, gpu_pod("too-big", gpus=2, min_gpu_memory_mib=200000))

    def scheduling_failure() -> dict[str, Any] | None:
        pod = get_json(cluster, "pod", "too-big", "-n", namespace)
        for condition in pod["status"].get("conditions") or []:
            if condition["type"] == "PodScheduled" and condition["status"] == "False":
                return {"pod": pod, "condition": condition}
        return None

    failure = wait_for("the scheduler to give up on the pod", scheduling_failure, 30)
    assert failure["pod"]["status"]["phase"] == "Pending"
    assert not failure["pod"]["spec"].get("nodeName")
    assert failure["condition"]["reason"] == "Unschedulable"
    assert (
        "node affinity" in failure["condition"]["message"]
        or "node selector" in failure["condition"]["message"]
    )

    def failed_scheduling_event() -> list[Any] | None:
        events = get_json(
            cluster, "events", "-n", namespace, "--field-selector", "involvedObject.name=too-big"
        )
        return [e for e in events["items"] if e["reason"] == "FailedScheduling"] or None

    wait_for("a FailedScheduling event", failed_scheduling_event, 30)


def test_heartbeat_refreshes_the_ready_condition(cluster: KubeCluster) -> None:
    name = profile("l4x1").node_name

    def ready_heartbeat() -> str:
        node = get_json(cluster, "node", name)
        return str(next(c for c in node["status"]["conditions"] if c["type"] == "Ready")["lastHeartbeatTime"])

    before = ready_heartbeat()
    time.sleep(1.1)  # heartbeat times have one-second resolution
    with cluster.api_client() as api_client:
        heartbeat(api_client, [name])
    assert ready_heartbeat() > before


def test_crd_with_cel_rules_is_installed_on_an_old_server_without_them(
    cluster: KubeCluster, tmp_path: Path
) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.test.glmops.io"},
        "spec": {
            "group": "test.glmops.io",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "x-kubernetes-validations": [
                                        {"rule": "self.size > 0", "message": "size"}
                                    ],
                                    "properties": {"size": {"type": "integer"}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    path = tmp_path / "widgets.yaml"
    path.write_text(json.dumps(crd))
    try:
        with cluster.api_client() as api_client:
            report = install_crds(api_client, [path])
        assert report.installed == ["widgets.test.glmops.io"]
        stored = get_json(cluster, "crd", "widgets.test.glmops.io")
        spec_schema = stored["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        if cluster.server_version() < (1, 25):
            assert report.cel_stripped == ["widgets.test.glmops.io"]
            assert "x-kubernetes-validations" not in spec_schema
        else:
            assert report.cel_stripped == []
            assert spec_schema["x-kubernetes-validations"][0]["rule"] == "self.size > 0"
    finally:
        cluster.kubectl("delete", "crd", "widgets.test.glmops.io", "--ignore-not-found", check=False)


def test_custom_resources_accept_empty_strings_and_empty_string_defaults(
    cluster: KubeCluster, namespace: str, tmp_path: Path
) -> None:
    # Guards the build: kube-apiserver 1.20 built with Go >= 1.16 takes "" for null unless its
    # OpenAPI validator is patched (kubernetes/kubernetes#99804).
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "notes.test.glmops.io"},
        "spec": {
            "group": "test.glmops.io",
            "scope": "Namespaced",
            "names": {"plural": "notes", "singular": "note", "kind": "Note"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {
                                        "text": {"type": "string"},
                                        "author": {"type": "string", "default": ""},
                                    },
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    path = tmp_path / "notes.yaml"
    path.write_text(json.dumps(crd))
    try:
        with cluster.api_client() as api_client:
            install_crds(api_client, [path])
        note = {
            "apiVersion": "test.glmops.io/v1",
            "kind": "Note",
            "metadata": {"name": "n"},
            "spec": {"text": ""},
        }
        cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(note))
        stored = get_json(cluster, "notes.test.glmops.io", "n", "-n", namespace)
        assert stored["spec"] == {"text": "", "author": ""}
    finally:
        cluster.kubectl("delete", "crd", "notes.test.glmops.io", "--ignore-not-found", check=False)


def test_strip_cel_rules_removes_every_rule_and_nothing_else() -> None:
    schema = {
        "type": "object",
        "x-kubernetes-validations": [{"rule": "true"}],
        "properties": {"a": {"type": "array", "items": {"type": "string", "x-kubernetes-validations": []}}},
    }
    stripped, found = strip_cel_rules(schema)
    assert found
    assert stripped == {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"}}}}
    assert "x-kubernetes-validations" in schema  # the input is left alone
    assert strip_cel_rules({"type": "string"}) == ({"type": "string"}, False)


def test_existing_cluster_is_used_through_its_kubeconfig(
    cluster: KubeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    existing = LocalCluster.from_env(use_existing=True)
    assert isinstance(existing, ExistingCluster)
    assert existing.server == cluster.server
    assert existing.kubectl("get", "node", profile("h200x8").node_name).returncode == 0


def test_an_unreachable_existing_cluster_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    with pytest.raises(ClusterStartError, match="not reachable"):
        LocalCluster.from_env(use_existing=True)


def test_build_script_and_package_agree_on_the_recipe_revision() -> None:
    script = build_script().read_text()
    assert f"BUILD_RECIPE={BUILD_RECIPE}\n" in script
    assert f"K8S_VERSION={K8S_VERSION}\n" in script
    assert f"KUBE_PROXY_RECIPE={KUBE_PROXY_RECIPE}\n" in script


def test_kube_proxy_has_its_own_cache_entry_that_counts_only_with_its_stamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setenv("GLMOPS_CACHE_DIR", str(tmp_path))
    entry = tmp_path / f"kube-proxy-{K8S_VERSION}"
    assert kube_proxy_cache_dir() == entry != tmp_path / f"k8s-{K8S_VERSION}"
    (entry / "bin").mkdir(parents=True)
    binary = entry / "bin" / "kube-proxy"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert find_kube_proxy() is None  # no STAMP yet: a build in progress or one that failed
    with pytest.raises(BinariesNotFoundError, match="bash scripts/build-kubernetes.sh"):
        require_kube_proxy()
    (entry / "STAMP").write_text("kubernetes=1.20.2\nrecipe=0\n")
    assert find_kube_proxy() is None  # an older recipe
    (entry / "STAMP").write_text(f"kubernetes=1.20.2\nrecipe={KUBE_PROXY_RECIPE}\n")
    assert find_kube_proxy() == binary
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "kube-proxy").write_text("#!/bin/sh\n")
    (assets / "kube-proxy").chmod(0o755)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    assert find_kube_proxy() == assets / "kube-proxy"


def test_the_api_server_of_a_pod_network_listens_on_its_link_and_hands_out_its_ranges() -> None:
    plan = SlotPlan(5)
    addressing = ClusterAddressing.for_slot(plan)
    assert (addressing.bind_address, addressing.service_cidr) == ("100.69.0.1", "100.69.64.0/18")
    assert (addressing.kubernetes_service_ip, addressing.pod_cidr) == ("100.69.64.1", "100.69.128.0/17")
    assert addressing.publishes_endpoints
    standalone = ClusterAddressing()
    assert standalone.bind_address == "127.0.0.1" and not standalone.publishes_endpoints
    assert standalone.service_cidr.startswith("100.127.")  # in the block, in its reserved slot


def test_missing_binaries_say_how_to_build_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    with pytest.raises(BinariesNotFoundError, match="bash scripts/build-kubernetes.sh"):
        find_binaries()


@pytest.mark.cluster
def test_stopping_a_local_cluster_ends_every_process_and_removes_its_state(tmp_path: Path) -> None:
    local = LocalCluster(tmp_path / "state", binaries=find_binaries())
    with local:
        assert local.running
        assert set(local.pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}
        assert local.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
        pids = list(local.pids.values())
        state_dir = local.state_dir
        assert (state_dir / "kube-apiserver.log").is_file()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not state_dir.exists()
