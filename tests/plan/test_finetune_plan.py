"""The FineTuneJob planner: placement, security, argv, trainer config contract, problems."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from glmops.api.finetunejob import FineTuneJob, FineTuneJobSpec
from glmops.conditions import Reason
from glmops.plan.finetune import (
    GPU_MEMORY_LABEL,
    ClusterFacts,
    GpuNode,
    JobMeta,
    plan_finetune,
    plan_trainer_jobs,
)
from glmops.settings import Settings
from glmops_dev.nodes import NODE_PROFILES
from glmops_trainer.config import TrainerConfig

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "data" / "plan"
META = JobMeta(name="payments-coder", namespace="ml", uid="0a1b2c3d-0000-4000-8000-000000000001", generation=1)
SETTINGS = Settings()
NODES = tuple(GpuNode(p.node_name, p.gpu_count, p.gpu_memory_mib, p.gpu_product or "") for p in NODE_PROFILES)
FACTS = ClusterFacts(
    server_minor=30,
    secrets=frozenset({"hf-token"}),
    pvcs=frozenset({"models", "datasets"}),
    gpu_nodes=NODES,
)


def _spec(**overrides: Any) -> FineTuneJobSpec:
    raw: dict[str, Any] = {
        "model": {"variant": "flash", "source": "pvc://models/glm-4.7-flash", "credentialsSecret": "hf-token"},
        "dataset": {"source": "pvc://datasets/agent/train.jsonl"},
        "output": {"destination": "pvc://models/payments-coder", "quantizations": ["Q4_K_M", "Q8_0"]},
    }
    for key, value in overrides.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return FineTuneJobSpec.model_validate(raw)


def _objects(spec: FineTuneJobSpec, facts: ClusterFacts = FACTS) -> dict[str, dict[str, Any]]:
    plan = plan_finetune(META, spec, facts, SETTINGS)
    assert plan.problems == (), plan.problems
    return {o["kind"]: o for o in plan.objects}


def _config_text(job: dict[str, Any]) -> str:
    """The trainer config as the pod sees it: the annotation the downward API mounts as job.json."""
    pod = job["spec"]["template"]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "config")
    field = volume["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"]
    key = field.removeprefix("metadata.annotations['").removesuffix("']")
    return str(pod["metadata"]["annotations"][key])


def _match(expr: dict[str, Any], labels: dict[str, str]) -> bool:
    """The scheduler's node-affinity operators that the planner uses."""
    value = labels.get(expr["key"])
    if expr["operator"] == "In":
        return value in expr["values"]
    if expr["operator"] == "Gt":
        return value is not None and int(value) > int(expr["values"][0])
    raise AssertionError(f"unexpected operator {expr['operator']}")


def _eligible_profiles(job: dict[str, Any]) -> list[str]:
    pod = job["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    gpus = int(pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    eligible = []
    for prof in NODE_PROFILES:
        labels = {"nvidia.com/gpu.product": prof.gpu_product or "", GPU_MEMORY_LABEL: str(prof.gpu_memory_mib),
                  "nvidia.com/gpu.count": str(prof.gpu_count)}
        labels = {k: v for k, v in labels.items() if prof.gpu_product}
        if prof.gpu_count >= gpus and any(all(_match(e, labels) for e in t["matchExpressions"]) for t in terms):
            eligible.append(prof.name)
    return eligible


# --- placement ---------------------------------------------------------------------------------


def test_flash_defaults_take_one_48gb_class_gpu() -> None:
    job = _objects(_spec(resources={}))["Job"]
    assert _eligible_profiles(job) == ["h200x8", "h100x8", "l40sx1"]


def test_flagship_defaults_take_eight_80gb_class_gpus() -> None:
    spec = _spec(model={"variant": "flagship", "source": "pvc://models/glm-4.7"})
    plan = plan_finetune(META, spec, FACTS, SETTINGS)
    job = {o["kind"]: o for o in plan.objects}["Job"]
    assert _eligible_profiles(job) == ["h200x8", "h100x8"]
    # Whatever node it lands on covers the plan's per-GPU need with headroom.
    assert plan.placement.min_gpu_memory_gib >= plan.memory.per_gpu_gib * SETTINGS.gpu_memory_headroom
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][:3] == ["torchrun", "--standalone", "--nproc-per-node=8"]


