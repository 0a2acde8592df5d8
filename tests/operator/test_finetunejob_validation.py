"""Schema-valid but semantically wrong FineTuneJobs end Failed with the right reason, and no pod."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import client
from polling import wait_for

GROUP, VERSION, PLURAL = "glmops.io", "v1alpha1", "finetunejobs"


def _ftj(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"variant": "flash", "source": "pvc://models/glm-4.7-flash"},
        "dataset": {"source": "pvc://datasets/agent.jsonl"},
        "output": {"destination": f"pvc://outputs/{name}", "formats": ["adapter"]},
    }
    for key, value in spec.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": base}


FLAGSHIP = {"variant": "flagship", "source": "pvc://models/glm-4.7"}
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    # (name, spec overrides, reason, field named in the message)
    ("gpu-mem-small", {"resources": {"gpuMemoryGiB": 16}}, "GpuMemoryTooSmall", "spec.resources.gpuMemoryGiB"),
    ("long-seq-small-gpu", {"training": {"sequenceLength": 131072}, "resources": {"gpuMemoryGiB": 48}}, "GpuMemoryTooSmall", "spec.resources.gpuMemoryGiB"),
    ("big-batch-small-gpu", {"training": {"microBatchSize": 64, "sequenceLength": 32768}, "resources": {"gpuMemoryGiB": 80}}, "GpuMemoryTooSmall", "spec.resources.gpuMemoryGiB"),
    ("flagship-lora-80g", {"model": FLAGSHIP, "training": {"method": "lora"}, "resources": {"gpuMemoryGiB": 80}}, "GpuMemoryTooSmall", "spec.resources.gpuMemoryGiB"),
    ("flagship-one-gpu", {"model": FLAGSHIP, "resources": {"gpusPerNode": 1}}, "NotEnoughGpus", "spec.resources.gpusPerNode"),
    ("flagship-two-gpus", {"model": FLAGSHIP, "resources": {"gpusPerNode": 2}}, "NotEnoughGpus", "spec.resources.gpusPerNode"),
    ("sixteen-gpus", {"resources": {"gpusPerNode": 16}}, "NotEnoughGpus", "spec.resources"),
    ("unknown-product", {"resources": {"gpuProduct": "NVIDIA-B200"}}, "NotEnoughGpus", "spec.resources"),
    ("l40s-four-gpus", {"resources": {"gpusPerNode": 4, "gpuProduct": "NVIDIA-L40S"}}, "NotEnoughGpus", "spec.resources"),
    ("no-node-has-200g", {"resources": {"gpuMemoryGiB": 200}}, "NotEnoughGpus", "spec.resources"),
    ("missing-secret", {"model": {"credentialsSecret": "no-such-token"}}, "SecretNotFound", "spec.model.credentialsSecret"),
    ("missing-model-pvc", {"model": {"source": "pvc://no-such-models/glm"}}, "PersistentVolumeClaimNotFound", "spec.model.source"),
    ("missing-data-pvc", {"dataset": {"source": "pvc://no-such-data/a.jsonl"}}, "PersistentVolumeClaimNotFound", "spec.dataset.source"),
    ("missing-output-pvc", {"output": {"destination": "pvc://no-such-out/x"}}, "PersistentVolumeClaimNotFound", "spec.output.destination"),
    ("output-taken", {"output": {"destination": "pvc://outputs/taken"}}, "OutputInUse", "spec.output.destination"),
    ("output-taken-slash", {"output": {"destination": "pvc://outputs/taken/"}}, "OutputInUse", "spec.output.destination"),
    ("two-nodes-old-cluster", {"resources": {"nodes": 2}}, "MultiNodeUnsupported", "spec.resources.nodes"),
    ("flagship-four-nodes", {"model": FLAGSHIP, "resources": {"nodes": 4}}, "MultiNodeUnsupported", "spec.resources.nodes"),
    ("gguf-without-quant", {"output": {"formats": ["adapter", "gguf"], "quantizations": []}}, "InvalidSpec", "spec.output.quantizations"),
    ("secret-and-pvc", {"model": {"credentialsSecret": "absent", "source": "pvc://absent/m"}}, "SecretNotFound", "spec.model.source"),
]


@pytest.fixture
def prepared_namespace(cluster, namespace: str) -> str:
    """A namespace with the PVCs, a Secret and a FineTuneJob that owns `pvc://outputs/taken`."""
    core = client.CoreV1Api(cluster.api_client())
    for claim in ("models", "datasets", "outputs"):
        core.create_namespaced_persistent_volume_claim(
            namespace,
            {"metadata": {"name": claim}, "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}},
        )
    core.create_namespaced_secret(namespace, {"metadata": {"name": "hf-token"}, "stringData": {"HF_TOKEN": "hf_secret_value"}})
    owner = _ftj("taken-owner", output={"destination": "pvc://outputs/taken"}, resources={"gpusPerNode": 16})
    client.CustomObjectsApi(cluster.api_client()).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, owner)
    return namespace


def test_bad_inputs_fail_with_the_right_reason_and_no_pod(cluster, glmops_operator, prepared_namespace: str) -> None:
    api = cluster.api_client()
    custom, batch, core = client.CustomObjectsApi(api), client.BatchV1Api(api), client.CoreV1Api(api)
    for name, overrides, _, _ in CASES:
        custom.create_namespaced_custom_object(GROUP, VERSION, prepared_namespace, PLURAL, _ftj(name, **copy.deepcopy(overrides)))

    def all_failed() -> bool:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, prepared_namespace, PLURAL)["items"]
        phases = {i["metadata"]["name"]: i.get("status", {}).get("phase") for i in items}
        return all(phases.get(name) == "Failed" for name, *_ in CASES)

    wait_for("every bad FineTuneJob to fail", all_failed, 120, glmops_operator.log_tail)
    problems = []
    for name, _, reason, field in CASES:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, prepared_namespace, PLURAL, name)
        succeeded = next(c for c in obj["status"]["conditions"] if c["type"] == "Succeeded")
        if succeeded["status"] != "False" or succeeded["reason"] != reason or field not in succeeded["message"]:
            problems.append(f"{name}: {succeeded['reason']}: {succeeded['message']}")
        assert succeeded["observedGeneration"] == obj["metadata"]["generation"]
        assert "hf_secret_value" not in str(obj)
    assert problems == []
    assert batch.list_namespaced_job(prepared_namespace).items == []
    assert core.list_namespaced_pod(prepared_namespace).items == []
    events = core.list_namespaced_event(prepared_namespace).items
    warned = {e.involved_object.name for e in events if e.type == "Warning"}
    assert {name for name, *_ in CASES} <= warned
