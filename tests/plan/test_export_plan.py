"""The export Job: CPU only, sized from the model, and bound to the config the trainer ran with."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate

from glmops.api.finetunejob import FineTuneJobSpec
from glmops.plan.export import ModelSizes, config_of_trainer_job, estimated_sizes, plan_export_job
from glmops.plan.finetune import CONFIG_ANNOTATION, ClusterFacts, JobMeta, plan_finetune
from glmops.plan.quantity import parse_quantity
from glmops.settings import Settings

META = JobMeta(name="payments-coder", namespace="ml", uid="0a1b2c3d-0000-4000-8000-000000000001")
SETTINGS = Settings()
GIB = 2**30


def _spec(**output: Any) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate({
        "model": {"variant": "flash", "source": "pvc://models/glm-4.7-flash", "credentialsSecret": "hf-token"},
        "dataset": {"source": "pvc://datasets/agent/train.jsonl"},
        "output": {"destination": "pvc://outputs/payments-coder", "quantizations": ["Q4_K_M"], **output},
        "podTemplate": {"priorityClassName": "batch-low"},
    })


def _trainer_job(spec: FineTuneJobSpec) -> dict[str, Any]:
    facts = ClusterFacts(secrets=frozenset({"hf-token"}), pvcs=frozenset({"models", "datasets", "outputs"}))
    plan = plan_finetune(META, spec, facts, SETTINGS)
    assert plan.problems == ()
    return next(o for o in plan.objects if o["kind"] == "Job")


def test_the_export_pod_asks_for_no_gpu_and_runs_the_export_command() -> None:
    spec = _spec()
    job = plan_export_job(META, spec, _trainer_job(spec), ModelSizes(60 * GIB, 5 * GIB, GIB), SETTINGS)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["python", "-m", "glmops_trainer", "export", "--config", "/etc/glmops/job.json"]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"]) and "affinity" not in pod
    assert pod["priorityClassName"] == "batch-low"
    assert job["metadata"]["name"] == "payments-coder-export"
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "glmops"
    secret_env = [e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    assert "HF_TOKEN" in secret_env  # a remote base model is read with the trainer's credentials
    kubernetes_validate.validate({**job, "metadata": {**job["metadata"], "ownerReferences": []}}, "1.37.0", strict=True)


def test_memory_follows_the_largest_shard_and_the_adapter() -> None:
    spec = _spec()
    small = plan_export_job(META, spec, _trainer_job(spec), ModelSizes(60 * GIB, 2 * GIB, GIB // 4), SETTINGS)
    large = plan_export_job(META, spec, _trainer_job(spec), ModelSizes(60 * GIB, 10 * GIB, GIB // 4), SETTINGS)

    def memory(job: dict[str, Any]) -> int:
        return int(parse_quantity(job["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"]))

    # (largest shard + 2 x adapter) x 1.5 + 4Gi, rounded up to whole GiB.
    assert memory(small) == 8 * GIB  # (2 + 0.5) x 1.5 + 4 = 7.75 -> 8
    assert memory(large) == 20 * GIB  # (10 + 0.5) x 1.5 + 4 = 19.75 -> 20
    requests = large["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    assert requests["cpu"] == SETTINGS.export_cpu


def test_scratch_holds_the_staged_model_only_when_the_output_is_remote() -> None:
    sizes = ModelSizes(60 * GIB, 5 * GIB, GIB)
    local = _spec()
    remote = _spec(destination="s3://bucket/runs/payments-coder")
    local_job = plan_export_job(META, local, _trainer_job(local), sizes, SETTINGS)
    facts = ClusterFacts(secrets=frozenset({"hf-token"}), pvcs=frozenset({"models", "datasets"}))
    remote_trainer = next(o for o in plan_finetune(META, remote, facts, SETTINGS).objects if o["kind"] == "Job")
    remote_job = plan_export_job(META, remote, remote_trainer, sizes, SETTINGS)

    def scratch(job: dict[str, Any]) -> int:
        return int(parse_quantity(job["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["ephemeral-storage"]))

    assert scratch(local_job) == 2 * GIB
    assert scratch(remote_job) == 2 * 60 * GIB + 2 * GIB  # merged weights + full-precision GGUF, staged


def test_the_export_uses_the_config_the_trainer_ran_with_not_an_edited_spec() -> None:
    spec = _spec()
    trainer = _trainer_job(spec)
    edited = _spec(destination="pvc://outputs/somewhere-else")
    job = plan_export_job(META, edited, trainer, ModelSizes(60 * GIB, 5 * GIB, GIB), SETTINGS)
    config = json.loads(job["spec"]["template"]["metadata"]["annotations"][CONFIG_ANNOTATION])
    assert config == json.loads(trainer["spec"]["template"]["metadata"]["annotations"][CONFIG_ANNOTATION])
    assert config_of_trainer_job(trainer).output.destination == "pvc://outputs/payments-coder"
    assert config["output"]["destination"] == "pvc://outputs/payments-coder"
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
              for v in job["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"models": True, "outputs": False}  # the dataset is not needed any more


def test_estimates_stand_in_for_sizes_the_trainer_did_not_report() -> None:
    flash, flagship = estimated_sizes("flash"), estimated_sizes("flagship")
    assert 50 * GIB < flash.model_bytes < 70 * GIB  # ~30B parameters in bf16
    assert flagship.model_bytes > 600 * GIB
    assert flash.largest_shard_bytes == 5 * 10**9


def test_the_export_reaches_an_s3_compatible_store_through_the_trainers_endpoint() -> None:
    # Without the endpoint the export pod talks to AWS instead of the store the trainer wrote to.
    spec = _spec(destination="s3://bucket/runs/payments-coder", credentialsSecret="store-keys", endpointUrl="http://minio.storage:9000")
    facts = ClusterFacts(secrets=frozenset({"hf-token", "store-keys"}), pvcs=frozenset({"models", "datasets"}))
    trainer = next(o for o in plan_finetune(META, spec, facts, SETTINGS).objects if o["kind"] == "Job")
    job = plan_export_job(META, spec, trainer, ModelSizes(60 * GIB, 5 * GIB, GIB), SETTINGS)
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    trainer_env = trainer["spec"]["template"]["spec"]["containers"][0]["env"]
    endpoint = [e for e in env if e["name"].endswith("AWS_ENDPOINT_URL") and "value" in e]
    assert [e["value"] for e in endpoint] == ["http://minio.storage:9000"] and endpoint[0] in trainer_env
    secret_keys = {e["valueFrom"]["secretKeyRef"]["name"] for e in env if "secretKeyRef" in e.get("valueFrom", {})}
    assert secret_keys == {"hf-token", "store-keys"}