def test_gpu_product_and_user_selectors_are_merged() -> None:
    spec = _spec(
        resources={
            "gpuProduct": "NVIDIA-H200",
            "nodeSelector": {"pool": "training"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        }
    )
    pod = _objects(spec)["Job"]["spec"]["template"]["spec"]
    assert _eligible_profiles(_objects(spec)["Job"]) == ["h200x8"]
    assert pod["nodeSelector"] == {"pool": "training"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in pod["tolerations"]


def test_impossible_request_names_the_largest_offer() -> None:
    spec = _spec(resources={"gpusPerNode": 16})
    plan = plan_finetune(META, spec, FACTS, SETTINGS)
    assert [p.reason for p in plan.problems] == [Reason.not_enough_gpus]
    assert "no node has 16 GPU(s)" in plan.problems[0].message and "8 x 140 GiB" in plan.problems[0].message
    assert plan.objects == ()


# --- the pod is safe and shell-free ------------------------------------------------------------


def test_pod_security_and_argv() -> None:
    spec = _spec(model={"source": "pvc://models/x;rm${IFS}-rf$(id)"})
    objects = _objects(spec)
    pod = objects["Job"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["python", "-m", "glmops_trainer", "train", "--config", "/etc/glmops/job.json"]
    assert "args" not in container and all("sh" != part for part in container["command"])
    # The odd source travels as data in the config file, never as a command argument.
    assert json.loads(_config_text(objects["Job"]))["model"]["source"] == "pvc://models/x;rm${IFS}-rf$(id)"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]


def test_secrets_are_referenced_never_copied() -> None:
    objects = _objects(_spec())
    env = objects["Job"]["spec"]["template"]["spec"]["containers"][0]["env"]
    token = next(e for e in env if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "HF_TOKEN", "optional": True}
    assert "hf-token" not in _config_text(objects["Job"])


def test_pvcs_are_mounted_read_only_except_the_output() -> None:
    spec = _spec(output={"destination": "pvc://outputs/run-1"})
    facts = ClusterFacts(secrets=FACTS.secrets, pvcs=frozenset({"models", "datasets", "outputs"}), gpu_nodes=NODES)
    pod = _objects(spec, facts)["Job"]["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"datasets": True, "models": True, "outputs": False}
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/mnt/pvc/datasets", "/mnt/pvc/models", "/mnt/pvc/outputs"} <= mounts


FLAGSHIP_TWO_NODES = {"model": {"variant": "flagship", "source": "pvc://models/glm-4.7"}, "resources": {"nodes": 2}}
OLD_SERVER = ClusterFacts(server_minor=20, secrets=FACTS.secrets, pvcs=FACTS.pvcs, gpu_nodes=NODES)


def _jobs(plan_objects: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [o for o in plan_objects if o["kind"] == "Job"]


def test_multi_node_uses_an_indexed_job_and_a_headless_service() -> None:
    spec = _spec(**FLAGSHIP_TWO_NODES)
    objects = _objects(spec)
    job = objects["Job"]
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2 and job["spec"]["parallelism"] == 2
    service = objects["Service"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"]
    command = pod["containers"][0]["command"]
    assert "--nnodes=2" in command and "--nproc-per-node=8" in command and "--node-rank=$(NODE_RANK)" in command
    assert f"--master-addr={job['metadata']['name']}-0.{service['metadata']['name']}" in command
    node_rank = next(e for e in pod["containers"][0]["env"] if e["name"] == "NODE_RANK")
    assert node_rank["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def test_multi_node_on_a_server_without_indexed_jobs_runs_one_job_per_rank() -> None:
    """1.20's Job controller: Jobs <ftj>-trainer-r<k>, NODE_RANK written out, each pod named
    <job>.<service> so that rank 0 is reachable by the name in --master-addr."""
    plan = plan_finetune(META, _spec(**FLAGSHIP_TWO_NODES), OLD_SERVER, SETTINGS)
    assert plan.problems == ()
    service = next(o for o in plan.objects if o["kind"] == "Service")
    assert plan.objects[0] is service, "the Service exists before any rank looks its name up"
    jobs = _jobs(plan.objects)
    assert [j["metadata"]["name"] for j in jobs] == ["payments-coder-trainer-r0", "payments-coder-trainer-r1"]
    for rank, job in enumerate(jobs):
        assert "completionMode" not in job["spec"] and job["spec"].get("completions", 1) == 1
        pod = job["spec"]["template"]["spec"]
        assert pod["hostname"] == job["metadata"]["name"] and pod["subdomain"] == service["metadata"]["name"]
        container = pod["containers"][0]
        assert {"name": "NODE_RANK", "value": str(rank)} in container["env"]
        assert job["spec"]["template"]["metadata"]["labels"]["glmops.io/node-rank"] == str(rank)
        assert f"--master-addr=payments-coder-trainer-r0.{service['metadata']['name']}" in container["command"]
        assert container["resources"]["requests"]["nvidia.com/gpu"] == "8"
    # The Service selects every rank's pod (and no export pod), whatever the form.
    selector = service["spec"]["selector"]
    assert all(job["spec"]["template"]["metadata"]["labels"].items() >= selector.items() for job in jobs)
    assert selector["glmops.io/component"] == "trainer"


@pytest.mark.parametrize("facts", [FACTS, OLD_SERVER], ids=["indexed", "per-rank"])
def test_each_rank_gets_a_node_of_its_own_that_fits_the_plan(facts: ClusterFacts) -> None:
    plan = plan_finetune(META, _spec(**FLAGSHIP_TWO_NODES), facts, SETTINGS)
    for job in _jobs(plan.objects):
        affinity = job["spec"]["template"]["spec"]["affinity"]
        terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        memory = next(e for t in terms for e in t["matchExpressions"] if e["key"] == GPU_MEMORY_LABEL)
        assert int(memory["values"][0]) >= int(plan.placement.min_gpu_memory_mib) - 1
        (anti,) = affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert anti["topologyKey"] == "kubernetes.io/hostname"
        assert anti["labelSelector"]["matchLabels"] == {"glmops.io/finetunejob": META.name, "glmops.io/component": "trainer"}
        # The pods match their own anti-affinity: two ranks can never share a node.
        assert job["spec"]["template"]["metadata"]["labels"].items() >= anti["labelSelector"]["matchLabels"].items()


def test_single_node_jobs_have_no_anti_affinity_and_no_service() -> None:
    plan = plan_finetune(META, _spec(), OLD_SERVER, SETTINGS)
    assert [o["kind"] for o in plan.objects] == ["Job"]
    assert "podAntiAffinity" not in plan.objects[0]["spec"]["template"]["spec"]["affinity"]


def test_kueue_with_several_nodes_needs_the_indexed_form() -> None:
    """Kueue admits a Job as one workload: per-rank Jobs would be admitted one rank at a time."""
    spec = _spec(**FLAGSHIP_TWO_NODES, queueName="gpu-queue")
    plan = plan_finetune(META, spec, ClusterFacts(server_minor=23, secrets=FACTS.secrets, pvcs=FACTS.pvcs, gpu_nodes=NODES), SETTINGS)
    assert [(p.reason, p.field) for p in plan.problems] == [(Reason.multi_node_unsupported, "spec.queueName")]
    assert plan.objects == ()
    indexed = _objects(spec)
    assert indexed["Job"]["spec"]["suspend"] is True and indexed["Job"]["spec"]["completions"] == 2


def test_a_withdrawn_run_is_placed_again_with_the_same_jobs() -> None:
    spec = _spec(**FLAGSHIP_TWO_NODES)
    admitted = _jobs(plan_finetune(META, spec, OLD_SERVER, SETTINGS).objects)
    assert plan_trainer_jobs(META, spec, SETTINGS, 20) == admitted


@pytest.mark.parametrize(
    "spec",
    [
        _spec(),
        _spec(model={"variant": "flagship", "source": "pvc://models/glm-4.7"}),
        _spec(model={"variant": "flagship", "source": "hf://zai-org/GLM-4.7"}, resources={"nodes": 2}),
        _spec(model={"variant": "flagship", "source": "hf://zai-org/GLM-4.7"}, resources={"nodes": 2}, queueName="gpus"),
        _spec(resources={"gpuProduct": "NVIDIA-H200", "tolerations": [{"operator": "Exists"}]}),
    ],
    ids=["flash", "flagship", "flagship-multinode", "flagship-multinode-kueue", "tolerations"],
)
@pytest.mark.parametrize("server_minor", [30, 23], ids=["indexed-form", "per-rank-form"])
def test_every_manifest_validates_against_a_current_kubernetes_schema(spec: FineTuneJobSpec, server_minor: int) -> None:
    """Both multi-node forms are valid current objects (the per-rank form also runs on 1.20 itself)."""
    if spec.queue_name and server_minor < 24:
        spec = spec.model_copy(update={"queue_name": None})  # refused there (test_kueue_with_several_nodes_needs_the_indexed_form)
    facts = ClusterFacts(server_minor=server_minor, secrets=FACTS.secrets, pvcs=FACTS.pvcs, gpu_nodes=NODES)
    plan = plan_finetune(META, spec, facts, SETTINGS)
    assert plan.problems == ()
    for obj in plan.objects:
        obj = {**obj, "metadata": {**obj["metadata"], "ownerReferences": []}}
        kubernetes_validate.validate(obj, "1.37.0", strict=True)


def test_rendered_trainer_config_is_what_the_trainer_reads() -> None:
    """Contract: the operator's rendered config validates against the trainer's own model."""
    for spec in (_spec(), _spec(model={"variant": "flagship", "source": "hf://zai-org/GLM-4.7@main"}, training={"maxSteps": 10})):
        plan = plan_finetune(META, spec, FACTS, SETTINGS)
        config = TrainerConfig.model_validate(plan.trainer_config)
        assert config.model.source == spec.model.source
        assert config.training.lora.rank == plan.training.lora_rank
        assert config.job.uid == META.uid
        on_disk = json.loads(_config_text({o["kind"]: o for o in plan.objects}["Job"]))
        assert TrainerConfig.model_validate(on_disk) == config


# --- golden files: input spec -> expected objects ---------------------------------------------


class _ReadableDumper(yaml.SafeDumper):
    """YAML as a person writes it: no anchors, multi-line strings (the trainer config) as blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_ReadableDumper.add_representer(
    str,
    lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|") if "\n" in s else d.represent_str(s),
)


@pytest.mark.parametrize("case", sorted(p.stem.removesuffix(".input") for p in GOLDEN.glob("*.input.yaml")))
def test_golden(case: str) -> None:
    doc = yaml.safe_load((GOLDEN / f"{case}.input.yaml").read_text())
    ftj = FineTuneJob.model_validate(doc)
    meta = JobMeta(ftj.metadata["name"], ftj.metadata["namespace"], ftj.metadata["uid"], 1)
    plan = plan_finetune(meta, ftj.spec, FACTS, SETTINGS)
    rendered = yaml.dump_all(plan.objects, Dumper=_ReadableDumper, sort_keys=False)
    expected_file = GOLDEN / f"{case}.expected.yaml"
    if os.environ.get("GLMOPS_UPDATE_GOLDEN"):
        expected_file.write_text(rendered)
    assert rendered == expected_file.read_text(), "set GLMOPS_UPDATE_GOLDEN=1 to regenerate after a deliberate change"


# --- item-by-item behaviour: resources, placement, queues, pod template --------------------------


def test_each_multi_node_pod_asks_for_its_own_gpus_cpu_and_memory() -> None:
    settings = Settings(cpu_per_gpu="500m", memory_per_gpu="1.5Gi")
    spec = _spec(model={"variant": "flagship", "source": "pvc://models/glm-4.7"}, resources={"nodes": 2, "gpusPerNode": 8})
    plan = plan_finetune(META, spec, FACTS, settings)
    job = {o["kind"]: o for o in plan.objects}["Job"]
    resources = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    # Per pod (= per node), not per job: 8 GPUs, 8 x 500m CPU, 8 x 1.5Gi memory.
    assert resources["requests"] == {"cpu": "4", "memory": "12Gi", "nvidia.com/gpu": "8"}
    assert resources["limits"] == {"memory": "12Gi", "nvidia.com/gpu": "8"}
    assert job["spec"]["parallelism"] == job["spec"]["completions"] == 2


@pytest.mark.parametrize("retries", [0, 1, 5])
def test_backoff_limit_is_max_retries(retries: int) -> None:
    job = _objects(_spec(failurePolicy={"maxRetries": retries}))["Job"]
    assert job["spec"]["backoffLimit"] == retries


def test_gpu_memory_affinity_matches_a_node_with_exactly_the_minimum() -> None:
    job = _objects(_spec(resources={"gpuMemoryGiB": 48}))["Job"]
    terms = job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    expr = next(e for e in terms["nodeSelectorTerms"][0]["matchExpressions"] if e["key"] == GPU_MEMORY_LABEL)
    assert _match(expr, {GPU_MEMORY_LABEL: str(48 * 1024)})  # exactly the minimum: placed
    assert not _match(expr, {GPU_MEMORY_LABEL: str(48 * 1024 - 1)})  # one MiB less: not


def test_multi_node_needs_that_many_distinct_fitting_nodes() -> None:
    spec = _spec(model={"variant": "flagship", "source": "pvc://models/glm-4.7"}, resources={"nodes": 3, "gpuProduct": "NVIDIA-H200"})
    one_h200 = ClusterFacts(secrets=FACTS.secrets, pvcs=FACTS.pvcs, gpu_nodes=(GpuNode("a", 8, 143771, "NVIDIA-H200"),))
    plan = plan_finetune(META, spec, one_h200, SETTINGS)
    assert [p.reason for p in plan.problems] == [Reason.not_enough_gpus]
    assert "only 1 of the 3 nodes needed" in plan.problems[0].message
    three = tuple(GpuNode(n, 8, 143771, "NVIDIA-H200") for n in "abc")
    assert plan_finetune(META, spec, ClusterFacts(secrets=FACTS.secrets, pvcs=FACTS.pvcs, gpu_nodes=three), SETTINGS).problems == ()


def test_advisory_placement_creates_the_job_and_reports_the_doubt() -> None:
    spec = _spec(resources={"gpuProduct": "NVIDIA-B200"})
    strict = plan_finetune(META, spec, FACTS, SETTINGS)
    assert [p.reason for p in strict.problems] == [Reason.not_enough_gpus] and strict.objects == ()
    advisory = plan_finetune(META, spec, FACTS, Settings(placement_check="advisory"))
    assert advisory.problems == () and [o["kind"] for o in advisory.objects] == ["Job"]
    assert [p.reason for p in advisory.advisories] == [Reason.not_enough_gpus]
    # Problems of the spec itself are never advisory.
    too_small = plan_finetune(META, _spec(resources={"gpuMemoryGiB": 16}), FACTS, Settings(placement_check="advisory"))
    assert [p.reason for p in too_small.problems] == [Reason.gpu_memory_too_small]


def test_a_kueue_queue_name_labels_the_job_and_creates_it_suspended() -> None:
    job = _objects(_spec(queueName="ml-team"))["Job"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "ml-team" and job["spec"]["suspend"] is True
    assert "suspend" not in _objects(_spec())["Job"]["spec"]
    old = ClusterFacts(server_minor=20, secrets=FACTS.secrets, pvcs=FACTS.pvcs, gpu_nodes=NODES)
    plan = plan_finetune(META, _spec(queueName="ml-team"), old, SETTINGS)
    assert [(p.reason, p.field) for p in plan.problems] == [(Reason.suspend_unsupported, "spec.queueName")]


def test_the_pod_template_hook_reaches_the_pods_and_never_overrides_ours() -> None:
    spec = _spec(podTemplate={
        "priorityClassName": "training-low",
        "serviceAccountName": "ml-runner",
        "imagePullSecrets": ["registry-creds"],
        "labels": {"cost-centre": "ml-42"},
        "annotations": {"sidecar.istio.io/inject": "false"},
    })
    job = _objects(spec)["Job"]
    template = job["spec"]["template"]
    pod = template["spec"]
    assert pod["priorityClassName"] == "training-low" and pod["serviceAccountName"] == "ml-runner"
    assert pod["imagePullSecrets"] == [{"name": "registry-creds"}] and pod["automountServiceAccountToken"] is False
    assert template["metadata"]["labels"]["cost-centre"] == "ml-42"
    assert template["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
    assert "glmops.io/trainer-config" in template["metadata"]["annotations"]
    kubernetes_validate.validate({**job, "metadata": {**job["metadata"], "ownerReferences": []}}, "1.37.0", strict=True)
    reserved = plan_finetune(META, _spec(podTemplate={"labels": {"glmops.io/finetunejob": "other"}}), FACTS, SETTINGS)
    assert [p.reason for p in reserved.problems] == [Reason.label_reserved]
    assert "spec.podTemplate.labels['glmops.io/finetunejob']" in str(reserved.problems[0])


def test_map_keys_the_crd_checks_only_with_cel_are_checked_by_the_planner() -> None:
    plan = plan_finetune(META, _spec(resources={"nodeSelector": {"bad key!": "x"}}), FACTS, SETTINGS)
    assert [p.field for p in plan.problems] == ["spec.resources.nodeSelector['bad key!']"]


def test_missing_pvcs_and_secrets_wait_while_other_problems_fail() -> None:
    bare = ClusterFacts(gpu_nodes=NODES)
    waiting = plan_finetune(META, _spec(), bare, SETTINGS)
    assert {p.reason for p in waiting.problems} == {Reason.pvc_not_found, Reason.secret_not_found} and waiting.waiting
    mixed = plan_finetune(META, _spec(resources={"gpuMemoryGiB": 16}), bare, SETTINGS)
    assert not mixed.waiting  # a spec error is never waited out


def test_the_trainer_serves_progress_on_the_pod_ip_at_the_planned_port() -> None:
    settings = Settings(trainer_metrics_port=19464)
    plan = plan_finetune(META, _spec(), FACTS, settings)
    job = {o["kind"]: o for o in plan.objects}["Job"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": 19464} in container["ports"]
    assert {"name": "GLMOPS_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in container["env"]
    assert TrainerConfig.model_validate(plan.trainer_config).runtime.metrics_port == 19464
