"""A served ModelDeployment's Service and Deployment, its scale subresource, changes and deletion.

The pods are given a node selector no node matches, so these tests watch the operator and the
real controllers (Deployment, ReplicaSet, garbage collector, scheduler) without a node agent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from kubernetes import client
from modeldeployment_support import (
    GROUP,
    MDEP,
    SHA,
    VERSION,
    artifacts_of,
    condition,
    create_job,
    create_mdep,
    custom,
    mdep,
    patch_mdep,
    raw_list,
    set_job_status,
)
from polling import wait_for

NOWHERE = {"nodeSelector": {"glmops.io/test-pool": "none"}}


def _deployment(cluster: Any, namespace: str, name: str) -> dict[str, Any] | None:
    found = [d for d in raw_list(client.AppsV1Api(cluster.api_client()).list_namespaced_deployment, namespace) if d["metadata"]["name"] == name]
    return found[0] if found else None


def _served_job(cluster: Any, namespace: str, operator: Any) -> None:
    create_job(cluster, namespace, "coder", diagnose=operator.log_tail)
    set_job_status(cluster, namespace, "coder", "Succeeded", artifacts_of("coder", "pvc://models/coder"))
    client.CoreV1Api(cluster.api_client()).create_namespaced_persistent_volume_claim(
        namespace,
        {"metadata": {"name": "models"}, "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}}},
    )


def test_a_served_deployment_gets_its_service_deployment_and_status(cluster: Any, glmops_operator: Any, namespace: str) -> None:
    _served_job(cluster, namespace, glmops_operator)
    created = create_mdep(
        cluster, namespace, "coder", servedModelName="coder", source={"fineTuneJob": "coder", "quantization": "Q8_0"},
        gpusPerReplica=1, placement=NOWHERE, contextLength=8192,
    )
    deployment = wait_for("the Deployment", lambda: _deployment(cluster, namespace, "coder"), 60, glmops_operator.log_tail)
    owner = deployment["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("ModelDeployment", created["metadata"]["uid"], True)
    pod = deployment["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    assert args[args.index("--model") + 1] == "/mnt/pvc/models/coder/gguf/Q8_0/coder-Q8_0.gguf"
    assert args[args.index("--ctx-size") + 1] == str(8192 * 4)
    assert pod["volumes"][-1]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    service = client.CoreV1Api(cluster.api_client()).read_namespaced_service("coder", namespace)
    assert service.spec.selector == {"glmops.io/modeldeployment": "coder"} and service.spec.ports[0].port == 8000

    def status() -> dict[str, Any]:
        return dict(mdep(cluster, namespace, "coder").get("status") or {})

    # the pod cannot be placed anywhere: the status says so, from the pod the scheduler refused
    wait_for("the unplaceable pod to be reported", lambda: condition(mdep(cluster, namespace, "coder"), "Degraded").get("reason") == "Unschedulable", 90, glmops_operator.log_tail)
    # The pod's event can reach the operator before the Deployment controller has counted the pod.
    wait_for("the replica to be counted", lambda: status().get("replicas") == 1, 60, glmops_operator.log_tail)
    current = status()
    assert current["endpoint"] == f"http://coder.{namespace}.svc:8000/v1"
    assert current["selector"] == "glmops.io/modeldeployment=coder" and current["servedModels"] == ["coder"]
    assert current["plan"]["gpusPerReplica"] == 1 and current["plan"]["contextLength"] == 8192
    assert current["ready"] == "0/1" and current["replicas"] == 1 and current["observedGeneration"] == 1
    assert condition(mdep(cluster, namespace, "coder"), "Resolved")["status"] == "True"
    assert "node" in condition(mdep(cluster, namespace, "coder"), "Degraded")["message"]

    # kubectl scale (and HPA, KEDA) go through the scale subresource
    scale = custom(cluster).get_namespaced_custom_object_scale(GROUP, VERSION, namespace, MDEP, "coder")
    assert scale["spec"]["replicas"] == 1 and scale["status"]["selector"] == "glmops.io/modeldeployment=coder"
    custom(cluster).patch_namespaced_custom_object_scale(GROUP, VERSION, namespace, MDEP, "coder", {"spec": {"replicas": 2}})
    wait_for("two replicas", lambda: (_deployment(cluster, namespace, "coder") or {})["spec"]["replicas"] == 2, 60, glmops_operator.log_tail)
    wait_for("status to count them", lambda: status().get("replicas") == 2 and status().get("ready") == "0/2", 60, glmops_operator.log_tail)

    # a new source changes the pod template (a new version); the annotation names its artifact
    patch_mdep(cluster, namespace, "coder", {"source": {"quantization": "Q4_K_M"}})

    def template_artifact() -> str:
        annotations = (_deployment(cluster, namespace, "coder") or {})["spec"]["template"]["metadata"]["annotations"]
        return str(json.loads(annotations["glmops.io/served-artifact"])["uri"])

    wait_for("the new artifact", lambda: template_artifact().endswith("coder-Q4_K_M.gguf"), 60, glmops_operator.log_tail)
    assert json.loads((_deployment(cluster, namespace, "coder") or {})["spec"]["template"]["metadata"]["annotations"]["glmops.io/served-artifact"])["sha256"] == SHA[:-1] + "0"

    # a change that cannot work is refused and leaves the Deployment as it was
    before = _deployment(cluster, namespace, "coder") or {}
    patch_mdep(cluster, namespace, "coder", {"source": {"quantization": "Q6_K"}})
    wait_for("the refusal", lambda: condition(mdep(cluster, namespace, "coder"), "Resolved").get("reason") == "QuantizationNotProduced", 60, glmops_operator.log_tail)
    assert status()["phase"] == "Failed"  # nothing serves yet, so nothing is kept serving
    assert (_deployment(cluster, namespace, "coder") or {})["metadata"]["generation"] == before["metadata"]["generation"]


def test_a_deployment_deleted_by_hand_is_recreated_and_deleting_the_resource_removes_all(cluster: Any, glmops_operator: Any, namespace: str) -> None:
    _served_job(cluster, namespace, glmops_operator)
    create_mdep(cluster, namespace, "coder", servedModelName="coder", source={"fineTuneJob": "coder"}, placement=NOWHERE)
    first = wait_for("the Deployment", lambda: _deployment(cluster, namespace, "coder"), 60, glmops_operator.log_tail)
    client.AppsV1Api(cluster.api_client()).delete_namespaced_deployment("coder", namespace)

    def recreated() -> dict[str, Any] | None:
        found = _deployment(cluster, namespace, "coder")
        return found if found and found["metadata"]["uid"] != first["metadata"]["uid"] else None

    wait_for("the Deployment to be recreated", recreated, 60, glmops_operator.log_tail)

    custom(cluster).delete_namespaced_custom_object(GROUP, VERSION, namespace, MDEP, "coder")
    core = client.CoreV1Api(cluster.api_client())

    def all_gone() -> bool:
        services = [s for s in raw_list(core.list_namespaced_service, namespace) if s["metadata"]["name"] == "coder"]
        return _deployment(cluster, namespace, "coder") is None and not services

    wait_for("the Deployment and Service to go with the ModelDeployment", all_gone, 90, glmops_operator.log_tail)


def test_connect_prints_settings_from_a_real_status(cluster: Any, glmops_operator: Any, namespace: str) -> None:
    _served_job(cluster, namespace, glmops_operator)
    client.CoreV1Api(cluster.api_client()).create_namespaced_secret(
        namespace, {"metadata": {"name": "coder-key"}, "stringData": {"api-key": "k-123"}}
    )
    create_mdep(cluster, namespace, "coder", servedModelName="coder", source={"fineTuneJob": "coder"}, placement=NOWHERE, apiKeySecret="coder-key", contextLength=16384)
    wait_for("an endpoint", lambda: (mdep(cluster, namespace, "coder").get("status") or {}).get("endpoint"), 60, glmops_operator.log_tail)
    env = {"KUBECONFIG": str(cluster.kubeconfig), "PATH": "/usr/bin:/bin"}
    argv = [sys.executable, "-m", "glmops.cli.main", "connect", "coder", "-n", namespace]

    hidden = subprocess.run([*argv, "--client", "aider"], env=env, capture_output=True, text=True, check=True).stdout
    assert f"export OPENAI_API_BASE=http://coder.{namespace}.svc:8000/v1" in hidden
    assert "k-123" not in hidden and "<api-key>" in hidden and '"max_input_tokens": 16384' in hidden
    shown = subprocess.run([*argv, "--client", "claude-code", "--show-key"], env=env, capture_output=True, text=True, check=True).stdout
    assert "export ANTHROPIC_AUTH_TOKEN=k-123" in shown and f"export ANTHROPIC_BASE_URL=http://coder.{namespace}.svc:8000" in shown
    missing = subprocess.run([*argv[:4], "nobody", "-n", namespace, "--client", "openai"], env=env, capture_output=True, text=True, check=False)
    assert missing.returncode == 1 and "no ModelDeployment 'nobody'" in missing.stderr


def test_status_writes_are_conditional_on_the_version_read(cluster: Any, glmops_operator: Any, namespace: str) -> None:
    """A writer that computed status from an older read loses (409) instead of undoing a newer status."""
    import pytest

    from glmops import kube

    create_mdep(cluster, namespace, "cas", servedModelName="cas", source={"fineTuneJob": "none"})
    # once the operator has said what the deployment waits for, nothing writes to it any more
    wait_for(
        "the operator's status",
        lambda: (mdep(cluster, namespace, "cas").get("status") or {}).get("lastHandledConfiguration"),
        60,
        glmops_operator.log_tail,
    )
    api = cluster.api_client()
    read = mdep(cluster, namespace, "cas")["metadata"]["resourceVersion"]
    kube.patch_custom_status(api, MDEP, namespace, "cas", {"ready": "written"}, resource_version=read)
    with pytest.raises(kube.ConflictError):
        kube.patch_custom_status(api, MDEP, namespace, "cas", {"ready": "stale"}, resource_version=read)
    assert mdep(cluster, namespace, "cas")["status"]["ready"] == "written"


def test_a_hub_model_is_downloaded_by_one_job_into_a_claim(cluster: Any, glmops_operator: Any, namespace: str) -> None:
    """The claim and Job are made and the deployment waits for them (this cluster cannot bind the claim or reach the Hub)."""
    uri = "hf://unsloth/GLM-4.7-Flash-GGUF/GLM-4.7-Flash-Q4_K_M.gguf"
    created = create_mdep(cluster, namespace, "hub", servedModelName="hub", source={"uri": uri, "variant": "flash"}, placement=NOWHERE)
    wait_for(
        "the deployment to wait for its download",
        lambda: condition(mdep(cluster, namespace, "hub"), "Resolved").get("reason") == "ModelDownloading",
        60,
        glmops_operator.log_tail,
    )
    api = cluster.api_client()
    claims = raw_list(client.CoreV1Api(api).list_namespaced_persistent_volume_claim, namespace)
    jobs = raw_list(client.BatchV1Api(api).list_namespaced_job, namespace)
    assert len(claims) == 1 and len(jobs) == 1
    job = jobs[0]
    assert job["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:4] == ["hf", "download", "unsloth/GLM-4.7-Flash-GGUF", "GLM-4.7-Flash-Q4_K_M.gguf"]
    assert job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == claims[0]["metadata"]["name"]
    assert mdep(cluster, namespace, "hub")["status"]["phase"] == "Pending"
    assert _deployment(cluster, namespace, "hub") is None  # no replica before the model is there
