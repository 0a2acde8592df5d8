"""The chart installed with Helm's engine on the local control plane, the operator running from it.

One release, start to end: `helm install` (namespaced: it serves only the test's namespace), the
operator pod started by the node agent with its ServiceAccount's token, what that token may and
may not do, a tiny Flash FineTuneJob trained, exported to GGUF and served by a llama.cpp
ModelDeployment through that operator, Argo CD's health checks over the status objects it wrote,
no change to any spec, `helm upgrade` (a new pod takes the Lease over), and `helm uninstall`
leaving no operator object behind (the CRDs and the user's objects stay).

Runs before tests/operator in a session (directory order), whose operator process would act on
every namespace too.
"""

from __future__ import annotations

import json
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from argocd import health, keep_captured
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from polling import wait_for, wait_until_served
from watching import StatusRecorder

from glmops import kube
from glmops_dev.chart import (
    RELEASE,
    RELEASE_NAMESPACE,
    crd_names,
    install_release,
    lease_holder,
    uninstall_release,
    upgrade_release,
    wait_for_leader,
)

pytestmark = [pytest.mark.slow, pytest.mark.llamacpp]
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}


def restricted_violations(pod_spec: dict[str, Any]) -> list[str]:
    """tests/security/pod_security.py's check of the restricted profile."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "security" / "pod_security.py"
    spec = importlib.util.spec_from_file_location("pod_security", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    problems: list[str] = module.restricted_violations(pod_spec)
    return problems
GROUP, VERSION = "glmops.io", "v1alpha1"
INSTANCE = f"app.kubernetes.io/instance={RELEASE}"


def token_client(cluster: Any, namespace: str, service_account: str) -> client.ApiClient:
    """An API client that authenticates as a ServiceAccount (a token from the TokenRequest API)."""
    with cluster.api_client() as admin:
        issued = kube.request(admin, "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
                              body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                    "spec": {"expirationSeconds": 600}})
    configuration = client.Configuration()
    config.load_kube_config(str(cluster.kubeconfig), client_configuration=configuration)
    configuration.refresh_api_key_hook = None  # the kubeconfig's (admin) token would come back before each request
    configuration.api_key = {"authorization": f"Bearer {issued['status']['token']}"}
    return client.ApiClient(configuration)


def answer(api: client.ApiClient, method: str, path: str, body: Any = None) -> int:
    """The HTTP status of one request (2xx as 200)."""
    try:
        kube.request_raw(api, method, path, body=body)
        return 200
    except ApiException as exc:
        return int(exc.status)


def check_rbac(cluster: Any, namespace: str, other: str) -> None:
    api = token_client(cluster, RELEASE_NAMESPACE, RELEASE)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "rbac-probe"},
           "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9"}]}}}}
    allowed = {
        "list its FineTuneJobs": ("GET", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/finetunejobs"),
        "list its pods": ("GET", f"/api/v1/namespaces/{namespace}/pods"),
        "create a Job (dry run)": ("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs?dryRun=All"),
        "list nodes": ("GET", "/api/v1/nodes"),
        "read its Lease": ("GET", f"/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NAMESPACE}/leases/{RELEASE}"),
        "list CRDs": ("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"),
    }
    refused = {
        "list Secrets": ("GET", f"/api/v1/namespaces/{namespace}/secrets"),
        "watch Secrets": ("GET", f"/api/v1/namespaces/{namespace}/secrets?watch=1&timeoutSeconds=1"),
        "read a Secret elsewhere": ("GET", f"/api/v1/namespaces/{other}/secrets/anything"),
        "list FineTuneJobs elsewhere": ("GET", f"/apis/{GROUP}/{VERSION}/namespaces/{other}/finetunejobs"),
        "list FineTuneJobs cluster-wide": ("GET", f"/apis/{GROUP}/{VERSION}/finetunejobs"),
        "create a Job elsewhere": ("POST", f"/apis/batch/v1/namespaces/{other}/jobs?dryRun=All"),
        "read pod logs": ("GET", f"/api/v1/namespaces/{namespace}/pods/anything/log"),
        "delete a pod": ("DELETE", f"/api/v1/namespaces/{namespace}/pods/anything"),
        "list ConfigMaps": ("GET", f"/api/v1/namespaces/{namespace}/configmaps"),
        "list namespaces": ("GET", "/api/v1/namespaces"),
        "delete a Deployment": ("DELETE", f"/apis/apps/v1/namespaces/{namespace}/deployments/anything"),
        "create a Lease": ("POST", f"/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NAMESPACE}/leases?dryRun=All"),
        "read another Lease": ("GET", f"/apis/coordination.k8s.io/v1/namespaces/{RELEASE_NAMESPACE}/leases/other"),
        "create a ClusterRole": ("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles?dryRun=All"),
        "change a CRD": ("DELETE", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/finetunejobs.{GROUP}?dryRun=All"),
    }
    bodies = {"create a Job (dry run)": job, "create a Job elsewhere": job,
              "create a Lease": {"metadata": {"name": "x"}, "spec": {}},
              "create a ClusterRole": {"metadata": {"name": "x"}, "rules": []}}
    with api:
        got_allowed = {what: answer(api, m, p, bodies.get(what)) for what, (m, p) in allowed.items()}
        got_refused = {what: answer(api, m, p, bodies.get(what)) for what, (m, p) in refused.items()}
    assert got_allowed == dict.fromkeys(allowed, 200), got_allowed
    assert got_refused == dict.fromkeys(refused, 403), got_refused
    # A Secret that does not exist is a 404, not a 403: the existence check works, by name only.
    with token_client(cluster, RELEASE_NAMESPACE, RELEASE) as api:
        assert answer(api, "GET", f"/api/v1/namespaces/{namespace}/secrets/no-such-secret") == 404


def release_objects(cluster: Any, namespace: str) -> list[str]:
    """Every object of the release that still exists, as 'kind/name' (namespaced ones where they live)."""
    found = []
    for ns, kinds in ((RELEASE_NAMESPACE, "deployment,replicaset,pod,service,serviceaccount,role,rolebinding,lease,poddisruptionbudget,networkpolicy"),
                      (namespace, "role,rolebinding"),
                      (None, "clusterrole,clusterrolebinding")):
        args = ["get", kinds, "-l", INSTANCE, "-o", "name"] + (["-n", ns] if ns else [])
        found += cluster.kubectl(*args).stdout.split()
    # the pods of the operator carry only the selector labels
    found += cluster.kubectl("get", "pods", "-n", RELEASE_NAMESPACE, "-o", "name").stdout.split()
    return sorted(set(found))


def test_release_runs_the_operator_that_trains_exports_and_serves_then_upgrades_and_uninstalls_cleanly(
    cluster: Any, node_agent: Any, namespace: str, flash_model: Path, workdir: Path, dataset: Path
) -> None:
    k = client.CustomObjectsApi(cluster.api_client())
    other = f"{namespace[:50]}-other"
    kube.request(cluster.api_client(), "POST", "/api/v1/namespaces", body={"metadata": {"name": other}})
    # Both namespaces as a cluster enforcing Pod Security "restricted" labels them. 1.20 has no
    # PodSecurity admission to enforce the label: the pods are checked against its rules below.
    if not cluster.kubectl("get", "namespace", RELEASE_NAMESPACE, "-o", "name", check=False).stdout.strip():
        cluster.kubectl("create", "namespace", RELEASE_NAMESPACE)
    for ns in (namespace, RELEASE_NAMESPACE):
        cluster.kubectl("label", "namespace", ns, "--overwrite", *(f"{k}={v}" for k, v in RESTRICTED.items()))
    release = install_release(cluster, {"watchNamespaces": [namespace]})
    watches = ExitStack()
    try:
        # Every status the operator writes, from watches: a short Pending is easily missed by polling.
        ftj_watch = watches.enter_context(StatusRecorder(cluster.api_client(), namespace, "finetunejobs"))
        mdep_watch = watches.enter_context(StatusRecorder(cluster.api_client(), namespace, "modeldeployments"))
        leader = wait_for_leader(cluster)

        def operator_log() -> str:
            return str(cluster.kubectl("logs", "-n", RELEASE_NAMESPACE, leader, "--tail", "40", check=False).stdout)

        assert leader.startswith(f"{RELEASE}-"), leader
        check_rbac(cluster, namespace, other)

        # --- a FineTuneJob through the released operator, its statuses captured as it goes --------
        out = workdir / "out"
        job = {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": "chart-e2e"},
            "spec": {
                "model": {"variant": "flash", "source": f"file://{flash_model}"},
                "dataset": {"source": f"file://{dataset}", "validationSplit": 0},
                "training": {"maxSteps": 3, "learningRate": 5e-3, "sequenceLength": 512, "checkpointEvery": 3, "lora": {"rank": 4}},
                "output": {"destination": f"file://{out}", "formats": ["adapter", "gguf"], "quantizations": ["Q8_0"]},
            },
        }
        # What the apiserver stored (with the CRD's defaults): GitOps tools compare against this.
        stored = json.loads(cluster.kubectl("apply", "-n", namespace, "-o", "json", "-f", "-", input=json.dumps(job)).stdout)

        def ftj_phase() -> str:
            body = k.get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", "chart-e2e")
            return str((body.get("status") or {}).get("phase") or "")

        def diagnose() -> str:
            pods = cluster.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
            status = k.get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", "chart-e2e").get("status")
            return f"{pods}\n{json.dumps(status, indent=1)}\n{operator_log()}"

        wait_for("the FineTuneJob to succeed", lambda: ftj_phase() in ("Succeeded", "Failed"), 900, diagnose)
        assert ftj_phase() == "Succeeded", diagnose()
        final = k.get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", "chart-e2e")
        phases, seen = ftj_watch.of("chart-e2e")
        assert phases == ["", "Pending", "Training", "Exporting", "Succeeded"], (phases, ftj_watch.errors)
        # The operator never writes spec: what GitOps applied is what stays (no drift, no new generation).
        assert final["spec"] == stored["spec"] and final["metadata"]["generation"] == stored["metadata"]["generation"] == 1
        jobs = cluster.kubectl("get", "jobs", "-n", namespace, "-l", "glmops.io/finetunejob=chart-e2e", "-o", "name").stdout.split()
        assert sorted(jobs) == ["job.batch/chart-e2e-export", "job.batch/chart-e2e-trainer"]

        # --- served through a ModelDeployment by the same operator ----------------------------------
        mdep = {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": "chart-e2e"},
            "spec": {"source": {"fineTuneJob": "chart-e2e", "artifact": "gguf", "quantization": "Q8_0"}, "runtime": "llamacpp",
                     "replicas": 1, "servedModelName": "chart-e2e", "gpusPerReplica": 0, "contextLength": 512, "parallelSlots": 1},
        }
        mdep_stored = json.loads(cluster.kubectl("apply", "-n", namespace, "-o", "json", "-f", "-", input=json.dumps(mdep)).stdout)

        def mdep_phase() -> str:
            body = k.get_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "chart-e2e")
            return str((body.get("status") or {}).get("phase") or "")

        wait_for("the ModelDeployment to be Ready", lambda: mdep_phase() == "Ready", 600, diagnose)
        wait_for("the watch to see it Ready", lambda: "Ready" in mdep_watch.of("chart-e2e")[1], 30, lambda: str(mdep_watch.errors))
        served = mdep_watch.of("chart-e2e")[1]
        endpoint = served["Ready"]["status"]["endpoint"]
        root = endpoint.removesuffix("/v1")
        wait_until_served(endpoint, 60, diagnose)
        with urllib.request.urlopen(f"{root}/v1/models", timeout=10) as response:
            assert "chart-e2e" in response.read().decode()
        mdep_final = k.get_namespaced_custom_object(GROUP, VERSION, namespace, "modeldeployments", "chart-e2e")
        assert mdep_final["spec"] == mdep_stored["spec"] and mdep_final["metadata"]["generation"] == 1

        # Every pod made here (trainer, export, llama.cpp; the operator's own) passes "restricted".
        for ns in (namespace, RELEASE_NAMESPACE):
            pods = json.loads(cluster.kubectl("get", "pods", "-n", ns, "-o", "json").stdout)["items"]
            assert pods
            assert {p["metadata"]["name"]: restricted_violations(p["spec"]) for p in pods} == {p["metadata"]["name"]: [] for p in pods}

        # A job the operator refuses (16 GPUs on one node exist nowhere): Failed, Degraded to Argo CD.
        bad = {**job, "metadata": {"name": "chart-refused"},
               "spec": {**job["spec"], "resources": {"gpusPerNode": 16}, "output": {"destination": f"file://{out}-refused"}}}
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(bad))

        def failed(name: str) -> dict[str, Any] | None:
            body: dict[str, Any] = k.get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", name)
            return body if (body.get("status") or {}).get("phase") == "Failed" else None

        refused = wait_for("the refusal", lambda: failed("chart-refused"), 120, diagnose)

        # --- Argo CD's health over the objects the operator wrote ------------------------------------
        assert health(seen["Succeeded"])[0] == "Healthy"
        for phase in set(seen) - {"Succeeded"}:
            assert health(seen[phase])[0] == "Progressing", (phase, health(seen[phase]))
        status, message = health(refused)
        assert status == "Degraded" and "GPU" in message, message
        assert health(served["Ready"]) == ("Healthy", f"1 replica(s) ready at {endpoint}")
        for phase in set(served) - {"Ready"}:
            assert health(served[phase])[0] == "Progressing", (phase, health(served[phase]))
        # With GLMOPS_CAPTURE_ARGOCD_STATUS=1: the objects tests/chart/test_argocd_health.py checks without a cluster.
        paths = {str(workdir): "/data/chart-e2e", str(dataset.parent): "/data/datasets"}
        keep_captured("finetunejobs", [*seen.values(), refused], paths)
        keep_captured("modeldeployments", list(served.values()), paths)

        # --- helm upgrade: a new pod, the Lease handed over, the operator still at work ---------------
        upgrade_release(cluster, release, {"podAnnotations": {"example.com/revision": "2"}})

        def new_leader() -> str | None:
            with cluster.api_client() as api:
                holder = lease_holder(api)
            return holder if holder and holder != leader else None

        leader = wait_for("the upgraded pod to lead", new_leader, 180, diagnose)
        second = {**bad, "metadata": {"name": "chart-refused-2"}}
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(second))
        wait_for("the upgraded operator to act", lambda: failed("chart-refused-2"), 120, diagnose)
    finally:
        watches.close()
        uninstall_release(cluster, release)
        kube.request(cluster.api_client(), "DELETE", f"/api/v1/namespaces/{other}")

    # --- helm uninstall: nothing of the operator stays; the CRDs and the user's objects do -------
    wait_for("every object of the release to go", lambda: release_objects(cluster, namespace) == [], 120,
             lambda: str(release_objects(cluster, namespace)))
    assert crd_names() == ["finetunejobs.glmops.io", "modeldeployments.glmops.io", "syntheticdatasets.glmops.io"]
    for crd in crd_names():
        assert cluster.kubectl("get", "crd", crd, "-o", "name").stdout.strip()
    assert k.get_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", "chart-e2e")["status"]["phase"] == "Succeeded"
