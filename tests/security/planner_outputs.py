"""Every kind of object the operator creates, as the planner makes it: trainer Jobs (one GPU, eight,
several nodes, with the user's pod options), the export Job, llama.cpp and vLLM Deployments and
their Services, a model download Job and its claim, a SyntheticDataset's generator Job. Shared by the Pod Security and checkov tests."""

from __future__ import annotations

import copy
from typing import Any

from glmops.api.finetunejob import FineTuneJobSpec
from glmops.api.modeldeployment import ModelDeploymentSpec
from glmops.api.syntheticdataset import SyntheticDatasetSpec
from glmops.plan.export import estimated_sizes, plan_export_job
from glmops.plan.finetune import ClusterFacts, GpuNode, JobMeta, plan_finetune
from glmops.plan.serving import DeploymentMeta, ServingFacts, plan_serving
from glmops.plan.synthetic import DatasetMeta, SyntheticFacts, plan_synthetic
from glmops.settings import Settings
from glmops_dev.nodes import NODE_PROFILES

SETTINGS = Settings()
NODES = tuple(GpuNode(p.node_name, p.gpu_count, p.gpu_memory_mib, p.gpu_product or "") for p in NODE_PROFILES)
JOB_META = JobMeta(name="payments-coder", namespace="ml", uid="0a1b2c3d-0000-4000-8000-000000000001", generation=1)
MDEP_META = DeploymentMeta(name="coder", namespace="ml", uid="0a1b2c3d-0000-4000-8000-0000000000aa", generation=1)
SHA = "5" * 64


def job_spec(**overrides: Any) -> FineTuneJobSpec:
    raw: dict[str, Any] = {
        "model": {"variant": "flash", "source": "pvc://models/glm-4.7-flash", "credentialsSecret": "hf-token"},
        "dataset": {"source": "pvc://datasets/agent/train.jsonl"},
        "output": {"destination": "pvc://models/payments-coder", "quantizations": ["Q4_K_M", "Q8_0"]},
    }
    raw.update(overrides)
    return FineTuneJobSpec.model_validate(raw)


def _finetune(name: str, spec: FineTuneJobSpec, server_minor: int = 30) -> dict[str, dict[str, Any]]:
    facts = ClusterFacts(server_minor=server_minor, secrets=frozenset({"hf-token"}), pvcs=frozenset({"models", "datasets"}), gpu_nodes=NODES)
    plan = plan_finetune(JOB_META, spec, facts, SETTINGS)
    assert plan.problems == (), plan.problems
    return {f"{name}-{o['kind'].lower()}": o for o in plan.objects}


def succeeded_job(name: str = "coder") -> dict[str, Any]:
    out = f"pvc://models/{name}"
    return {
        "apiVersion": "glmops.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name, "namespace": "ml", "generation": 1},
        "spec": {"model": {"variant": "flash", "source": "pvc://models/glm-4.7-flash"}, "dataset": {"source": "pvc://datasets/a.jsonl"},
                 "output": {"destination": out, "formats": ["adapter", "merged", "gguf"], "quantizations": ["Q8_0"]}},
        "status": {"phase": "Succeeded", "artifacts": {
            "manifest": f"{out}/artifacts.json", "adapter": {"uri": f"{out}/adapter"}, "merged": {"uri": f"{out}/merged"},
            "gguf": [{"quantization": "Q8_0", "uri": f"{out}/gguf/Q8_0/{name}-Q8_0.gguf", "sizeBytes": 32_000_000_000, "sha256": SHA}]}},
    }


def _serving(name: str, spec: dict[str, Any], downloads: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    facts = ServingFacts(jobs={"coder": copy.deepcopy(succeeded_job())}, secrets=frozenset({"coder-api-key"}), pvcs=frozenset({"models"}),
                         gpu_nodes=NODES, downloads=downloads or {})
    plan = plan_serving(MDEP_META, ModelDeploymentSpec.model_validate({"servedModelName": "coder", **spec}), facts, SETTINGS)
    assert not plan.problems, plan.problems
    return {f"{name}-{o['kind'].lower()}": o for o in [*plan.setup, *plan.objects]}


def _generator_job() -> dict[str, Any]:
    meta = DatasetMeta(name="payments-synth", namespace="ml", uid="0a1b2c3d-0000-4000-8000-0000000000bb")
    teacher = {
        "metadata": {"name": "coder"},
        "spec": {"servedModelName": "coder", "apiKeySecret": "coder-api-key", "source": {"fineTuneJob": "coder"}},
        "status": {"phase": "Ready", "readyReplicas": 1, "endpoint": "http://coder.ml.svc:8000/v1"},
    }
    facts = SyntheticFacts(now_unix=1_800_000_000.0, secrets=frozenset({"coder-api-key"}), pvcs=frozenset({"datasets"}), teacher_deployment=teacher)
    spec = SyntheticDatasetSpec.model_validate({
        "teacher": {"modelDeployment": "coder"}, "prompts": "pvc://datasets/payments/prompts.jsonl",
        "output": "pvc://datasets/payments/synthetic.jsonl"})
    plan = plan_synthetic(meta, spec, facts, SETTINGS)
    assert not plan.problems and plan.job is not None, plan.problems
    return plan.job


def planner_outputs() -> dict[str, dict[str, Any]]:
    """name -> object, for every shape of object the operator creates."""
    outputs: dict[str, dict[str, Any]] = {}
    outputs |= _finetune("trainer-1gpu", job_spec())
    outputs |= _finetune("trainer-8gpu", job_spec(model={"variant": "flagship", "source": "pvc://models/glm-4.7"}))
    outputs |= _finetune("trainer-2nodes", job_spec(
        model={"variant": "flagship", "source": "pvc://models/glm-4.7"}, resources={"nodes": 2, "gpusPerNode": 8}))
    outputs |= _finetune("trainer-podtemplate", job_spec(podTemplate={
        "priorityClassName": "training", "serviceAccountName": "trainer", "imagePullSecrets": ["registry"],
        "labels": {"team": "payments"}, "annotations": {"example.com/cost-center": "42"}}))
    trainer = outputs["trainer-1gpu-job"]
    outputs["export-job"] = plan_export_job(JOB_META, job_spec(), trainer, estimated_sizes("flash"), SETTINGS)
    api_key = {"apiKeySecret": "coder-api-key"}
    outputs |= _serving("llamacpp-gpu", {"source": {"fineTuneJob": "coder", "quantization": "Q8_0"}, **api_key})
    outputs |= _serving("llamacpp-cpu", {"source": {"fineTuneJob": "coder", "quantization": "Q8_0"}, "gpusPerReplica": 0,
                                         "contextLength": 4096, "parallelSlots": 1})
    outputs |= _serving("vllm-merged", {"runtime": "vllm", "source": {"fineTuneJob": "coder", "artifact": "merged"},
                                        "gpuMemoryGiB": 75, "gpusPerReplica": 2, **api_key})
    outputs |= _serving("download", {"source": {"uri": "hf://unsloth/GLM-4.7-Flash-GGUF@main/GLM-4.7-Flash-Q4_K_M.gguf", "variant": "flash"}})
    outputs["generator-job"] = _generator_job()
    return outputs
