"""The chart as Helm's own engine renders and lints it (helm-python-sdk: Helm v4.2.3), no cluster.

What the chart promises: values and schema from one source, CRDs equal to the generated ones,
least-privilege RBAC (named verbs and resources, secrets by `get` only, namespaced when told),
and values that could make two operators act at once refused at install time.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from glmops.settings import Settings
from glmops_dev.chart import chart_dir, local_values, render
from glmops_dev.chart.__main__ import stale_files
from glmops_dev.chart.values import VALUES, Group, chart_settings

REPO = Path(__file__).resolve().parents[2]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_generated_files_are_in_step_with_their_sources() -> None:
    """values.yaml, values.schema.json, the settings map and files/crds come from glmops_dev.chart.values,
    glmops.settings and crds/; a change there without `python -m glmops_dev.chart values` fails here."""
    assert stale_files() == []


@pytest.mark.parametrize("kube_version", ["v1.20.2", "v1.33.0"])
@pytest.mark.parametrize("values", [{}, "local", {"watchNamespaces": ["team-a", "team-b"], "replicaCount": 3}])
def test_lint_is_clean(values: Any, kube_version: str) -> None:
    values = local_values() if values == "local" else values
    report = helm_python.lint(chart_dir(), values, strict=True, kube_version=kube_version)
    problems = [m for m in report["messages"] if m["severity"] >= 2 and "icon is recommended" not in m["error"]]
    assert report["errors"] == [] and problems == []


def declared_paths(group: Group = VALUES, prefix: str = "") -> list[str]:
    paths = []
    for key, child in group.children.items():
        paths.append(prefix + key)
        if isinstance(child, Group):
            paths += declared_paths(child, f"{prefix}{key}.")
    return paths


def test_every_value_has_a_comment_and_a_schema_entry() -> None:
    """Each declared key of values.yaml has its comment on the line above (settings' keys are
    commented-out examples, each with its description), and a description in the schema."""
    lines = (chart_dir() / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    commented: dict[str, bool] = {}
    for index, line in enumerate(lines):
        text = line.lstrip()
        if not text or text.startswith(("#", "- ")):
            continue
        indent = len(line) - len(text)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([*(k for _, k in stack), text.split(":")[0]])
        stack.append((indent, text.split(":")[0]))
        commented[path] = lines[index - 1].lstrip().startswith("#")
    schema = yaml.safe_load((chart_dir() / "values.schema.json").read_text())
    for path in declared_paths():
        node = schema
        for key in path.split("."):
            node = node["properties"][key]
        assert node.get("description"), f"{path} has no description in the schema"
        if path.startswith("settings."):
            assert f"# {path.split('.')[1]}:" in "\n".join(lines), f"values.yaml does not show {path}"
        else:
            assert commented.get(path), f"values.yaml: {path} has no comment above it"


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicas": 2}, "replicas"),
        ({"image": {"tag": "latest"}}, "tag"),
        ({"images": {"trainer": {"tag": "latest"}}}, "tag"),
        ({"settings": {"placementCheck": "sometimes"}}, "placementCheck"),
        ({"settings": {"trainerImage": "x:1"}}, "trainerImage"),
        ({"settings": {"placmentCheck": "advisory"}}, "placmentCheck"),
        ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
        ({"replicaCount": 0}, "replicaCount"),
    ],
)
def test_the_schema_refuses_bad_values_naming_the_key(values: dict[str, Any], complaint: str) -> None:
    chart = helm_python.Chart.load(chart_dir())
    with pytest.raises(helm_python.HelmError, match=complaint):
        chart.render(values, name="glmops", namespace="ops")


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "needs leaderElection.enabled=true"),
        ({"leaderElection": {"renewDeadlineSeconds": 20, "leaseDurationSeconds": 15}}, "must be below"),
        ({"replicaCount": 2, "podDisruptionBudget": {"minAvailable": 2}}, "must be below replicaCount"),
    ],
)
def test_values_that_could_let_two_operators_act_or_block_drains_are_refused(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm_python.HelmError, match=complaint):
        render(values)


def test_settings_reach_the_operator_as_its_own_environment_variables() -> None:
    """Each `settings` key becomes the GLMOPS_* variable Settings.from_env reads, with a value it parses."""
    values = {
        "settings": {
            "placementCheck": "advisory",
            "servingMemoryPerGpuGiB": 12,
            "vllmShmGiBPerGpu": 6,
            "gpuMemoryHeadroom": 1.2,
            "extraTrainerEnv": {"OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"},
        },
        "images": {"trainer": {"repository": "registry.example/glmops/trainer", "tag": "0.1.0-cu128"}},
    }
    container = operator_container(render(values))
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = Settings.from_env(env)
    assert settings.placement_check == "advisory"
    assert settings.serving_memory_per_gpu_gi_b == 12 and settings.vllm_shm_gi_b_per_gpu == 6
    assert settings.gpu_memory_headroom == 1.2
    assert dict(settings.extra_trainer_env) == {"OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}
    assert settings.trainer_image == "registry.example/glmops/trainer:0.1.0-cu128"
    defaults = Settings()
    assert (settings.llamacpp_image, settings.vllm_image) == (defaults.llamacpp_image, defaults.vllm_image)


def test_every_setting_of_the_operator_is_offered_or_set_by_the_chart() -> None:
    from dataclasses import fields

    offered = set(chart_settings().values()) | {"GLMOPS_TRAINER_IMAGE", "GLMOPS_LLAMACPP_IMAGE", "GLMOPS_VLLM_IMAGE",
                                                "GLMOPS_TRAINER_METRICS_PORT"}
    assert {f"GLMOPS_{f.name.upper()}" for f in fields(Settings)} == offered


def test_default_images_are_pinned_and_the_operator_runs_read_only_as_non_root() -> None:
    objects = render({})
    container = operator_container(objects)
    pod = by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]
    images = [container["image"]] + [e["value"] for e in container["env"] if e["name"].endswith("_IMAGE")]
    assert len(images) == 4 and all(":" in i and not i.endswith(":latest") for i in images)
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
    }
    assert container["livenessProbe"]["httpGet"]["port"] == "health"
    assert "--leader-elect" in container["args"]


def test_the_metrics_service_and_the_optional_service_monitor_point_at_the_metrics_port() -> None:
    objects = render({"metrics": {"port": 9090, "path": "/metrics", "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}})
    container = operator_container(objects)
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    assert {"name": "GLMOPS_METRICS_PORT", "value": "9090"} in container["env"]
    (service,) = [s for s in by_kind(objects, "Service") if s["metadata"]["name"].endswith("-metrics")]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    (monitor,) = by_kind(objects, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0] == {"port": "metrics", "path": "/metrics", "interval": "30s"}
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert by_kind(render({}), "ServiceMonitor") == []
    assert by_kind(render({"metrics": {"enabled": False}}), "Service") == []


def test_pdb_only_with_more_than_one_replica() -> None:
    assert by_kind(render({"replicaCount": 1}), "PodDisruptionBudget") == []
    (pdb,) = by_kind(render({}), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1


def test_chart_crds_are_the_generated_crds_kept_on_uninstall() -> None:
    objects = by_kind(render({}), "CustomResourceDefinition")
    generated = {
        doc["metadata"]["name"]: doc
        for path in sorted((REPO / "crds").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
    }
    assert {o["metadata"]["name"] for o in objects} == set(generated)
    for crd in objects:
        expected = copy.deepcopy(generated[crd["metadata"]["name"]])
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert crd["spec"] == expected["spec"]  # the current-Kubernetes render keeps the CEL rules
    assert "helm.sh/resource-policy" not in str(by_kind(render({"crds": {"keep": False}}), "CustomResourceDefinition"))
    assert by_kind(render({"crds": {"install": False}}), "CustomResourceDefinition") == []


# --- RBAC ---------------------------------------------------------------------------------------

OPERATOR_NEEDS = {
    # (API group, resource): verbs, each one a request in glmops.kube or one of kopf's watches
    ("glmops.io", "finetunejobs"): {"get", "list", "watch", "patch"},
    ("glmops.io", "modeldeployments"): {"get", "list", "watch", "patch"},
    ("glmops.io", "syntheticdatasets"): {"get", "list", "watch", "patch"},
    ("glmops.io", "finetunejobs/status"): {"patch"},
    ("glmops.io", "modeldeployments/status"): {"patch"},
    ("glmops.io", "syntheticdatasets/status"): {"patch"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "delete"},
    ("", "pods"): {"list", "watch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch"},
    ("apps", "replicasets"): {"list"},
    ("", "services"): {"get", "create", "patch", "delete"},
    ("", "persistentvolumeclaims"): {"get", "list", "create", "delete"},
    ("", "secrets"): {"get"},
    ("", "events"): {"create"},
}
CLUSTER_READS = {("", "nodes"): {"list"}, ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}


def granted(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    result: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                result.setdefault((group, resource), set()).update(rule["verbs"])
    return result


def test_rbac_names_every_verb_and_resource_and_never_a_wildcard() -> None:
    for values in ({}, {"watchNamespaces": ["a"]}):
        for role in by_kind(render(values), "ClusterRole") + by_kind(render(values), "Role"):
            for rule in role["rules"]:
                for key in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[key], f"{role['metadata']['name']}: wildcard in {key}"
                assert "nonResourceURLs" not in rule


def test_cluster_wide_mode_grants_exactly_what_the_operator_needs() -> None:
    objects = render({})
    roles = {r["metadata"]["name"]: granted(r) for r in by_kind(objects, "ClusterRole")}
    assert roles == {"glmops": OPERATOR_NEEDS, "glmops-cluster": CLUSTER_READS}
    assert by_kind(objects, "Role")[0]["metadata"]["name"] == "glmops-leader-election"


def test_secrets_are_never_listed_or_watched() -> None:
    for values in ({}, {"watchNamespaces": ["a"]}):
        for role in by_kind(render(values), "ClusterRole") + by_kind(render(values), "Role"):
            assert granted(role).get(("", "secrets"), {"get"}) == {"get"}


def test_namespaced_mode_gives_a_role_per_namespace_and_only_cluster_reads_cluster_wide() -> None:
    objects = render({"watchNamespaces": ["team-a", "team-b"]}, namespace="ops")
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): granted(r) for r in by_kind(objects, "Role")}
    assert roles[("team-a", "glmops")] == roles[("team-b", "glmops")] == OPERATOR_NEEDS
    assert roles[("ops", "glmops-leader-election")] == {("coordination.k8s.io", "leases"): {"get", "update"}}
    assert [granted(r) for r in by_kind(objects, "ClusterRole")] == [CLUSTER_READS]
    bindings = {(b["metadata"]["namespace"], b["roleRef"]["name"]) for b in by_kind(objects, "RoleBinding")}
    assert bindings == {("team-a", "glmops"), ("team-b", "glmops"), ("ops", "glmops-leader-election")}
    args = operator_container(objects)["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args


def test_the_lease_is_the_releases_and_the_operator_may_only_read_and_renew_it_by_name() -> None:
    objects = render({"leaderElection": {"leaseName": "ops-lock"}}, namespace="ops")
    (lease,) = by_kind(objects, "Lease")
    assert (lease["metadata"]["namespace"], lease["metadata"]["name"], lease.get("spec")) == ("ops", "ops-lock", None)
    (role,) = [r for r in by_kind(objects, "Role") if r["metadata"]["name"].endswith("leader-election")]
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["ops-lock"],
                              "verbs": ["get", "update"]}]
    assert "--lease-name=ops-lock" in operator_container(objects)["args"]
