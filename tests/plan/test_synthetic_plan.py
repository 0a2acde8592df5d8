"""The SyntheticDataset planner: the teacher resolved, what waits and what fails, the generator Job."""

from __future__ import annotations

import copy
import json
from typing import Any

import kubernetes_validate
import pytest

from glmops.api.syntheticdataset import SyntheticDatasetSpec
from glmops.conditions import Reason
from glmops.contract.synthetic import GeneratorConfig
from glmops.plan.synthetic import (
    CONFIG_ANNOTATION,
    DEADLINE_GRACE_SECONDS,
    DatasetMeta,
    SyntheticFacts,
    plan_synthetic,
    spec_hash,
)
from glmops.settings import Settings

META = DatasetMeta(name="payments-synth", namespace="ml", uid="0a1b2c3d-0000-4000-8000-000000000009")
NOW = 1_800_000_000.0
TEACHER = {
    "metadata": {"name": "glm47-teacher"},
    "spec": {"servedModelName": "zai-org/GLM-4.7", "apiKeySecret": "teacher-key", "source": {"uri": "pvc://m/x"}},
    "status": {"phase": "Ready", "readyReplicas": 2, "ready": "2/2", "endpoint": "http://glm47-teacher.ml.svc:8000/v1"},
}
FACTS = SyntheticFacts(now_unix=NOW, secrets=frozenset({"teacher-key", "ext-key"}), pvcs=frozenset({"datasets"}), teacher_deployment=TEACHER)


def _spec(**overrides: Any) -> SyntheticDatasetSpec:
    raw: dict[str, Any] = {
        "teacher": {"modelDeployment": "glm47-teacher"},
        "prompts": "pvc://datasets/payments/prompts.jsonl",
        "output": "pvc://datasets/payments/synthetic.jsonl",
        "samplesPerPrompt": 2,
    }
    raw.update(copy.deepcopy(overrides))
    return SyntheticDatasetSpec.model_validate(raw)


def _facts(**changes: Any) -> SyntheticFacts:
    return SyntheticFacts(**{**FACTS.__dict__, **changes})


def test_a_ready_model_deployment_gives_endpoint_model_and_key() -> None:
    plan = plan_synthetic(META, _spec(), FACTS, Settings())
    assert plan.problems == () and plan.teacher is not None
    assert (plan.teacher.url, plan.teacher.model, plan.teacher.api_key.name if plan.teacher.api_key else None) == (
        "http://glm47-teacher.ml.svc:8000/v1", "zai-org/GLM-4.7", "teacher-key",
    )
    config = GeneratorConfig.model_validate(plan.config)  # the contract: the generator reads what is rendered
    assert config.teacher.base_url == "http://glm47-teacher.ml.svc:8000/v1" and config.teacher.model == "zai-org/GLM-4.7"
    assert config.deadline_unix == NOW + 86400 and config.samples_per_prompt == 2
    # The spec's own model and key win over the deployment's.
    own = plan_synthetic(META, _spec(teacher={"modelDeployment": "glm47-teacher", "model": "lora-a", "apiKeySecret": {"name": "ext-key", "key": "token"}}), FACTS, Settings())
    assert own.teacher is not None and own.teacher.model == "lora-a" and own.teacher.api_key is not None
    assert (own.teacher.api_key.name, own.teacher.api_key.key) == ("ext-key", "token")


@pytest.mark.parametrize(
    ("deployment", "reason", "words"),
    [
        (None, Reason.teacher_not_found, "ModelDeployment 'glm47-teacher' does not exist in namespace ml"),
        ({**TEACHER, "status": {"phase": "Progressing", "ready": "0/2", "readyReplicas": 0}}, Reason.teacher_not_ready, "is Progressing (0/2 replicas ready)"),
        ({**TEACHER, "status": {}}, Reason.teacher_not_ready, "is Pending"),
    ],
)
def test_a_teacher_deployment_that_is_not_ready_makes_the_dataset_wait(deployment: Any, reason: str, words: str) -> None:
    plan = plan_synthetic(META, _spec(), _facts(teacher_deployment=deployment), Settings())
    assert [p.reason for p in plan.problems] == [reason] and plan.waiting and plan.job is None
    assert words in str(plan.problems[0]) and str(plan.problems[0]).startswith("spec.teacher.modelDeployment: ")


def test_a_degraded_deployment_that_still_serves_can_teach() -> None:
    degraded = {**TEACHER, "status": {**TEACHER["status"], "phase": "Degraded"}}
    assert plan_synthetic(META, _spec(), _facts(teacher_deployment=degraded), Settings()).problems == ()


