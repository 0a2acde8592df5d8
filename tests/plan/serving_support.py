"""Building blocks of the serving planner's tests: FineTuneJobs as the API returns them, specs, facts."""

from __future__ import annotations

import copy
from typing import Any

from glmops.api.modeldeployment import ModelDeploymentSpec
from glmops.plan.placement import GpuNode
from glmops.plan.serving import DeploymentMeta, ServingFacts, ServingPlan, plan_serving
from glmops.settings import Settings
from glmops_dev.nodes import NODE_PROFILES

META = DeploymentMeta(name="coder", namespace="ml", uid="0a1b2c3d-0000-4000-8000-0000000000aa", generation=3)
SETTINGS = Settings()
NODES = tuple(GpuNode(p.node_name, p.gpu_count, p.gpu_memory_mib, p.gpu_product or "") for p in NODE_PROFILES)
SHA = "5" * 64


def ftj(
    name: str = "coder",
    phase: str = "Succeeded",
    variant: str = "flash",
    base: str = "pvc://models/glm-4.7-flash",
    formats: tuple[str, ...] = ("adapter", "merged", "gguf"),
    quantizations: tuple[str, ...] = ("Q4_K_M", "Q8_0"),
    targets: list[str] | None = None,
    rank: int | None = None,
    artifacts: dict[str, Any] | None = None,
    destination: str | None = None,
) -> dict[str, Any]:
    """A FineTuneJob as the apiserver returns it; Succeeded ones carry the artifacts the export records."""
    out = destination or f"pvc://models/{name}"
    lora: dict[str, Any] = {}
    if targets is not None:
        lora["targets"] = targets
    if rank is not None:
        lora["rank"] = rank
    body: dict[str, Any] = {
        "apiVersion": "glmops.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": "ml", "generation": 1},
        "spec": {
            "model": {"variant": variant, "source": base},
            "dataset": {"source": "pvc://datasets/agent.jsonl"},
            "training": {"lora": lora},
            "output": {"destination": out, "formats": list(formats), "quantizations": list(quantizations)},
        },
        "status": {"phase": phase} if phase else {},
    }
    if phase == "Succeeded":
        recorded: dict[str, Any] = {"manifest": f"{out}/artifacts.json"}
        if "adapter" in formats:
            recorded["adapter"] = {"uri": f"{out}/adapter"}
        if "merged" in formats:
            recorded["merged"] = {"uri": f"{out}/merged"}
        if "gguf" in formats:
            recorded["gguf"] = [
                {"quantization": q, "uri": f"{out}/gguf/{q}/{name}-{q}.gguf", "sizeBytes": 18_000_000_000 + i, "sha256": SHA}
                for i, q in enumerate(quantizations)
            ]
        body["status"]["artifacts"] = artifacts if artifacts is not None else recorded
    elif phase == "Failed":
        body["status"]["conditions"] = [
            {
                "type": "Succeeded",
                "status": "False",
                "reason": "DataError",
                "message": "data.jsonl:3: no assistant turn",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ]
    return body


def spec(**fields: Any) -> ModelDeploymentSpec:
    """A ModelDeployment spec: the llama.cpp default unless fields say otherwise."""
    raw: dict[str, Any] = {"source": {"fineTuneJob": "coder"}, "servedModelName": "coder"}
    for key, value in fields.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    return ModelDeploymentSpec.model_validate(raw)


def facts(*jobs: dict[str, Any], **overrides: Any) -> ServingFacts:
    """Facts of a cluster with the usual PVCs, a Secret, every simulated node profile, and these jobs."""
    values: dict[str, Any] = {
        "jobs": {j["metadata"]["name"]: copy.deepcopy(j) for j in jobs},
        "secrets": frozenset({"coder-api-key"}),
        "pvcs": frozenset({"models"}),
        "gpu_nodes": NODES,
    }
    values.update(overrides)
    return ServingFacts(**values)


def plan(md_spec: ModelDeploymentSpec, cluster: ServingFacts | None = None, meta: DeploymentMeta = META) -> ServingPlan:
    """Plan with default settings, against the usual cluster with one Succeeded job `coder`."""
    return plan_serving(meta, md_spec, cluster if cluster is not None else facts(ftj()), SETTINGS)


def objects(md_spec: ModelDeploymentSpec, cluster: ServingFacts | None = None) -> dict[str, dict[str, Any]]:
    """The objects of a plan that must work, by kind."""
    result = plan(md_spec, cluster)
    assert not result.problems and not result.waits and not result.missing, (result.problems, result.waits, result.missing)
    return {o["kind"]: o for o in result.objects}


def container(md_spec: ModelDeploymentSpec, cluster: ServingFacts | None = None) -> dict[str, Any]:
    """The server container of the Deployment."""
    pod = objects(md_spec, cluster)["Deployment"]["spec"]["template"]["spec"]
    result: dict[str, Any] = pod["containers"][0]
    return result


def flag(args: list[str], name: str) -> str:
    """The value after `name` in an argv list."""
    return args[args.index(name) + 1]
