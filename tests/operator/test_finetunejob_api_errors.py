"""When the operator cannot read the cluster, the job says why and waits, and goes on once it can.

The operator runs here as a service account whose role lacks `list` on nodes, a real
deployment mistake; the apiserver answers 403 to the node list that placement needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from operator_support import OperatorProcess
from polling import wait_for

GROUP, VERSION, PLURAL = "glmops.io", "v1alpha1", "finetunejobs"

# What the operator needs, except the nodes it reads for placement.
RULES_WITHOUT_NODES = [
    {"apiGroups": ["glmops.io"], "resources": ["*"], "verbs": ["*"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["*"]},
    {"apiGroups": [""], "resources": ["pods", "pods/log", "services", "configmaps", "events"], "verbs": ["*"]},
    {"apiGroups": [""], "resources": ["secrets", "persistentvolumeclaims", "namespaces"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["*"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["get", "list", "watch"]},
]


def _service_account_kubeconfig(cluster, api: client.ApiClient, namespace: str, role: str, path: Path) -> Path:
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "glmops"}})
    rbac.create_cluster_role({"metadata": {"name": role}, "rules": RULES_WITHOUT_NODES})
    rbac.create_cluster_role_binding({
        "metadata": {"name": role},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": "glmops", "namespace": namespace}],
    })
    token = core.create_namespaced_service_account_token("glmops", namespace, {"spec": {"expirationSeconds": 3600}})
    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    config["users"] = [{"name": "glmops", "user": {"token": token.status.token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "glmops"
    path.write_text(yaml.safe_dump(config))
    return path


def test_an_operator_that_may_not_list_nodes_says_so_and_goes_on_once_it_may(cluster, glmops_operator, namespace: str, tmp_path: Path) -> None:
    api = cluster.api_client()
    custom, rbac = client.CustomObjectsApi(api), client.RbacAuthorizationV1Api(api)
    role = f"glmops-{namespace}"[:63]
    kubeconfig = _service_account_kubeconfig(cluster, api, namespace, role, tmp_path / "kubeconfig")
    glmops_operator.stop()  # the shared operator may list nodes; this one may not
    restricted = OperatorProcess(cluster, tmp_path, env={"KUBECONFIG": str(kubeconfig)})
    restricted.start()
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": "no-node-rights"},
            "spec": {
                "model": {"variant": "flash", "source": "file:///models/glm-4.7-flash"},
                "dataset": {"source": "file:///data/agent.jsonl"},
                "resources": {"nodeSelector": {"glmops.io/test-pool": "none"}},
                "output": {"destination": "file:///out/no-node-rights", "formats": ["adapter"]},
            },
        })

        def status() -> dict[str, Any]:
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "no-node-rights")
            return dict(obj.get("status") or {})

        def waiting() -> dict[str, Any] | None:
            return next((c for c in status().get("conditions", []) if c["reason"] == "ApiError"), None)

        condition = wait_for("the API error in status", waiting, 60, restricted.log_tail)
        assert status()["phase"] == "Validating" and condition["status"] == "Unknown"
        assert "403" in condition["message"] and "nodes" in condition["message"] and "RBAC" in condition["message"]
        assert "trainerJob" not in status()

        # Granting the missing right is enough: the next retry places the job.
        rbac.patch_cluster_role(role, {"rules": [*RULES_WITHOUT_NODES, {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]})
        wait_for("the job to go on once nodes may be listed", lambda: status().get("trainerJob"), 90, restricted.log_tail)
        validated = next(c for c in status()["conditions"] if c["type"] == "Validated")
        assert status()["phase"] == "Pending" and (validated["status"], validated["reason"]) == ("True", "SpecValid")
    finally:
        restricted.stop()
        glmops_operator.start()
        rbac.delete_cluster_role_binding(role)
        rbac.delete_cluster_role(role)