@pytest.mark.parametrize(
    ("spec", "facts", "reason", "field", "waits"),
    [
        (_spec(), _facts(pvcs=frozenset()), Reason.pvc_not_found, "spec.prompts", True),
        (_spec(), _facts(secrets=frozenset()), Reason.secret_not_found, "ModelDeployment glm47-teacher spec.apiKeySecret", True),
        (_spec(teacher={"url": "http://x:8000/v1", "apiKeySecret": {"name": "nope"}}), FACTS, Reason.secret_not_found, "spec.teacher.apiKeySecret", True),
        (_spec(), _facts(outputs_in_use={"pvc://datasets/payments/synthetic.jsonl": "other"}), Reason.output_in_use, "spec.output", False),
        (_spec(output="pvc://datasets/payments/synthetic.json"), FACTS, Reason.invalid_spec, "spec.output", False),
        (_spec(output="pvc://datasets/payments/prompts.jsonl"), FACTS, Reason.invalid_spec, "spec.output", False),
        (_spec(maxTurns=3), FACTS, Reason.invalid_spec, "spec.maxTurns", False),
    ],
)
def test_problems_name_the_field_and_wait_only_for_what_the_cluster_lacks(
    spec: SyntheticDatasetSpec, facts: SyntheticFacts, reason: str, field: str, waits: bool
) -> None:
    plan = plan_synthetic(META, spec, facts, Settings())
    assert plan.problems[0].reason == reason and plan.problems[0].field == field
    assert plan.waiting is waits and plan.job is None


def test_the_teacher_must_be_one_of_deployment_and_url() -> None:
    with pytest.raises(ValueError, match="set exactly one of modelDeployment and url"):
        _spec(teacher={"modelDeployment": "a", "url": "http://b:8000/v1"})
    with pytest.raises(ValueError, match="set exactly one"):
        _spec(teacher={})


def test_the_generator_job_runs_on_cpu_without_a_shell_and_references_the_key() -> None:
    plan = plan_synthetic(META, _spec(deadlineSeconds=3600, failurePolicy={"maxRetries": 5}), FACTS, Settings())
    job = plan.job
    assert job is not None and job["metadata"]["name"] == "payments-synth-generator"
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "glmops_trainer", "generate", "--config", "/etc/glmops/generate.json"]
    assert "args" not in container and "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert "tolerations" not in pod and "affinity" not in pod  # never placed on (or held for) a GPU node
    key = next(e for e in container["env"] if e["name"] == "GLMOPS_TEACHER_API_KEY")
    assert key == {"name": "GLMOPS_TEACHER_API_KEY", "valueFrom": {"secretKeyRef": {"name": "teacher-key", "key": "api-key"}}}
    assert "teacher-key" not in job["spec"]["template"]["metadata"]["annotations"][CONFIG_ANNOTATION].replace('"teacher-key"', "")
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}
    assert mounts["/mnt/pvc/datasets"] is False and mounts["/etc/glmops"] is True  # one claim: read and written
    assert job["spec"]["backoffLimit"] == 5 and job["spec"]["activeDeadlineSeconds"] == 3600 + DEADLINE_GRACE_SECONDS
    assert json.loads(job["spec"]["template"]["metadata"]["annotations"][CONFIG_ANNOTATION])["deadline_unix"] == NOW + 3600
    assert pod["automountServiceAccountToken"] is False and container["securityContext"]["readOnlyRootFilesystem"] is True
    assert job["metadata"]["annotations"]["glmops.io/spec-hash"] == spec_hash(_spec(deadlineSeconds=3600, failurePolicy={"maxRetries": 5}))
    assert job["metadata"]["labels"]["glmops.io/syntheticdataset"] == "payments-synth"
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2]
    kubernetes_validate.validate(job, "1.37.0", strict=True)


def test_separate_claims_mount_the_prompts_read_only_and_old_clusters_get_no_pod_failure_policy() -> None:
    spec = _spec(prompts="pvc://prompts/p.jsonl", teacher={"url": "http://teacher.example:8000/v1"})
    plan = plan_synthetic(META, spec, _facts(pvcs=frozenset({"prompts", "datasets"}), server_minor=20), Settings())
    job = plan.job
    assert job is not None and "podFailurePolicy" not in job["spec"]
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["/mnt/pvc/prompts"] is True and mounts["/mnt/pvc/datasets"] is False
    assert not any(e["name"] == "GLMOPS_TEACHER_API_KEY" for e in job["spec"]["template"]["spec"]["containers"][0]["env"])
    assert GeneratorConfig.model_validate(plan.config).teacher.model is None  # the generator asks the endpoint


def test_the_spec_hash_changes_with_any_field() -> None:
    assert spec_hash(_spec()) == spec_hash(_spec())
    assert spec_hash(_spec()) != spec_hash(_spec(samplesPerPrompt=3))
    assert spec_hash(_spec()) != spec_hash(_spec(sampling={"temperature": 0.2}))
